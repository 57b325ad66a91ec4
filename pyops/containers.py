"""PostgreSQL inside a container (`container`, `container_engine` on a postgres target).

The tools run there: `<engine> exec -i -e PGPASSWORD <container> pg_dump ...`
(pyops.tools.container builds the argv). pyops' own sessions (the backup's snapshot
session, the roles capture, restore's maintenance session, drill checks, health, db
report) go through a *bridge*: a unix socket in a private 0700 directory on this
host, named as libpq expects (`.s.PGSQL.<port>`). For each connection to it, pyops
starts `<engine> exec -i <container> <relay>` with the accepted socket as the
engine's stdin and stdout; the relay, inside the container, connects to the server
exactly as pg_dump would (its unix socket, or the dsn's TCP host) and copies bytes
both ways. So the sessions reach the server the tools reach, authenticated the same
way, and the password crosses only the PostgreSQL protocol, never a command line.

The relay is Perl (IO::Socket::UNIX and IO::Select are core Perl; Debian-based
images have perl-base, an essential package); for a TCP dsn, bash's /dev/tcp
serves too (the official alpine images have bash). Before the first session a
probe says, naming the container and the engine, what is missing: the engine, its
daemon, the container, a running container, a relay program, a listening server.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pyops.errors import ConfigError, PyopsError, StageFailed, ToolMissing
from pyops.execute import Running, Stage, run_quiet, start
from pyops.tools.container import ENGINES, NAME, Exec

if TYPE_CHECKING:
    from pyops.config import PostgresTarget

log = logging.getLogger(__name__)

# where libpq looks for the server's socket when the dsn names no host: Debian's and
# the official images' build, then upstream's default
SOCKET_DIRS = ("/var/run/postgresql", "/tmp")
PROBE_TIMEOUT = 60.0
OK = "pyops relay ok"

# argv: probe|relay ADDRESS...; each address a socket path or host:port, tried in order
PERL_RELAY = (
    "use strict;use warnings;use IO::Socket::INET;use IO::Socket::UNIX;use IO::Select;"
    '$SIG{PIPE}="IGNORE";sub fail{print STDERR "pyops relay: @_\\n";exit 3}'
    "my($mode,@at)=@ARGV;my($s,@no);"
    "for(@at){$s=m{^/}?IO::Socket::UNIX->new(Peer=>$_)"
    ':IO::Socket::INET->new(PeerAddr=>$_,Proto=>"tcp");last if$s;push@no,"$_: $!"}'
    'fail("cannot connect to PostgreSQL at ".join("; ",@no)) unless$s;'
    'if($mode eq"probe"){print"' + OK + '\\n";exit 0}'
    "binmode STDIN;binmode STDOUT;my$sel=IO::Select->new(\\*STDIN,$s);my$buf;"
    "while($sel->count){for my$h($sel->can_read){my$in=fileno($h)==fileno(STDIN);"
    'my$n=sysread($h,$buf,65536);if(!defined$n){next if$!{EINTR};fail("read: $!")}'
    "if(!$n){exit 0 unless$in;shutdown($s,1);$sel->remove($h);next}"
    "my($o,$w)=($in?$s:\\*STDOUT,0);while($w<$n){my$k=syswrite($o,$buf,$n-$w,$w);"
    'fail("write: $!") unless defined$k;$w+=$k}}}'
)
# argv: HOST PORT (TCP only: bash cannot open a unix socket)
_BASH_CONNECT = (
    'exec 3<>"/dev/tcp/$1/$2" 2>/dev/null || '
    '{ echo "pyops relay: cannot connect to PostgreSQL at $1:$2" >&2; exit 3; }; '
)
BASH_PROBE = _BASH_CONNECT + 'echo "' + OK + '"'
BASH_RELAY = (
    _BASH_CONNECT + 'cat <&3 & reader=$!; cat >&3; kill "$reader" 2>/dev/null; wait "$reader"; '
    "exit 0"
)


def of(target: PostgresTarget) -> Exec | None:
    """The target's container, checked; None when its tools run on this host."""
    if not target.container:
        return None
    if target.container_engine not in ENGINES:
        raise ConfigError(
            f"targets.{target.name}.container_engine",
            f"{target.container_engine!r}: use {' or '.join(ENGINES)}",
        )
    if not NAME.match(target.container):
        raise ConfigError(
            f"targets.{target.name}.container",
            f"{target.container!r} is not a container name (letters, digits, _ . -)",
        )
    if target.format == "directory":
        raise ConfigError(
            f"targets.{target.name}.format",
            'format "directory" writes its files where pg_dump runs, inside the container: '
            'use "custom" (or "tar", "plain") with container',
        )
    return Exec(target.container_engine, target.container)


# --- where the server is, seen from inside the container ---------------------------------


