"""Checks of this machine: free disk space and writable paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pyops.config import FilesTarget, SqliteTarget
from pyops.health.context import Context
from pyops.health.result import Part, Result, Status, combine


def _existing(path: Path) -> Path:
    """The path, or its nearest existing ancestor (a repository not created yet still
    lives on some file system)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def data_paths(ctx: Context) -> list[Path]:
    """The repository, the state dir and what the targets read, one per file system."""
    config = ctx.app.config
    candidates = [ctx.app.repo, ctx.app.state, *ctx.cfg.paths]
    for t in config.targets:
        if isinstance(t, SqliteTarget):
            candidates.append(t.path.parent)
        elif isinstance(t, FilesTarget):
            candidates.extend(t.paths)
    seen: set[int] = set()
    out: list[Path] = []
    for path in candidates:
        real = _existing(path)
        dev = real.stat().st_dev
        if dev not in seen:
            seen.add(dev)
            out.append(path)
    return out


def disk(ctx: Context) -> Result:
    """Free space (as an unprivileged writer sees it) on every file system pyops uses."""
    low, critical = ctx.cfg.disk_min_free_percent, ctx.cfg.disk_critical_free_percent
    parts = []
    for path in data_paths(ctx):
        st = os.statvfs(_existing(path))
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        percent = 100.0 * free / total if total else 0.0
        status: Status = "ok"
        if percent < critical:
            status = "critical"
        elif percent < low:
            status = "warning"
        limit = f" (critical below {critical:g}%)" if status == "critical" else ""
        text = f"{path}: {percent:.1f}% free ({free / 2**30:.1f} GiB), minimum {low:g}%{limit}"
        parts.append(
            Part(
                status,
                text,
                {f"{path}.free_percent": round(percent, 2), f"{path}.free_bytes": float(free)},
            )
        )
    return combine("disk", parts)


def _writable(path: Path) -> str | None:
    """None if we can write there (proved by doing it), else why not."""
    try:
        if path.is_dir():
            with tempfile.TemporaryFile(dir=path, prefix=".pyops-health-"):
                pass
        else:
            with open(path, "ab"):
                pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def paths(ctx: Context) -> Result:
    """The repository and [health] paths exist and are writable (checked for real:
    as root, os.access says yes even on a read-only mount)."""
    parts = []
    wanted = [ctx.app.repo, *ctx.cfg.paths]
    for path in dict.fromkeys(wanted):
        if not path.exists():
            parts.append(Part("critical", f"{path} does not exist", {f"{path}.ok": 0.0}))
            continue
        why = _writable(path)
        if why:
            parts.append(Part("critical", f"{path} is not writable: {why}", {f"{path}.ok": 0.0}))
        else:
            parts.append(Part("ok", f"{path} ok", {f"{path}.ok": 1.0}))
    result = combine("paths", parts)
    if result.status == "ok":
        result.message = f"{len(parts)} path(s) exist and are writable"
    return result
