"""What the checks of one health run share: the app, one clock reading, one
connection per PostgreSQL target, the targets backups are judged by (an "all"
target's databases listed once), and the counters kept from the previous run.

Checks run in threads, so the shared pieces take a lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
from datetime import datetime
from typing import Any

import psycopg

from pyops import pgdatabases
from pyops.app import App
from pyops.config import HealthConfig, PostgresTarget, Target
from pyops.errors import PyopsError
from pyops.fsutil import make_private_dir, write_atomic

log = logging.getLogger(__name__)
COUNTERS_FILE = "health-counters.json"


class Context:
    def __init__(self, app: App) -> None:
        self.app = app
        self.cfg: HealthConfig = app.config.health
        self.now: datetime = app.clock()
        self._lock = threading.Lock()
        self._db: dict[str, Any] = {}
        self._db_locks: dict[str, threading.Lock] = {}
        self._databases: dict[str, list[pgdatabases.Database]] = {}
        self._backup_targets: list[Target] | None = None
        self._expand_lock = threading.Lock()
        self.unlisted: dict[str, str] = {}  # "all" targets whose server could not be asked
        self._counters_path = app.state / COUNTERS_FILE
        self.previous: dict[str, dict[str, float]] = self._load_counters()
        self.current: dict[str, dict[str, float]] = {}

    # --- PostgreSQL -------------------------------------------------------------

    @property
    def postgres_targets(self) -> list[PostgresTarget]:
        return [t for t in self.app.config.targets if isinstance(t, PostgresTarget)]

    def databases(self, target: PostgresTarget) -> list[pgdatabases.Database]:
        """The databases of the target's server, listed once per run through db()."""
        with self._lock:
            lock = self._db_locks.setdefault(f"databases:{target.name}", threading.Lock())
        with lock:
            if target.name not in self._databases:
                self._databases[target.name] = pgdatabases.list_databases(self.db(target))
            return self._databases[target.name]

    def backup_targets(self) -> list[Target]:
        """The configured targets, each `databases = "all"` target replaced by one per
        database: those its server holds now, or, when the server cannot be asked, those
        the repository holds backups of (`unlisted` says why). An "all" target with no
        database left stays itself, so freshness says it has no backup."""
        with self._expand_lock:
            if self._backup_targets is None:
                self._backup_targets = self._expand()
            return self._backup_targets

    def _expand(self) -> list[Target]:
        out: list[Target] = []
        for t in self.app.config.targets:
            if not isinstance(t, PostgresTarget) or not pgdatabases.is_all(t):
                out.append(t)
                continue
            try:
                included = pgdatabases.split(t, self.databases(t)).included
                children: list[Target] = [pgdatabases.child(t, db) for db in included]
            except (PyopsError, psycopg.Error) as exc:
                self.unlisted[t.name] = str(exc)
                children = pgdatabases.stored_targets(self.app.config, self.app.local(), [t])
            out += children or [t]
        return out

    def db(self, target: PostgresTarget) -> Any:
        """An autocommit connection to the target, made once per run (psycopg
        connections are thread-safe), or PyopsError saying why there is none. It is
        pgfacts' health session: read-only, with short lock and statement timeouts."""
        with self._lock:
            lock = self._db_locks.setdefault(target.name, threading.Lock())
        with lock:
            cached = self._db.get(target.name)
            if isinstance(cached, PyopsError):
                raise cached
            if cached is not None:
                return cached
            from pyops.pgfacts import session

            try:
                conn: Any = session.connect(target, session.HEALTH, purpose="health")
            except PyopsError as exc:
                self._db[target.name] = exc
                raise
            self._db[target.name] = conn
            return conn

    def close(self) -> None:
        for conn in self._db.values():
            if not isinstance(conn, PyopsError):
                with contextlib.suppress(Exception):
                    conn.close()
        self._db.clear()

    # --- TLS --------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """Certificate and host name verified, against [health] tls_ca_file if set."""
        cafile = str(self.cfg.tls_ca_file) if self.cfg.tls_ca_file else None
        return ssl.create_default_context(cafile=cafile)

    # --- counters between runs (deadlocks, evictions) ------------------------------

    def _load_counters(self) -> dict[str, dict[str, float]]:
        try:
            data = json.loads(self._counters_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(
                "health counters %s unreadable (%s): starting afresh", self._counters_path, exc
            )
            return {}
        return data if isinstance(data, dict) else {}

    def remember(self, key: str, values: dict[str, float]) -> dict[str, float] | None:
        """Store this run's counters under `key`; return the previous run's, if any."""
        with self._lock:
            self.current[key] = values
        previous = self.previous.get(key)
        return previous if isinstance(previous, dict) else None

    def save_counters(self) -> None:
        if not self.current:
            return
        merged = {**self.previous, **self.current}
        try:
            make_private_dir(self.app.state)
            write_atomic(self._counters_path, json.dumps(merged, sort_keys=True).encode())
        except OSError as exc:
            log.warning("could not keep the health counters in %s: %s", self._counters_path, exc)
