"""Real local services for the health tests: a CA and certificates, a TLS server, an
HTTP server that records hits, a small SMTP server with STARTTLS, a redis-server,
and the health action run in-process against a config file."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures.cli import run_pyops, write_config

from pyops.actions import health as health_action
from pyops.app import App
from pyops.config import load
from pyops.health.render import Report
from pyops.health.result import Result


def run_health(config: Path, *checks: str) -> Report:
    """`pyops health --check ...` in-process (same action, no interpreter start-up)."""
    return health_action.run(App(load(config)), checks)


def one(config: Path, check: str) -> Result:
    (result,) = run_health(config, check).results
    return result


def q(value: object) -> str:
    """A TOML string."""
    return json.dumps(str(value))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connections are refused, and nobody else can
    take it meanwhile."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


@dataclass
class Env:
    root: Path
    repo: Path
    config: Path

    def write(self, body: str = "") -> Path:
        return write_config(self.config, self.repo, body)

    def pyops(self, *args: str) -> tuple[int, str, str]:
        proc = run_pyops(self.config, *args, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr

    def sqlite(self, name: str = "app", rows: int = 50) -> str:
        """A small SQLite database and its [[targets]] entry."""
        path = self.root / f"{name}.sqlite3"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes (body) VALUES (?)", [("x" * 200,)] * rows)
        conn.commit()
        conn.close()
        return f'[[targets]]\nname = {q(name)}\ntype = "sqlite"\npath = {q(path)}\n'


# --- certificates ----------------------------------------------------------------------


@dataclass
class CA:
    dir: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def path(self) -> Path:
        return self.dir / "ca.pem"

    def issue(self, name: str, days: float) -> tuple[Path, Path]:
        """A server certificate for 127.0.0.1/localhost valid for `days` from now."""
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def make_ca(directory: Path) -> CA:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyops test CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca = CA(directory, key, cert)
    ca.path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


# --- servers ----------------------------------------------------------------------------


class _Loop:
    """Accept connections on 127.0.0.1 in a thread and hand each to `handle`."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            try:
                self.handle(conn)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def __enter__(self) -> _Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class TlsServer(_Loop):
    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.context = context

    def handle(self, conn: socket.socket) -> None:
        with self.context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)  # until the client closes


class SmtpServer(_Loop):
    """Greets, answers EHLO (offering STARTTLS when given a context), switches to TLS,
    says goodbye to QUIT, and refuses anything else: a probe must never send mail."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self.context = context
        self.commands: list[str] = []

    def handle(self, conn: socket.socket) -> None:
        sock: socket.socket = conn
        sock.sendall(b"220 test.invalid ESMTP\r\n")
        reader = sock.makefile("rb")
        while line := reader.readline():
            verb = line.decode().strip().split(" ")[0].upper()
            self.commands.append(verb)
            if verb in ("EHLO", "HELO"):
                tls = self.context is not None and not isinstance(sock, ssl.SSLSocket)
                offer = b"250-STARTTLS\r\n" if tls else b""
                sock.sendall(b"250-test.invalid\r\n" + offer + b"250 8BITMIME\r\n")
            elif verb == "STARTTLS" and self.context is not None:
                sock.sendall(b"220 go ahead\r\n")
                sock = self.context.wrap_socket(sock, server_side=True)
                reader = sock.makefile("rb")
            elif verb == "QUIT":
                sock.sendall(b"221 bye\r\n")
                return
            else:
                sock.sendall(b"502 not here\r\n")


@dataclass
class Hit:
    method: str
    path: str
    body: bytes
    auth: str = ""


@dataclass
class HttpServer:
    """Answers GET/POST with the status named by the path's first part (/200/..,
    /500/..) and records every hit."""

    hits: list[Hit] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HttpServer:
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                auth = self.headers.get("Authorization") or ""
                hits.append(Hit(self.command, self.path, body, auth))
                code = int(self.path.strip("/").split("/")[0] or 200)
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def redis_server(binary: str, directory: Path, *extra: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
