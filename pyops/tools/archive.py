"""tar command lines."""

from __future__ import annotations

from pathlib import Path

from pyops.execute import Stage


def tar_create(paths: tuple[Path, ...], exclude: tuple[str, ...], index_file: Path) -> Stage:
    """Archive absolute `paths` relative to / (members like `srv/app/media/x`), listing
    every member with its size into `index_file` for the manifest's content facts.

    POSIX (pax) format, so extended attributes and POSIX ACLs (`--xattrs --acls`) and
    sparse files (`--sparse`, holes not stored) are kept; the per-file time records
    pax would add are dropped, so a plain file costs what it did in GNU format."""
    argv = (
        "tar",
        "--create",
        "--file=-",
        "--format=posix",
        "--pax-option=delete=atime,delete=ctime,delete=mtime",
        "--xattrs",
        "--acls",
        "--sparse",
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


def tar_extract(directory: Path, as_root: bool) -> Stage:
    """Extract the archive on stdin into `directory` (new, private, empty), as pyops'
    backups were made: GNU tar's own refusals kept (no --absolute-names, so no leading
    '/' and no '..'; symlinks that could lead out created last, as GNU tar always
    does), existing directories' metadata left alone, modes exact, owners by number and
    only as root, extended attributes of every namespace. POSIX ACLs come back as the
    raw `system.posix_acl_*` attributes the backup keeps beside tar's text form;
    --acls would set them a second time and costs a syscall or two per file.

    Only for a stream pyops checked member by member first (pyops.tarsafe)."""
    argv = (
        "tar",
        "--extract",
        "--file=-",
        "--read-full-records",
        f"--directory={directory}",
        "--no-overwrite-dir",
        "--preserve-permissions",
        "--numeric-owner",
        "--same-owner" if as_root else "--no-same-owner",
        "--xattrs",
        "--xattrs-include=*",
        "--warning=no-timestamp",  # an mtime in the future is restored as it was, quietly
    )
    # tar warns on stderr and exits 0 for an attribute it could not set: said, not silent
    return Stage("tar -x", argv, stderr_warns=True)
