"""What the checks of one health run share: the app, one clock reading, one
connection per PostgreSQL target, and the counters kept from the previous run.

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

from pyops.app import App
from pyops.config import HealthConfig, PostgresTarget
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
        self._counters_path = app.state / COUNTERS_FILE
        self.previous: dict[str, dict[str, float]] = self._load_counters()
        self.current: dict[str, dict[str, float]] = {}

    # --- PostgreSQL -------------------------------------------------------------

    @property
    def postgres_targets(self) -> list[PostgresTarget]:
        return [t for t in self.app.config.targets if isinstance(t, PostgresTarget)]

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
