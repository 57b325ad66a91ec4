"""File trees: GNU tar of the configured paths (relative to /), extracted on restore
by pyops' own checked extractor so no member can land outside its destination."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pyops import stream, tarsafe
from pyops.config import FilesTarget
from pyops.errors import PyopsError, VerifyFailed
from pyops.execute import Stage, first_line
from pyops.manifest import Manifest
from pyops.sources import (
    Dump,
    RestoreOptions,
    RestorePlan,
    Staged,
    aside,
    compare_content,
    take_over_metadata,
)
from pyops.tools import archive

EXTENSION = "tar"


def extension(target: FilesTarget) -> str:
    return EXTENSION


def roots(target: FilesTarget) -> list[str]:
    return [str(p.relative_to("/")) for p in target.paths]


def tally_index(index: Path) -> dict[str, int]:
    """Regular files and their bytes, from tar's own -vv listing of what it archived."""
    files = size = 0
    with open(index, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[0].startswith("-"):
                files += 1
                size += int(parts[2])
    return {"files": files, "bytes": size}


def _estimate(paths: Iterable[Path]) -> int:
    total = 0
    for top in paths:
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@contextlib.contextmanager
def dump(target: FilesTarget, scratch: Path) -> Iterator[Dump]:
    missing = [str(p) for p in target.paths if not p.exists()]
    if missing:
        raise PyopsError(
            f"target {target.name}: {', '.join(missing)} does not exist; fix targets.paths"
        )
    index = scratch / "index.txt"
    yield Dump(
        format="tar",
        source={"paths": [str(p) for p in target.paths], "exclude": list(target.exclude)},
        tools={"tar": first_line(archive.version("tar"))},
        stages=[archive.tar_create(target.paths, target.exclude, index)],
        estimate=lambda: _estimate(target.paths),
        content=lambda: tally_index(index),
    )


def recorded_roots(manifest: Manifest) -> list[str]:
    """The archive's top-level roots as the manifest records them, checked: each an
    absolute, normalised path. They only say which members are expected; where files
    are written comes from the config or --into, never from here."""
    paths = manifest.source.get("paths")
    if not isinstance(paths, list) or not paths:
        raise VerifyFailed(f"{manifest.id}: the manifest records no paths")
    roots = []
    for p in paths:
        if (
            not isinstance(p, str)
            or not p.startswith("/")
            or p == "/"
            or os.path.normpath(p) != p
            or "\0" in p
        ):
            raise VerifyFailed(f"{manifest.id}: the manifest records an unusable path {p!r}")
        roots.append(p.lstrip("/"))
    return roots


def _check_tally(manifest: Manifest, got: dict[str, Any]) -> None:
    diff = compare_content(manifest.content, got)
    if diff:
        raise VerifyFailed(f"{manifest.id}: content differs from manifest: {'; '.join(diff)}")


def deep_check(
    manifest: Manifest, chunks: Iterable[bytes], decoders: list[Stage], scratch: Path
) -> dict[str, Any]:
    source_roots = recorded_roots(manifest)
    try:
        with stream.decoded(chunks, decoders) as decoded:
            tally = tarsafe.scan(decoded, source_roots)
    except tarsafe.UnsafeArchive as exc:
        kind = "damaged tar stream" if exc.member is None else "unsafe archive"
        raise VerifyFailed(f"{manifest.id}: {kind}: {exc}") from None
    got = {"files": tally.files, "bytes": tally.bytes}
    _check_tally(manifest, got)
    return got


def _staging(path: Path, stamp: str) -> Path:
    return path.parent / f".{path.name}.pyops-restore-{stamp}"


def plan(
    target: FilesTarget,
    into: str | None,
    manifest: Manifest | None = None,
    options: RestoreOptions | None = None,
) -> RestorePlan:
    if into:
        dest = Path(into)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise PyopsError(f"--into {dest} exists and is not empty: choose a new directory")
        return RestorePlan(destination=str(dest), overwrites=False)
    return RestorePlan(
        destination=", ".join(str(p) for p in target.paths),
        overwrites=any(p.exists() for p in target.paths),
        notes=["each path is restored beside itself, then swapped; the old one is kept"],
    )


def restore(
    target: FilesTarget,
    manifest: Manifest,
    chunks: Iterable[bytes],
    decoders: list[Stage],
    into: str | None,
    stamp: str,
    scratch: Path,
    jobs: int,
    options: RestoreOptions | None = None,
) -> Staged:
    # in place: exactly the configured paths (restore.prepare refused a backup of other
    # paths); --into: the recorded roots, beneath the new directory
    source_paths = list(target.paths)
    if into:
        source_roots = recorded_roots(manifest)
        base = Path(into)
        destinations = {r: base / r for r in source_roots}
    else:
        source_roots = roots(target)
        destinations = {str(p.relative_to("/")): _staging(p, stamp) for p in source_paths}
    made: list[Path] = []

    def route(root: str) -> Path:
        dest = destinations[root]
        if not dest.exists():
            made.append(dest)
        return dest

    def discard() -> None:
        import shutil

        for path in made if not into else [Path(into)]:
            shutil.rmtree(path, ignore_errors=True)

    try:
        with stream.decoded(chunks, decoders) as decoded:
            tally = tarsafe.extract(decoded, source_roots, route)
        _check_tally(manifest, {"files": tally.files, "bytes": tally.bytes})
    except tarsafe.UnsafeArchive as exc:
        discard()
        raise PyopsError(f"{manifest.id}: refused to extract: {exc}") from None
    except BaseException:
        discard()
        raise

    # what the extractor could not restore as archived (an extended attribute or ACL
    # this file system or user cannot set): part of the result, never silent
    missing = "".join(f"\nWARNING: {w}" for w in tally.warnings)

    def commit() -> str:
        if into:
            return f"restored {tally.files} files ({tally.bytes} bytes) into {into}{missing}"
        kept = []
        for path in source_paths:
            staged = _staging(path, stamp)
            if path.exists() or path.is_symlink():
                if path.is_dir() and not path.is_symlink():
                    take_over_metadata(path, staged)
                moved_to = aside(path, stamp)
                os.replace(path, moved_to)
                kept.append(str(moved_to))
            os.replace(staged, path)
        note = f"; previous kept as {', '.join(kept)}" if kept else ""
        return f"restored {tally.files} files ({tally.bytes} bytes){note}{missing}"

    return Staged(commit=commit, discard=discard)
