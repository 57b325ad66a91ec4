"""Real receivers for the notification tests: an HTTP server on 127.0.0.1 that records
every request (Apprise's json:// and ntfy:// schemes and the ping URLs all land
here), and a pyops config/CLI around it.

(A module of its own, not conftest.py: several test directories hold a conftest.)
"""

from __future__ import annotations

import http.server
import json
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fixtures.cli import run_pyops, write_config
from prometheus_client.parser import text_string_to_metric_families

HOST = "web-1"


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    query: str
    body: bytes

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Receiver:
    """Records (method, path, query, body) of every request, then answers 200 "OK".
    Under /slow/ it answers a byte at a time for two minutes, so no socket timeout ever
    fires: only the sender's own deadline ends the wait."""

    hits: list[Hit] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, hit: Hit) -> None:
        with self.changed:
            self.hits.append(hit)
            self.changed.notify_all()

    def wait_for(
        self, count: int, where: Callable[[Hit], bool] = lambda h: True, timeout: float = 20
    ) -> list[Hit]:
        """The matching hits once there are at least `count` (AssertionError at the
        deadline): the receiver's recorded state, never a sleep."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(found := [h for h in self.hits if where(h)]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} hits, got {found!r}")
                self.changed.wait(left)
            return found

    def under(self, prefix: str) -> list[Hit]:
        with self.changed:
            return [h for h in self.hits if h.path.startswith(prefix)]


@contextmanager
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            rec.record(Hit(self.command, parts.path, parts.query, body))
            if parts.path.startswith("/slow/"):
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(600):  # two minutes
                    if rec.stop.wait(0.2):
                        break
                    self.wfile.write(b" ")
                    self.wfile.flush()
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        do_GET = do_POST = do_PUT = do_HEAD = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.stop.set()
        server.shutdown()
        server.server_close()


@contextmanager
def refused_port() -> Iterator[int]:
    """A port bound but not listening: every connection is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def q(value: object) -> str:
    return json.dumps(str(value))


@dataclass
class Site:
    """A repository, a config with host web-1, and SQLite/files targets around it."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "pyops.toml"

    @property
    def textfiles(self) -> Path:
        return self.root / "textfiles"

    def sqlite(self, name: str) -> str:
        path = self.root / f"{name}.sqlite3"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('x')")
        conn.commit()
        conn.close()
        return f'[[targets]]\nname = {q(name)}\ntype = "sqlite"\npath = {q(path)}\n'

    def missing_files(self, name: str, path: str) -> str:
        """A files target that fails: its path does not exist."""
        return f'[[targets]]\nname = {q(name)}\ntype = "files"\npaths = [{q(path)}]\n'

    def write(self, body: str) -> None:
        self.textfiles.mkdir(exist_ok=True)
        write_config(
            self.config,
            self.root / "repo",
            f"host = {q(HOST)}\n\n[metrics]\ntextfile_dir = {q(self.textfiles)}\n\n{body}",
        )

    def pyops(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_pyops(self.config, *args, env=env, timeout=120)

    def failed_notifications(self) -> dict[str, float]:
        """pyops_notifications_failed_total by command, from the textfile."""
        path = self.textfiles / "pyops_notify.prom"
        if not path.exists():
            return {}
        out = {}
        for fam in text_string_to_metric_families(path.read_text()):
            for s in fam.samples:
                if s.name == "pyops_notifications_failed_total":
                    out[s.labels["command"]] = s.value
        return out


def notify_table(**keys: object) -> str:
    lines = ["[notify]"]
    for key, value in keys.items():
        if isinstance(value, list | tuple):
            lines.append(f"{key} = [{', '.join(q(v) for v in value)}]")
        else:
            lines.append(f"{key} = {q(value)}")
    return "\n".join(lines) + "\n"


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
