"""The pieces, without a server: exact exec argv, the server's address from the dsn,
config checks, the bridge's connection string and socket, the error wording, and
the relays themselves copying every byte both ways."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from pyops import containers
from pyops.config import PostgresTarget
from pyops.errors import ConfigError
from pyops.execute import Stage
from pyops.tools import pg
from pyops.tools.container import Exec

BOX = Exec("docker", "postgres_db")


def pgt(dsn: str = "postgresql://app@/app", **kw: object) -> PostgresTarget:
    base: dict[str, object] = {
        "name": "app",
        "type": "postgres",
        "dsn": dsn,
        "container": "postgres_db",
    }
    return PostgresTarget(**{**base, **kw})  # type: ignore[arg-type]


def test_exec_argv_is_interactive_never_a_tty_and_names_the_env() -> None:
    stage = pg.pg_dump(None, "dbname=app", "custom", env={"PGPASSWORD": "s3cret"}, container=BOX)
    assert stage.name == "pg_dump"
    assert stage.argv == (
        "docker",
        "exec",
        "-i",
        "-e",
        "PGPASSWORD",
        "postgres_db",
        "pg_dump",
        "--no-password",
        "--format=c",
        "--compress=0",
        "--dbname=dbname=app",
    )
    assert stage.env == {"PGPASSWORD": "s3cret"}  # the engine's own environment
    assert "s3cret" not in " ".join(stage.argv)


def test_every_pg_tool_goes_through_the_prefix() -> None:
    env = {"PGPASSWORD": "x"}
    podman = Exec("podman", "db")
    prefix = ("podman", "exec", "-i", "-e", "PGPASSWORD", "db")
    restore = pg.pg_restore(
        Path("/usr/lib/postgresql/16/bin"), "dbname=a", env=env, container=podman
    )
    assert restore.argv[:7] == (*prefix, "/usr/lib/postgresql/16/bin/pg_restore")
    assert pg.psql_script(None, "dbname=a", env=env, container=podman).argv[:7] == (*prefix, "psql")
    assert pg.version(None, "pg_restore", container=podman).argv == (
        "podman",
        "exec",
        "-i",
        "db",
        "pg_restore",
        "--version",
    )
    # without a container, nothing changes
    assert pg.version(None).argv == ("pg_dump", "--version")


def test_wrap_keeps_name_and_env_and_sorts_the_names() -> None:
    stage = Stage("x", ("tool", "a"), env={"B": "1", "A": "2"}, cwd="/somewhere")
    wrapped = BOX.wrap(stage)
    assert wrapped.argv == (
        "docker",
        "exec",
        "-i",
        "-e",
        "A",
        "-e",
        "B",
        "postgres_db",
        "tool",
        "a",
    )
    assert (wrapped.name, wrapped.env, wrapped.cwd) == ("x", {"B": "1", "A": "2"}, None)


@pytest.mark.parametrize(
    ("dsn", "addresses", "port"),
    [
        (
            "postgresql://app@/app",
            ("/var/run/postgresql/.s.PGSQL.5432", "/tmp/.s.PGSQL.5432"),
            5432,
        ),
        ("host=/sock/ port=6000 dbname=app", ("/sock/.s.PGSQL.6000",), 6000),
        ("postgresql://app@localhost:5433/app", ("localhost:5433",), 5433),
        ("host=db hostaddr=127.0.0.1 dbname=app", ("127.0.0.1:5432",), 5432),
    ],
)
def test_the_server_as_seen_inside(dsn: str, addresses: tuple[str, ...], port: int) -> None:
    srv = containers.server(pgt(dsn))
    assert (srv.addresses, srv.port) == (addresses, port)
    assert bool(srv.host) == (not addresses[0].startswith("/"))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"dsn": "host=a,b dbname=x"}, "targets.app.dsn"),
        ({"dsn": "host=@abstract dbname=x"}, "targets.app.dsn"),
        ({"container": "-it"}, "targets.app.container"),
        ({"container": "a b"}, "targets.app.container"),
        ({"format": "directory"}, "targets.app.format"),
        ({"container_engine": "lxc"}, "targets.app.container_engine"),
    ],
)
def test_what_cannot_work_is_a_config_error(changes: dict[str, str], key: str) -> None:
    t = pgt(**changes)
    with pytest.raises(ConfigError) as err:
        containers.of(t)
        containers.server(t)
    assert err.value.key == key


def test_no_container_no_bridge() -> None:
    assert containers.of(pgt(container="")) is None
    assert containers.bridge(pgt(container="")) is None


DAEMON = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
PODMAN_GONE = 'Error: no container with name or ID "db" found: no such container'
PODMAN_STOPPED = (
    "Error: can only create exec sessions on running containers: container state improper"
)


@pytest.mark.parametrize(
    ("rc", "said", "expected"),
    [
        (1, "Error response from daemon: No such container: db", "docker has no container db"),
        (125, PODMAN_GONE, "no container db"),
        (1, "Error response from daemon: container 3f2a is not running", "db is not running"),
        (125, PODMAN_STOPPED, "db is not running"),
        (1, DAEMON, "cannot reach its daemon"),
        (1, "permission denied while trying to connect to the docker.sock", "cannot reach"),
        (2, "something else", "`docker exec` in container db failed: something else"),
    ],
)
def test_engine_problems_are_said_for_the_operator(rc: int, said: str, expected: str) -> None:
    text = containers.engine_problem(Exec("docker", "db"), "app", rc, said)
    assert text.startswith("target app: ") and expected in text, text


@pytest.fixture
def bridge() -> Iterator[containers.Bridge]:
    srv = containers.server(pgt("postgresql://app@/app?port=6543"))
    made = containers.Bridge(BOX, srv, ("true",))
    try:
        yield made
    finally:
        made.close()


def test_bridge_socket_is_private_and_named_for_libpq(bridge: containers.Bridge) -> None:
    assert stat.S_IMODE(bridge.directory.stat().st_mode) == 0o700
    assert bridge.path == bridge.directory / ".s.PGSQL.6543"
    assert stat.S_ISSOCK(bridge.path.stat().st_mode)
    assert stat.S_IMODE(bridge.path.stat().st_mode) == 0o600
    info = conninfo_to_dict(
        bridge.conninfo("host=db hostaddr=10.0.0.1 port=6543 dbname=x requirepeer=postgres")
    )
    assert info == {"host": str(bridge.directory), "port": "6543", "dbname": "x"}


def test_bridge_close_removes_its_directory() -> None:
    srv = containers.server(pgt())
    made = containers.Bridge(BOX, srv, ("true",))
    directory = made.directory
    made.close()
    assert not directory.exists()


# --- the relays, run here against an echo server -----------------------------------


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _relay_round_trip(argv: list[str]) -> None:
    """Every byte value, 4 MiB, through the relay and back; then our half-close ends
    it with status 0."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(argv, stdin=theirs, stdout=theirs, stderr=subprocess.PIPE)
    theirs.close()
    payload = bytes(range(256)) * (16 * 1024)
    sender = threading.Thread(target=ours.sendall, args=(payload,))
    sender.start()
    got = bytearray()
    while len(got) < len(payload):
        chunk = ours.recv(65536)
        assert chunk, "the relay ended early"
        got += chunk
    sender.join()
    assert bytes(got) == payload
    ours.shutdown(socket.SHUT_WR)
    assert ours.recv(1) == b""
    ours.close()
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


