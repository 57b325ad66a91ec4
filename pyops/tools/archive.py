"""tar command lines."""

from __future__ import annotations

from pathlib import Path

from pyops.execute import Stage


def tar_create(paths: tuple[Path, ...], exclude: tuple[str, ...], index_file: Path) -> Stage:
    """Archive absolute `paths` relative to / (members like `srv/app/media/x`), listing
    every member with its size into `index_file` for the manifest's content facts."""
    argv = (
        "tar",
        "--create",
        "--file=-",
        "--format=gnu",
        "--directory=/",
        "--verbose",
        "--verbose",
        "--quoting-style=escape",
        f"--index-file={index_file}",
        "--numeric-owner",
        *(f"--exclude={pattern}" for pattern in exclude),
        "--",
        *(str(p.relative_to("/")) for p in paths),
    )
    # exit 1 is GNU tar's "some files changed while being read": the archive is sound
    return Stage("tar", argv, ok_codes=(0, 1))


def version(name: str) -> Stage:
    return Stage(name, (name, "--version"))
