"""`pyops --version`: pyops' version, the config path it would use, and the versions of
the tools it drives, as found on this host. Never fails: a missing tool is "not found",
one that does not answer within TIMEOUT says so. The probes run at once, so the
slowest one bounds the wait.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pyops import __version__, config

TOOLS = ("pg_dump", "psql", "gpg", "zstd", "tar", "sqlite3")
PG_CLIENTS = ("pg_dump", "psql")  # also every /usr/lib/postgresql/N/bin (Debian)
TIMEOUT = 3.0
VERSION = re.compile(r"\d+(?:\.\d+)+")


@dataclass(frozen=True)
class Found:
    tool: str
    path: str | None  # None: not found
    version: str


def candidates(tool: str) -> list[str]:
    """Where `tool` is: PATH's, then (pg_dump, psql) each Debian-style client, newest
    first: pyops picks among them by the server's major version."""
    found = [shutil.which(tool)]
    if tool in PG_CLIENTS:
        dirs = Path("/usr/lib/postgresql").glob("*/bin")
        found += [
            str(d / tool)
            for d in sorted(dirs, key=lambda d: _major(d.parent.name), reverse=True)
            if (d / tool).exists()
        ]
    out: list[str] = []
    for path in found:
        if path and os.path.realpath(path) not in {os.path.realpath(p) for p in out}:
            out.append(path)
    return out


def _major(name: str) -> int:
    return int(name) if name.isdigit() else -1


def probe(tool: str, path: str) -> Found:
    """`path --version`, reduced to its version number."""
    from pyops.errors import PyopsError
    from pyops.execute import Stage, run_quiet

    try:
        result = run_quiet(Stage(tool, (path, "--version")), timeout=TIMEOUT, check=False)
    except PyopsError as exc:  # no answer in time, or gone since `which`
        return Found(tool, path, f"no answer ({exc})")
    except OSError as exc:
        return Found(tool, path, f"cannot run ({exc.strerror or exc})")
    text = result.stdout or result.stderr
    match = VERSION.search(text)
    if match:
        return Found(tool, path, match.group(0))
    lines = text.strip().splitlines()
    return Found(tool, path, lines[0][:60] if lines else f"exit status {result.returncode}")


def tools() -> list[Found]:
    """Every tool of TOOLS, each place it was found (or "not found"), probed at once."""
    jobs = [(tool, path) for tool in TOOLS for path in candidates(tool)]
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        probed = list(pool.map(lambda job: probe(*job), jobs))
    out: list[Found] = []
    for tool in TOOLS:
        mine = [f for f in probed if f.tool == tool]
        out += mine or [Found(tool, None, "not found")]
    return out


def report(explicit_config: str | None) -> str:
    """The text `pyops --version` prints. The first line is click's usual one."""
    path = config.find_config(explicit_config)
    chosen = (
        "--config"
        if explicit_config
        else "$PYOPS_CONFIG"
        if os.environ.get("PYOPS_CONFIG")
        else "the default: ./pyops.toml, else /etc/pyops/pyops.toml"
    )
    state = f"from {chosen}" if path.exists() else f"from {chosen}; not found"
    rows = [(f.tool, f.version, f.path or "") for f in tools()]
    width = max(len(r[1]) for r in rows)
    lines = [
        f"pyops, version {__version__}",
        f"python {sys.version.split()[0]} ({sys.executable})",
        f"config {path.absolute()} ({state})",
        *(f"{tool:<8} {version:<{width}}  {where}".rstrip() for tool, version, where in rows),
    ]
    return "\n".join(lines)