@dataclass(frozen=True)
class Server:
    """The server's address inside the container: socket paths or host:port, tried in
    order, and the port (the bridge's socket carries it in its name)."""

    addresses: tuple[str, ...]
    port: int
    host: str = ""  # a TCP host; "" for a unix socket

    def describe(self) -> str:
        return " or ".join(self.addresses)


def server(target: PostgresTarget) -> Server:
    """The dsn's one server: libpq's rules (hostaddr before host, a leading / is a
    socket directory, no host: the default socket directory)."""
    parts = conninfo_to_dict(target.dsn)
    host = str(parts.get("hostaddr") or parts.get("host") or "")
    port = str(parts.get("port") or "5432")
    key = f"targets.{target.name}.dsn"
    if "," in host or "," in port:
        raise ConfigError(key, "with container, the dsn names one server (no host lists)")
    if not port.isdigit():
        raise ConfigError(key, f"port {port!r} is not a number")
    if host.startswith("@"):
        raise ConfigError(key, "an abstract socket cannot be reached inside a container")
    if not host or host.startswith("/"):
        dirs = (host,) if host else SOCKET_DIRS
        return Server(tuple(f"{d.rstrip('/')}/.s.PGSQL.{port}" for d in dirs), int(port))
    return Server((f"{host}:{port}",), int(port), host)


def perl_relay(srv: Server, probe: bool = False) -> tuple[str, ...]:
    return ("perl", "-e", PERL_RELAY, "probe" if probe else "relay", *srv.addresses)


def bash_relay(srv: Server, probe: bool = False) -> tuple[str, ...]:
    return (
        "bash",
        "-c",
        BASH_PROBE if probe else BASH_RELAY,
        "pyops-relay",
        srv.host,
        str(srv.port),
    )


# --- the probe ---------------------------------------------------------------------


def _missing(rc: int, text: str, program: str) -> bool:
    """The engine could not start `program` in the container (docker: 126/127,
    'executable file not found'; podman the same, or 'not found in $PATH')."""
    low = text.lower()
    return program in text and (
        rc in (126, 127)
        or "not found" in low
        or "no such file or directory" in low
        or "can't locate" in low  # a perl without the core modules the relay uses
    )


def engine_problem(where: Exec, target: str, rc: int, text: str) -> str:
    """An `<engine> exec` that failed before the command inside ran, for the operator."""
    low = text.lower()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    said = lines[-1] if lines else f"status {rc}"
    engine, name = where.engine, where.container
    if "no such container" in low or "no container with name or id" in low:
        return (
            f"target {target}: {engine} has no container {name} ({said}): is it created and "
            f"named so? `{engine} ps -a` lists them"
        )
    if "is not running" in low or "state improper" in low or "is paused" in low:
        return (
            f"target {target}: container {name} is not running ({engine}: {said}): start it, "
            f"e.g. `{engine} start {name}`"
        )
    if "daemon" in low or "docker.sock" in low or "permission denied" in low:
        return (
            f"target {target}: {engine} cannot reach its daemon to run in container {name}: {said}"
        )
    return f"target {target}: `{engine} exec` in container {name} failed: {said}"


def probe(where: Exec, srv: Server, target: str) -> tuple[str, ...]:
    """Check the engine, the container, a relay program and the server; the relay's
    argv (inside the container) to use for the sessions, or PyopsError saying what is
    missing."""
    relays = [("perl", perl_relay)] + ([("bash", bash_relay)] if srv.host else [])
    for program, build in relays:
        stage = Stage(f"{where.engine} exec", where.argv(build(srv, probe=True)))
        try:
            result = run_quiet(stage, timeout=PROBE_TIMEOUT, check=False)
        except ToolMissing as exc:
            raise PyopsError(
                f"target {target}: the container engine {where.engine} (for container "
                f"{where.container}) is not installed here: {exc}"
            ) from None
        except PyopsError as exc:  # a timeout
            raise PyopsError(f"target {target}: {where}: {exc}") from None
        text = f"{result.stderr}\n{result.stdout}"
        if result.returncode == 0 and OK in result.stdout:
            return build(srv)
        if "pyops relay:" not in text and _missing(result.returncode, text, program):
            continue
        if "pyops relay:" in text:
            said = text[text.index("pyops relay:") + len("pyops relay:") :].strip()
            raise PyopsError(
                f"target {target}: no PostgreSQL answers in {where} at {srv.describe()} "
                f"({said.splitlines()[0]}): is the server up, and the dsn's host and port "
                "the ones inside the container?"
            )
        raise PyopsError(engine_problem(where, target, result.returncode, text))
    need = "perl" if not srv.host else "perl or bash"
    tcp = (
        ""
        if srv.host
        else "; or, with bash in the image, give the dsn a TCP host inside the container "
        "(host=127.0.0.1)"
    )
    raise PyopsError(
        f"target {target}: {where} has no {need}: "
        "pyops' own sessions (snapshot, health, restore) reach the server through a relay "
        f"run inside the container. Debian-based postgres images have perl{tcp}"
    )