def test_perl_relay_over_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / ".s.PGSQL.5432"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    threading.Thread(target=_serve, args=(listener,), daemon=True).start()
    try:
        srv = containers.Server((str(tmp_path / "missing"), str(path)), 5432)
        probe = subprocess.run(
            list(containers.perl_relay(srv, probe=True)), capture_output=True, text=True
        )
        assert probe.stdout.strip() == containers.OK, probe.stderr
        _relay_round_trip(list(containers.perl_relay(srv)))
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def test_perl_relay_says_where_it_looked(tmp_path: Path) -> None:
    srv = containers.Server((str(tmp_path / "a"), "127.0.0.1:1"), 5432)
    probe = subprocess.run(
        list(containers.perl_relay(srv, probe=True)), capture_output=True, text=True
    )
    assert probe.returncode != 0
    assert (
        f"pyops relay: cannot connect to PostgreSQL at {tmp_path}/a: No such file" in probe.stderr
    )
    assert "127.0.0.1:1: Connection refused" in probe.stderr


@pytest.mark.parametrize("relay", ["perl", "bash"])
def test_relays_say_where_nothing_answers(relay: str) -> None:
    srv = containers.Server(("127.0.0.1:1",), 1, "127.0.0.1")
    build = containers.perl_relay if relay == "perl" else containers.bash_relay
    for probe in (True, False):
        done = subprocess.run(list(build(srv, probe=probe)), capture_output=True, text=True)
        assert done.returncode == 3, done
        assert "pyops relay: cannot connect to PostgreSQL at 127.0.0.1:1" in done.stderr


@pytest.mark.parametrize("relay", ["perl", "bash"])
def test_tcp_relays(relay: str) -> None:
    listener = socket.socket(socket.AF_INET)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    threading.Thread(target=_serve, args=(listener,), daemon=True).start()
    try:
        srv = containers.Server((f"127.0.0.1:{port}",), port, "127.0.0.1")
        build = containers.perl_relay if relay == "perl" else containers.bash_relay
        _relay_round_trip(list(build(srv)))
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def test_no_secret_in_the_relay_environment() -> None:
    srv = containers.server(pgt())
    made = containers.Bridge(BOX, srv, ("true",))
    try:
        assert made.relay.env == {}
        assert "-e" not in made.relay.argv
    finally:
        made.close()
    assert os.path.exists("/proc/self")


def test_the_perl_relay_needs_only_perl_base() -> None:
    """Every module the relay loads comes from Debian's perl-base (an essential
    package, so in every Debian-based image), not from the full perl."""
    if shutil.which("dpkg") is None or shutil.which("perl") is None:
        pytest.skip("not a Debian system with perl")
    script = containers.PERL_RELAY.split("my($mode")[0] + 'print join("\\n", values %INC);'
    files = subprocess.run(["perl", "-e", script], capture_output=True, text=True, check=True)
    owners = subprocess.run(
        ["dpkg", "-S", *files.stdout.split()], capture_output=True, text=True, check=True
    )
    packages = {line.split(":")[0] for line in owners.stdout.splitlines()}
    assert packages == {"perl-base"}, owners.stdout
