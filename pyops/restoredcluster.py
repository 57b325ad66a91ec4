"""A pgBackRest drill: the stanza's newest backup (or the one a point-in-time target
needs) restored by `pgbackrest restore` into a scratch data directory, started as a
throwaway cluster, recovered, checked, and removed.

The cluster is `scratchcluster.Cluster`'s (a private socket directory, no TCP, a free
port, the server's system user when pyops is root, always stopped and deleted), but
its data directory comes from the restore instead of initdb. Its settings are the
backup's, with what would reach the live server or the live repository overridden
(postgresql.auto.conf, read last): no TCP listener, archive_mode off, no primary,
pyops' own pg_hba.conf (local trust: only root and the server's user reach the
socket). The settings a recovering server must not lower (max_connections and the
other parameters pg_control records) are taken from the restored pg_control, so a
data directory whose postgresql.conf lives elsewhere (Debian's /etc/postgresql)
still recovers.

Recovery replays the archived WAL to its end (or to `--target-time`) and promotes;
the drill waits for that, then checks what a dump drill checks: every database
accepts connections, every table is read to its end (exact row counts, reported:
pgBackRest keeps no row counts to compare with, and a restore that replays WAL past
the backup could not match them anyway), and pg_amcheck (heap and B-tree indexes of
every database) when the server's binaries include it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from pyops import scratchcluster
from pyops.config import PgbackrestTarget
from pyops.errors import PyopsError, VerifyFailed
from pyops.execute import Stage, run_quiet
from pyops.progress import human
from pyops.sources import pgbackrest
from pyops.tools import pgbackrest as tool

if TYPE_CHECKING:
    from pyops.app import App

log = logging.getLogger(__name__)
RECOVERY_WAIT_S = 86400.0  # replaying a day of WAL is slow, not broken
START_WAIT_S = 120.0  # until the postmaster has written its pid file
POLL_S = 0.5
AMCHECK_S = 7 * 86400.0
# recorded in pg_control; a recovering server refuses values below the primary's
CONTROL_SETTINGS = {
    "max_connections setting": "max_connections",
    "max_worker_processes setting": "max_worker_processes",
    "max_wal_senders setting": "max_wal_senders",
    "max_prepared_xacts setting": "max_prepared_transactions",
    "max_locks_per_xact setting": "max_locks_per_transaction",
}


def pg_time(when: datetime) -> str:
    """A recovery target time as PostgreSQL and pgBackRest both read it, in UTC, to the
    microsecond."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "+00"


