"""A throwaway PostgreSQL cluster: the bare server of a disaster, for `pyops drill
--scratch-cluster`.

`initdb` with the server binaries of the backup's major version (else the newest
installed), a unix socket in a private directory and no TCP listener, trust for local
connections (only root and the cluster's user can reach the socket), no roles but its
superuser `postgres`. PostgreSQL refuses to run as root, so when pyops is root the
cluster runs as the `postgres` system user (`setpriv`), which owns the directory.
It is always stopped and removed afterwards, also on failure and Ctrl-C (`pg_ctl`
puts the server in its own session, so a Ctrl-C reaches only pyops); what could not
be removed is in `Cluster.leftover`, with the commands to finish by hand.

    with scratchcluster.start(15) as cluster:
        cluster.dsn("app")
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from psycopg.conninfo import make_conninfo

from pyops.errors import PyopsError, ToolMissing
from pyops.execute import Stage, run_quiet

log = logging.getLogger(__name__)
PG_ROOT = Path("/usr/lib/postgresql")
SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
SUPERUSER = "postgres"  # the cluster's only role; also the system user when pyops is root
SOCKET_PATH_MAX = 107  # sun_path, with the terminating NUL
START_WAIT_S = 120
STOP_WAIT_S = 30
SETTINGS = {
    "listen_addresses": "''",  # unix socket only
    "unix_socket_permissions": "0700",
    # thrown away afterwards: durability buys nothing, WAL-light loading is faster
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_connections": "30",
}


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int


def installed() -> list[tuple[int, Path]]:
    """(major, bin dir) of every /usr/lib/postgresql/N/bin with the server, oldest first."""
    found = [
        (int(p.parent.name), p)
        for p in PG_ROOT.glob("*/bin")
        if p.parent.name.isdigit() and all(os.access(p / t, os.X_OK) for t in SERVER_TOOLS)
    ]
    return sorted(found)


def major_of(server_version: Any) -> int | None:
    """The major version in a manifest's `server_version` ("15.4 (Debian 15.4-1)").
    Input, not truth: anything else is None, and only the number is ever used."""
    match = re.match(
        r"\s*(\d{1,3})(?!\d)", server_version if isinstance(server_version, str) else ""
    )
    return int(match.group(1)) if match else None


def choose(major: int | None) -> tuple[int, Path]:
    """The bin dir of `major`, else of the newest installed server."""
    found = installed()
    if not found:
        raise ToolMissing(
            "a scratch cluster needs the PostgreSQL server (initdb, pg_ctl, postgres) under "
            f"{PG_ROOT}/<major>/bin: install it, e.g. `apt-get install postgresql-"
            f"{major or '<major>'}`"
        )
    for got, path in found:
        if got == major:
            return got, path
    return found[-1]


def _run_as() -> RunAs | None:
    """Whom the server runs as: pyops itself, or `postgres` when pyops is root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PyopsError(
            "a scratch cluster cannot run as root and there is no `postgres` system user "
            "to run it as: install the PostgreSQL server package (it creates that user), "
            "or run pyops as a non-root user"
        ) from None
    if shutil.which("setpriv") is None:
        raise ToolMissing(
            "setpriv not found (it runs the scratch cluster as `postgres`): install it, "
            "e.g. `apt-get install util-linux`"
        )
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid)