# --- the bridge --------------------------------------------------------------------


def _private_dir() -> Path:
    """A new 0700 directory whose socket path fits a sockaddr_un (108 bytes)."""
    for base in (os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir(), "/tmp"):
        if base and len(base) < 60 and os.path.isdir(base):
            with contextlib.suppress(OSError):
                return Path(tempfile.mkdtemp(prefix="pyops-bridge-", dir=base))
    raise PyopsError("no directory for the container bridge's socket (tried $TMPDIR and /tmp)")


class Bridge:
    """A unix socket on this host whose connections are relayed into the container."""

    def __init__(self, where: Exec, srv: Server, relay: tuple[str, ...]) -> None:
        self.where = where
        self.server = srv
        self.relay = Stage("pyops relay", where.argv(relay))
        self.directory = _private_dir()
        self.path = self.directory / f".s.PGSQL.{srv.port}"
        self._lock = threading.Lock()
        self._relays: list[Running] = []
        self._newest: Running | None = None
        self._failure: str | None = None
        self._closed = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(str(self.path))
            self.path.chmod(0o600)
            self._listener.listen(64)
        except BaseException:
            self._listener.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self._thread = threading.Thread(target=self._serve, name="pyops-bridge", daemon=True)
        self._thread.start()
        log.debug("bridge %s -> %s at %s", self.path, where, srv.describe())

    def conninfo(self, info: str) -> str:
        """`info` (the target's dsn, maybe with another dbname) pointed at the bridge."""
        parts = conninfo_to_dict(info)
        for key in ("hostaddr", "requirepeer"):  # the bridge's peer is pyops itself
            parts.pop(key, None)
        parts.update(host=str(self.directory), port=str(self.server.port))
        return make_conninfo("", **parts)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with conn:
                if not self._ours(conn):
                    continue
                try:
                    running = start([self.relay], stdin=conn.fileno(), stdout=conn.fileno())
                except Exception as exc:  # said at the connect that fails
                    with self._lock:
                        self._failure = str(exc)
                    continue
            with self._lock:
                closed = self._closed
                if not closed:
                    self._relays.append(running)
                    self._newest = running
            if closed:  # close() ran meanwhile: this one is not left running
                running.kill()
                return
            self._reap()

    @staticmethod
    def _ours(conn: socket.socket) -> bool:
        """Only this user's processes may use the bridge (the directory is 0700 too)."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        return bool(uid == os.geteuid())

    def _reap(self) -> None:
        with self._lock:
            done = [r for r in self._relays if all(p.poll() is not None for p in r.procs)]
            self._relays = [r for r in self._relays if r not in done]
        for running in done:
            try:
                running.finish()
            except PyopsError as exc:
                with self._lock:
                    self._failure = str(exc)

    def failure(self, wait: float = 3.0) -> str | None:
        """Why the newest relay ended, if it failed (after a connect that failed)."""
        with self._lock:
            newest = self._newest
        deadline = time.monotonic() + wait
        while newest and any(p.poll() is None for p in newest.procs):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self._reap()
        with self._lock:
            return self._failure

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        with self._lock:
            relays, self._relays = self._relays, []
        for running in relays:
            with contextlib.suppress(Exception):
                running.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


_bridges: dict[tuple[Exec, Server], Bridge] = {}
_registry = threading.Lock()


def bridge(target: PostgresTarget) -> Bridge | None:
    """The bridge to the target's server (one per container and server, probed and
    opened at first use, closed at exit); None for a target without container."""
    where = of(target)
    if where is None:
        return None
    srv = server(target)
    with _registry:
        found = _bridges.get((where, srv))
        if found is None:
            relay = probe(where, srv, target.name)
            if not _bridges:
                atexit.register(close_all)
            found = _bridges[(where, srv)] = Bridge(where, srv, relay)
        return found


def close_all() -> None:
    with _registry:
        bridges = list(_bridges.values())
        _bridges.clear()
    for b in bridges:
        b.close()


def tool_failed(target: PostgresTarget, where: Exec, exc: StageFailed, tool: str) -> PyopsError:
    """A tool that could not even report its version inside the container."""
    if _missing(exc.returncode, exc.stderr_tail, tool):
        where_ = f"{target.pg_bin_dir}" if target.pg_bin_dir else "the container's PATH"
        return PyopsError(
            f"target {target.name}: {tool} not found in {where} (looked in {where_}): set "
            "pg_bin_dir to its directory inside the container"
        )
    return PyopsError(engine_problem(where, target.name, exc.returncode, exc.stderr_tail))