def choose(stanza: pgbackrest.Stanza, target_time: datetime | None) -> pgbackrest.Backup:
    """The newest backup, or the newest that ended before `target_time` (recovery can
    only stop at a time after the backup became consistent). pgBackRest records the
    end to the second, rounded down: a backup counts once a whole second has passed."""
    if target_time is None:
        return stanza.backups[0]
    for b in stanza.backups:  # newest first
        if b.stopped + timedelta(seconds=1) <= target_time:
            return b
    oldest = stanza.backups[-1]
    raise PyopsError(
        f"no backup of stanza {stanza.name} ended before {pg_time(target_time)}: the oldest, "
        f"{oldest.label}, ended at {pg_time(oldest.stopped)}"
    )


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class RestoredCluster(scratchcluster.Cluster):
    """A scratch cluster whose data directory `pgbackrest restore` writes."""

    target: PgbackrestTarget | None = None
    label: str = ""
    target_time: datetime | None = None
    database_bytes: int = 0
    restore_s: float = 0.0
    consistent_s: float = 0.0  # from start until it accepted connections
    recovery_s: float = 0.0  # from start until recovery ended and it was promoted
    warnings: list[str] = field(default_factory=list)

    @property
    def _stanza_target(self) -> PgbackrestTarget:
        if self.target is None:
            raise PyopsError("a restored cluster needs its pgbackrest target")
        return self.target

    def _create(self) -> None:
        target = self._stanza_target
        if self.run_as is not None:
            scratchcluster._reachable(self.parent, self.run_as)
        self._room()
        self.base = Path(tempfile.mkdtemp(prefix="pyops-pgbackrest-drill-", dir=self.parent))
        self.port = scratchcluster._free_port()
        socket_file = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_file).encode()) >= scratchcluster.SOCKET_PATH_MAX:
            raise PyopsError(
                f"drill: the socket path {socket_file} is too long for a unix socket: set "
                "drill_dir (or TMPDIR) to a shorter directory"
            )
        tablespaces = self.base / "tablespaces"
        for path in (self.socket_dir, tablespaces):
            path.mkdir(mode=0o700)
        self._own(self.base, self.socket_dir, tablespaces)
        argv = tool.restore(
            target.pgbackrest_config,
            target.stanza,
            self.data,
            label=self.label,
            tablespaces=tablespaces,
            target_time=pg_time(self.target_time) if self.target_time else None,
        )
        t0 = time.monotonic()
        log.info("drill %s: pgbackrest restore %s into %s", target.name, self.label, self.data)
        try:
            _, warnings = pgbackrest.run_warned(target, "restore", argv, pgbackrest.LONG_S)
        finally:
            self.restore_s = time.monotonic() - t0
        self.warnings += warnings
        self._configure()

    def _room(self) -> None:
        """Fail before restoring when the database cannot fit (WAL replay needs more)."""
        free = shutil.disk_usage(self.parent).free
        need = int(self.database_bytes * 1.1) + (256 << 20)
        if free < need:
            raise PyopsError(
                f"drill: the restored cluster needs about {human(need)}, {self.parent} has "
                f"{human(free)} free: set drill_dir on target {self._stanza_target.name} to "
                "a file system with room"
            )

    def _own(self, *paths: Path) -> None:
        if self.run_as is not None:
            for path in paths:
                os.chown(path, self.run_as.uid, self.run_as.gid)

    def _write(self, path: Path, text: str, append: bool = False) -> None:
        existed = path.exists()
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o600
        )
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if not existed:
            self._own(path)

    def _configure(self) -> None:
        """Settings that keep the copy away from the live server and repository."""
        hba, ident = self._base / "pg_hba.conf", self._base / "pg_ident.conf"
        self._write(hba, "local all all trust\n")
        self._write(ident, "")
        if not (self.data / "postgresql.conf").exists():  # Debian keeps it in /etc
            self._write(self.data / "postgresql.conf", "")
        settings = {
            **self._control_settings(),
            "port": str(self.port),
            "listen_addresses": "''",
            "unix_socket_directories": _quote(str(self.socket_dir)),
            "unix_socket_permissions": "0700",
            "unix_socket_group": "''",
            "hba_file": _quote(str(hba)),
            "ident_file": _quote(str(ident)),
            "external_pid_file": "''",
            "ssl": "off",
            "logging_collector": "off",
            "log_destination": "'stderr'",
            "cluster_name": "'pyops-drill'",
            "hot_standby": "on",
            "archive_mode": "off",
            "primary_conninfo": "''",
            "primary_slot_name": "''",
            "synchronous_standby_names": "''",
            "archive_cleanup_command": "''",
            "recovery_end_command": "''",
        }
        lines = [f"\n# pyops drill of {self.label}: a throwaway copy, never the live server\n"]
        lines += [f"{key} = {value}\n" for key, value in settings.items()]
        self._write(self.data / "postgresql.auto.conf", "".join(lines), append=True)

    def _control_settings(self) -> dict[str, str]:
        """The parameters pg_control recorded for the backup's server."""
        stage = Stage(
            "pg_controldata",
            (str(self.bindir / "pg_controldata"), str(self.data)),
            env={"PATH": pgbackrest.PATH, "LC_ALL": "C"},
        )
        out = run_quiet(stage, timeout=60).stdout
        found = {}
        for line in out.splitlines():
            key, _, value = line.partition(":")
            name = CONTROL_SETTINGS.get(key.strip())
            if name and value.strip().isdigit():
                found[name] = value.strip()
        return found

    def _start(self) -> None:
        """Start it, and wait until recovery has ended and it was promoted."""
        t0 = time.monotonic()
        failed = self._tool(
            "pg_ctl",
            (
                str(self.bindir / "pg_ctl"),
                f"--pgdata={self.data}",
                f"--log={self.log_file}",
                "--no-wait",
                "start",
            ),
            timeout=60,
        )
        self.running = True
        if failed:
            raise PyopsError(
                f"the restored cluster did not start: {failed}; log: {self._log_tail()}"
            )
        seen = False
        while True:
            pid = self._postmaster()
            seen = seen or pid is not None
            if (pid is None and seen) or (pid is not None and not scratchcluster.running(pid)):
                raise PyopsError(
                    f"the restored cluster stopped during recovery: {self._log_tail()}"
                )
            elapsed = time.monotonic() - t0
            if pid is None and elapsed > START_WAIT_S:
                raise PyopsError(f"the restored cluster did not start: {self._log_tail()}")
            if elapsed > RECOVERY_WAIT_S:
                raise PyopsError(
                    f"recovery did not end within {RECOVERY_WAIT_S / 3600:.0f} h: "
                    f"{self._log_tail()}"
                )
            in_recovery = self._in_recovery()
            if in_recovery is not None and not self.consistent_s:
                self.consistent_s = time.monotonic() - t0
            if in_recovery is False:
                self.recovery_s = time.monotonic() - t0
                log.info(
                    "drill: the restored cluster recovered in %.1fs (%s)",
                    self.recovery_s,
                    self.describe(),
                )
                return
            time.sleep(POLL_S)

    def _postmaster(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _in_recovery(self) -> bool | None:
        """None while it does not accept connections yet (not consistent)."""
        try:
            with psycopg.connect(self.dsn(), connect_timeout=5, autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except psycopg.OperationalError:
            return None
        return bool(row and row[0])


# --- the checks -----------------------------------------------------------------------


def inspect(cluster: RestoredCluster) -> dict[str, Any]:
    """Every database connects and every table reads to its end (exact counts); when
    recovery ended (the newest commit it replayed); pg_amcheck."""
    from pyops.pgfacts import server

    with psycopg.connect(cluster.dsn(), connect_timeout=10, autocommit=True) as conn:
        names = [
            str(r[0])
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                "ORDER BY datname"
            ).fetchall()
        ]
        replayed = conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()
    counts: dict[str, dict[str, int]] = {}
    for name in names:
        with psycopg.connect(cluster.dsn(name), connect_timeout=10, autocommit=True) as conn:
            tables = [(s, t) for s, t, _ in server.tables(conn)]
            counts[name] = server.count_rows(conn, tables)
    last = replayed[0] if replayed else None
    return {
        "engine": "pgbackrest",
        "recovered_to": last.isoformat() if isinstance(last, datetime) else None,
        "consistent_s": round(cluster.consistent_s, 3),
        "databases": len(counts),
        "tables": sum(len(c) for c in counts.values()),
        "rows": sum(sum(c.values()) for c in counts.values()),
        "row_counts": counts,
        "amcheck": amcheck(cluster),
    }


def amcheck(cluster: RestoredCluster) -> str:
    """pg_amcheck of every database (heap and B-tree indexes; the amcheck extension is
    installed in the scratch copy where missing). Corruption fails the drill."""
    program = cluster.bindir / "pg_amcheck"
    if not os.access(program, os.X_OK):
        cluster.warnings.append(
            f"pg_amcheck not in {cluster.bindir}: the restored data was not amchecked"
        )
        return "not available"
    jobs = max(1, min(4, os.cpu_count() or 1))
    stage = Stage(
        "pg_amcheck",
        (
            str(program),
            f"--host={cluster.socket_dir}",
            f"--port={cluster.port}",
            f"--username={scratchcluster.SUPERUSER}",
            "--no-password",
            "--all",
            "--install-missing",
            f"--jobs={jobs}",
        ),
        env={"PATH": pgbackrest.PATH, "LC_ALL": "C.UTF-8"},
    )
    result = run_quiet(stage, timeout=AMCHECK_S, check=False)
    if result.returncode != 0:
        said = [ln for ln in (result.stdout + "\n" + result.stderr).splitlines() if ln.strip()]
        raise VerifyFailed(
            f"pg_amcheck of the restored {cluster.label} exited with status "
            f"{result.returncode}: {' | '.join(said[:6])}"
        )
    return "ok"


# --- the drill ------------------------------------------------------------------------


@dataclass
class Drilled:
    """What `drill` found; pyops.actions.drill puts it in the DrillResult."""

    label: str = ""
    tier: str = ""
    bytes: int = 0
    restore_s: float = 0.0
    cluster_s: float = 0.0
    check_s: float = 0.0
    scratch: str = ""
    scratch_cluster: str = ""
    checked: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    leftover: str | None = None


def _server(target: PgbackrestTarget, stanza: pgbackrest.Stanza) -> tuple[int, Path]:
    """The major version and bin dir to run the restored cluster with: a physical copy
    needs the server of its own major version."""
    wanted = scratchcluster.major_of(stanza.pg_version)
    if target.pg_bin_dir is not None:
        return wanted or 0, target.pg_bin_dir
    major, bindir = scratchcluster.choose(wanted)
    if wanted is not None and major != wanted:
        raise PyopsError(
            f"stanza {target.stanza} holds PostgreSQL {wanted} backups, and only PostgreSQL "
            f"{major} is installed here: a physical copy needs its own major version "
            f"(`apt-get install postgresql-{wanted}`, or set pg_bin_dir)"
        )
    return major, bindir


def drill(app: App, target: PgbackrestTarget, target_time: datetime | None, out: Drilled) -> None:
    """Restore, recover, check, remove; `out` holds what was done even when it fails."""
    stanza = pgbackrest.info(target)
    pgbackrest.usable(target, stanza)
    chosen = choose(stanza, target_time)
    out.label, out.tier, out.bytes = chosen.label, chosen.tier, chosen.database_bytes
    major, bindir = _server(target, stanza)
    cluster = RestoredCluster(
        major=major,
        bindir=bindir,
        parent=target.drill_dir or Path(tempfile.gettempdir()),
        run_as=pgbackrest.run_as(target),
        target=target,
        label=chosen.label,
        target_time=target_time,
        database_bytes=chosen.database_bytes,
    )
    out.scratch_cluster = f"PostgreSQL {major}, pgBackRest {chosen.type} backup {chosen.label}"
    try:
        with cluster:
            out.scratch = str(cluster.base)
            t0 = time.monotonic()
            checked = inspect(cluster)
            out.check_s = time.monotonic() - t0
            out.checked = {
                "type": chosen.type,
                "recovery": f"to {pg_time(target_time)}" if target_time else "end of archived WAL",
                **checked,
            }
    finally:
        out.restore_s, out.cluster_s = cluster.restore_s, cluster.recovery_s
        out.warnings += cluster.warnings
        out.leftover = cluster.leftover