def running(pid: int) -> bool:
    """A process exists and has not exited: a server that pg_ctl started is not pyops'
    child, so once stopped it may linger as a zombie until init reaps it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _free_port() -> int:
    """A port no TCP server uses (the socket's name and shared memory key derive from
    it; the cluster itself never listens on TCP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _reachable(parent: Path, run_as: RunAs) -> None:
    """The server opens its data directory by path: every directory above it must let
    the cluster's user through (x), or initdb fails with a bare 'permission denied'."""
    for directory in (parent.resolve(), *parent.resolve().parents):
        st = directory.stat()
        if st.st_uid == run_as.uid:
            through = st.st_mode & 0o100
        elif st.st_gid == run_as.gid:
            through = st.st_mode & 0o010
        else:
            through = st.st_mode & 0o001
        if not through:
            raise PyopsError(
                f"scratch cluster: user {run_as.name} cannot reach {parent} ({directory} is "
                f"mode {st.st_mode & 0o7777:04o}): set TMPDIR to a directory it can "
                "traverse, e.g. /tmp or /var/tmp"
            )


@dataclass
class Cluster:
    """A scratch cluster; `with` creates and starts it, and stops and removes it."""

    major: int
    bindir: Path
    parent: Path
    run_as: RunAs | None
    base: Path | None = None
    port: int = 0
    running: bool = False
    leftover: str | None = None  # set when it could not be stopped or removed

    @property
    def data(self) -> Path:
        return self._base / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base / "sock"

    @property
    def log_file(self) -> Path:
        return self._base / "postgres.log"

    @property
    def _base(self) -> Path:
        if self.base is None:
            raise PyopsError("the scratch cluster was not created")
        return self.base

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq conninfo for its superuser over the private socket (no password)."""
        return make_conninfo(
            host=str(self.socket_dir), port=str(self.port), dbname=dbname, user=SUPERUSER
        )

    def describe(self) -> str:
        return f"PostgreSQL {self.major} ({self.bindir}), port {self.port} on {self.socket_dir}"

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self._create()
            self._start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def _create(self) -> None:
        if self.run_as is not None:
            _reachable(self.parent, self.run_as)
        self.base = Path(tempfile.mkdtemp(prefix="pyops-scratch-cluster-", dir=self.parent))
        self.port = _free_port()
        socket_file = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_file).encode()) >= SOCKET_PATH_MAX:
            raise PyopsError(
                f"scratch cluster: the socket path {socket_file} is too long for a unix "
                "socket: set TMPDIR to a shorter directory"
            )
        self.socket_dir.mkdir(mode=0o700)
        if self.run_as is not None:
            for path in (self._base, self.socket_dir):
                os.chown(path, self.run_as.uid, self.run_as.gid)
        common = (
            str(self.bindir / "initdb"),
            f"--pgdata={self.data}",
            f"--username={SUPERUSER}",
            "--auth-local=trust",
            "--auth-host=reject",
            "--encoding=UTF8",
            "--no-sync",
        )
        errors = []
        for locale in ("--locale=C.UTF-8", "--no-locale"):
            result = self._tool("initdb", (*common, locale), timeout=300)
            if result is None:
                break
            errors.append(result)
            shutil.rmtree(self.data, ignore_errors=True)
        else:
            raise PyopsError(f"scratch cluster: initdb failed: {' | '.join(errors)}")
        settings = {
            **SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# pyops scratch cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _start(self) -> None:
        failed = self._tool(
            "pg_ctl",
            (
                str(self.bindir / "pg_ctl"),
                f"--pgdata={self.data}",
                f"--log={self.log_file}",
                "--wait",
                f"--timeout={START_WAIT_S}",
                "--silent",
                "start",
            ),
            timeout=START_WAIT_S + 30,
        )
        self.running = True  # pg_ctl may give up waiting while the server lives on
        if failed:
            raise PyopsError(
                f"scratch cluster (PostgreSQL {self.major}) did not start: {failed}; "
                f"its log: {self._log_tail()}"
            )
        log.info("scratch cluster started: %s", self.describe())

    def remove(self) -> None:
        """Stop the server (immediate: its data is thrown away) and delete the directory.
        Never raises: what is left is logged and kept in `leftover`."""
        if self.base is None:
            return
        problems = []
        if self.running:
            failed = self._tool(
                "pg_ctl",
                (
                    str(self.bindir / "pg_ctl"),
                    f"--pgdata={self.data}",
                    "--mode=immediate",
                    "--wait",
                    f"--timeout={STOP_WAIT_S}",
                    "--silent",
                    "stop",
                ),
                timeout=STOP_WAIT_S + 30,
            )
            if failed and not self._kill_postmaster():
                problems.append(f"pg_ctl stop failed: {failed}")
            else:
                self.running = False
        if not problems:
            shutil.rmtree(self.base, ignore_errors=True)
            if self.base.exists():
                problems.append("some of its files could not be deleted")
        if problems:
            self.leftover = self._leftover("; ".join(problems))
            log.warning("%s", self.leftover)
        else:
            log.info("scratch cluster removed (%s)", self.base)
            self.base = None

    def _kill_postmaster(self) -> bool:
        """pg_ctl could not stop it: SIGKILL the postmaster (its children follow). True
        when no server runs on the data directory any more."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return not (self.data / "postmaster.pid").exists()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if not running(pid):
                return True
            time.sleep(0.1)
        return False

    def _leftover(self, why: str) -> str:
        as_user = f"as user {self.run_as.name}: " if self.run_as is not None else ""
        stop = shlex.join(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        )
        return (
            f"scratch cluster {self.base} not removed ({why}): stop it {as_user}{stop}; "
            f"then remove it: rm -rf -- {shlex.quote(str(self.base))}"
        )

    # --- running its tools -------------------------------------------------------------

    def _tool(self, name: str, argv: tuple[str, ...], timeout: float) -> str | None:
        """Run a server tool as the cluster's user; None on success, else what it said."""
        prefix: tuple[str, ...] = ()
        if self.run_as is not None:
            prefix = (
                "setpriv",
                f"--reuid={self.run_as.uid}",
                f"--regid={self.run_as.gid}",
                "--clear-groups",
                "--",
            )
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self._base),
            "LC_ALL": "C.UTF-8",
            "LC_MESSAGES": "C",
        }
        if self.run_as is not None:
            env |= {"USER": self.run_as.name, "LOGNAME": self.run_as.name}
        stage = Stage(name, (*prefix, *argv), env=env, cwd=str(self._base))
        log.debug("scratch cluster: %s", stage)
        result = run_quiet(stage, timeout=timeout, check=False)
        if result.returncode == 0:
            return None
        lines = [ln for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        return f"{name} exited with status {result.returncode}: " + " | ".join(lines[-6:])

    def _log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError as exc:
            return f"unreadable ({exc.strerror})"
        return " | ".join(ln for ln in text.splitlines()[-lines:] if ln.strip()) or "empty"


def start(major: int | None = None, parent: Path | None = None) -> Cluster:
    """A scratch cluster of `major` (else the newest installed), in a new private
    directory under `parent` (default: TMPDIR, else /tmp), created and started by
    `with`. It needs room there for the restored database."""
    chosen, bindir = choose(major)
    return Cluster(
        major=chosen,
        bindir=bindir,
        parent=parent or Path(tempfile.gettempdir()),
        run_as=_run_as(),
    )
