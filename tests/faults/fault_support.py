"""Helpers for the fault tests: a repository driven through the real CLI, big
incompressible sources, and /proc probes to find and kill pyops' children."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures.cli import PYOPS, run_pyops

PASSPHRASE = "fault matrix passphrase 7f3a"


def toml(value: str | Path) -> str:
    return json.dumps(str(value))


def said(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def incompressible_dir(path: Path, megabytes: int) -> Path:
    """A directory of random bytes (zstd cannot shrink it, so the stream is long)."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(max(1, megabytes // 8)):
        (path / f"blob{i}.bin").write_bytes(os.urandom(min(8, megabytes - 8 * i) << 20))
    return path


def files_target(name: str, paths: list[Path]) -> str:
    listed = ", ".join(toml(p) for p in paths)
    return f'[[targets]]\nname = {toml(name)}\ntype = "files"\npaths = [{listed}]\n'


def symmetric(passphrase_file: Path, gnupghome: Path) -> str:
    return (
        '[encryption]\nmode = "gpg-symmetric"\n'
        f"passphrase_file = {toml(passphrase_file)}\ngnupghome = {toml(gnupghome)}\n"
    )


def zstd(level: int = 1) -> str:
    return f'[compression]\nalgorithm = "zstd"\nlevel = {level}\nthreads = 1\n'


@dataclass
class Repo:
    root: Path

    @property
    def path(self) -> Path:
        return self.root / "repo"

    @property
    def config(self) -> Path:
        return self.root / "pyops.toml"

    def write(self, body: str, lock_wait_seconds: float = 2, repo: Path | None = None) -> Repo:
        self.config.write_text(
            f"[repository]\npath = {toml(repo or self.path)}\n"
            f"lock_wait_seconds = {lock_wait_seconds}\n\n{body}\n"
        )
        if repo is not None:
            self.root.joinpath("repo").unlink(missing_ok=True)
            self.root.joinpath("repo").symlink_to(repo)
        return self

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run_pyops(self.config, *args, env=env, timeout=timeout)

    def ok(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, env=env)
        assert proc.returncode == 0, said(proc)
        return proc

    def popen(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYOPS, "--config", str(self.config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def backup(self, target: str, *extra: str) -> str:
        proc = self.ok("backup", "--target", target, "--format", "json", *extra)
        rows = json.loads(proc.stdout)["backups"]
        assert len(rows) == 1 and rows[0]["ok"], said(proc)
        return str(rows[0]["id"])

    def listed(self, *extra: str) -> list[str]:
        proc = self.ok("list", "--format", "json", *extra)
        return [str(r["id"]) for r in json.loads(proc.stdout)["backups"]]

    def history(self) -> list[dict[str, Any]]:
        proc = self.ok("history", "--format", "json")
        data = json.loads(proc.stdout)
        runs = data["runs"] if isinstance(data, dict) else data
        return list(runs)

    def verify_all(self) -> None:
        self.ok("verify", "--all")

    def files(self) -> list[Path]:
        """Backup files (the state dir, with its run log and lock, left out)."""
        return sorted(p for p in self.path.rglob("*") if p.is_file() and ".pyops" not in p.parts)

    def temp_files(self) -> list[Path]:
        return [p for p in self.files() if ".tmp-" in p.name]

    def manifests(self) -> list[Path]:
        return [p for p in self.files() if p.name.endswith(".manifest.json")]

    def scratch_entries(self) -> list[Path]:
        found = []
        for top in (self.path, self.root):
            found += list(top.rglob("scratch/*"))
        return found


# --- /proc ------------------------------------------------------------------------


def ppid_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def rchar(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children(parent: int) -> list[int]:
    return [p for p in pids() if ppid_of(p) == parent]


def descendants(root: int) -> set[int]:
    out: set[int] = set()
    frontier = [root]
    table = {p: ppid_of(p) for p in pids()}
    while frontier:
        cur = frontier.pop()
        for p, pp in table.items():
            if pp == cur and p not in out:
                out.add(p)
                frontier.append(p)
    return out


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kill_child_when_reading(
    proc: subprocess.Popen[str], comm: str, min_read: int = 1 << 20, timeout: float = 60
) -> int:
    """SIGKILL the direct child of `proc` named `comm` once it has read `min_read` bytes."""

    def ready() -> int:
        if proc.poll() is not None:
            raise AssertionError(f"pyops ended before {comm} was caught: {proc.communicate()}")
        for child in children(proc.pid):
            if comm_of(child) == comm and rchar(child) > min_read:
                return child
        return 0

    pid = int(wait_for(ready, timeout, f"{comm} child reading > {min_read} bytes"))
    os.kill(pid, signal.SIGKILL)
    return pid
