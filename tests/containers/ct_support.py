"""A PostgreSQL that this host can reach only through a container engine's exec.

There is no container engine daemon here, so a "container" is built from what the
kernel offers: a process holding its own mount and network namespaces (`unshare
--mount --net`), with a private tmpfs on /run where the server's socket lives
(/run/postgresql, libpq's default directory: the dsn names no host) and a loopback
no other namespace shares. The server is started inside it, as an unprivileged
user. Neither its socket nor its TCP port exists for the host.

The engine is a small executable named `docker` (and `podman`), first on PATH for
the pyops under test, implementing `<engine> exec [-i] [-e NAME]... CONTAINER
COMMAND...` as `nsenter --target <holder> --mount --net COMMAND...`: the command
gets the container's PATH (a directory of the programs its "image" holds) and
the variables named by `-e`, their values read from the engine's own environment
(as docker and podman do with `-e NAME`). It logs every argv it was given, refuses
a TTY as an error, and answers for an unknown or stopped container and a missing
program in the words docker uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fixtures.pgcluster import _ensure_run_user, _initdb, find_bindir

SUPERUSER = "postgres"
PORT = 5432
SOCKET_DIR = "/run/postgresql"
# the programs of an official Debian-based postgres image, as far as pyops cares
IMAGE = ("pg_dump", "pg_restore", "psql", "perl", "bash", "cat", "sh", "env")

CONTAINER = "postgres_db"
PW_ENV = "PYOPS_CT_PASSWORD"

APP_SCHEMA = """
CREATE SCHEMA sales;
CREATE TABLE sales.orders (
    id serial PRIMARY KEY, customer text NOT NULL, amount numeric(12, 2), payload bytea
);
INSERT INTO sales.orders (customer, amount, payload)
SELECT 'Kunde ' || g || ' Grüße', g * 3.17, decode(md5(g::text) || md5((g * 7)::text), 'hex')
FROM generate_series(1, 3000) g;
SELECT setval(pg_get_serial_sequence('sales.orders', 'id'), 9000);
CREATE TABLE public.blobs (id int PRIMARY KEY, raw bytea);
-- every byte value, CR and LF among them: a TTY on the way would change them
INSERT INTO public.blobs SELECT g, (SELECT decode(string_agg(lpad(to_hex(b), 2, '0'), ''),
    'hex') FROM generate_series(0, 255) b) FROM generate_series(1, 50) g;
"""


ENGINE = r'''#!{python} -I
"""A fake container engine: `exec [-i] [-e NAME]... CONTAINER COMMAND...` by nsenter."""
import json, os, shutil, sys
from pathlib import Path

HOME = Path({home!r})


def die(text, code):
    sys.stderr.write(text + "\n")
    sys.exit(code)


argv = sys.argv[1:]
with open(HOME / "exec.log", "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *argv]) + "\n")
if not argv or argv[0] != "exec":
    die("fake engine: only exec is implemented", 125)
args, names, interactive = argv[1:], [], False
while args and args[0].startswith("-"):
    opt = args.pop(0)
    if opt in ("-i", "--interactive"):
        interactive = True
    elif opt in ("-e", "--env"):
        names.append(args.pop(0))
    elif opt in ("-t", "--tty") or (not opt.startswith("--") and "t" in opt):
        die("fake engine: a TTY was asked for (it would corrupt a binary stream)", 125)
    else:
        die(f"unknown flag: {{opt}}", 125)
if len(args) < 2:
    die('"exec" requires at least 2 arguments', 125)
name, command = args[0], args[1:]
box = HOME / "containers" / name
if not box.is_dir():
    die(f"Error response from daemon: No such container: {{name}}", 1)
pid = (box / "pid").read_text().strip()
if not os.path.exists(f"/proc/{{pid}}"):
    die(f"Error response from daemon: container {{name}} is not running", 1)
env = {{"PATH": str(box / "bin"), "HOME": "/root", "LC_ALL": "C.UTF-8"}}
for n in names:
    if "=" in n:
        die("fake engine: a value on the command line", 125)
    if n in os.environ:
        env[n] = os.environ[n]
program = command[0] if "/" in command[0] else shutil.which(command[0], path=env["PATH"])
if program is None or not os.access(program, os.X_OK):
    die(
        "OCI runtime exec failed: exec failed: unable to start container process: exec: "
        f'"{{command[0]}}": executable file not found in $PATH: unknown',
        127,
    )
if not interactive:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
os.execve(
    "/usr/bin/nsenter",
    ["nsenter", f"--target={{pid}}", "--mount", "--net", "--", program, *command[1:]],
    env,
)
'''


@dataclass
class Engine:
    """The fake engine's home: its executables (bin/), its containers, its log."""

    home: Path

    @property
    def bin(self) -> Path:
        return self.home / "bin"

    @property
    def log(self) -> Path:
        return self.home / "exec.log"

    def path_env(self) -> str:
        """PATH with the fake engines first."""
        return f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def add(self, name: str, pid: int, programs: Sequence[str], bindir: Path) -> Path:
        """A container `name` whose processes join `pid`'s namespaces; its image holds
        `programs` (PostgreSQL's from `bindir`, the rest from this host)."""
        box = self.home / "containers" / name
        (box / "bin").mkdir(parents=True)
        (box / "pid").write_text(f"{pid}\n")
        for program in programs:
            found = bindir / program if (bindir / program).exists() else shutil.which(program)
            assert found, program
            (box / "bin" / program).symlink_to(found)
        return box


def make_engine(home: Path, names: Sequence[str] = ("docker",)) -> Engine:
    """The fake engine, installed under `names` (docker, podman)."""
    engine = Engine(home)
    engine.bin.mkdir(parents=True)
    text = ENGINE.format(python=sys.executable, home=str(home))
    for name in names:
        path = engine.bin / name
        path.write_text(text)
        path.chmod(0o755)
    return engine


@dataclass
class Box:
    """A running PostgreSQL in namespaces of its own (see the module's docstring)."""

    base: Path
    holder: subprocess.Popen[str]
    run_as: tuple[str, int, int] | None
    bindir: Path
    data: Path
    running: bool = False

    @property
    def pid(self) -> int:
        return self.holder.pid

    def enter(
        self, argv: Sequence[str], *, as_server: bool = False, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespaces (as the server's user with `as_server`)."""
        cred: list[str] = []
        if as_server and self.run_as is not None:
            cred = [f"--setuid={self.run_as[1]}", f"--setgid={self.run_as[2]}"]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.base),
            "LC_ALL": "C.UTF-8",
            "LC_MESSAGES": "C",
        }
        return subprocess.run(
            ["nsenter", f"--target={self.pid}", "--mount", "--net", *cred, "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.base,
            timeout=120,
            check=False,
        )

    def major(self) -> int:
        return int(self.psql("SHOW server_version_num").strip()) // 10000

    def psql(self, sql: str, db: str = "postgres") -> str:
        """SQL as the superuser, over the socket inside."""
        proc = self.enter(
            [
                str(self.bindir / "psql"),
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                SOCKET_DIR,
                "-p",
                str(PORT),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-f",
                "-",
            ],
            input=sql,
        )
        assert proc.returncode == 0, f"psql in the box: {proc.stderr}"
        return proc.stdout

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        log = self.base / "postgres.log"
        return self.enter(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log), *args],
            as_server=True,
        )

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.pg_ctl("-m", "immediate", "-w", "stop")
        if self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)


HOLDER = (
    "set -e; mount -t tmpfs -o mode=0755 pyops-box /run; mkdir -m 0775 {sock}; "
    "chown {uid}:{gid} {sock}; ip link set lo up; echo ready; exec sleep infinity"
)

HBA = """
local all postgres trust
local all all scram-sha-256
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def start_box() -> Box:
    """initdb on the host, then the server started inside fresh namespaces, listening
    on /run/postgresql (a tmpfs of that mount namespace) and 127.0.0.1 of its own
    network namespace."""
    bindir = find_bindir()
    run_as = _ensure_run_user()
    base = Path(tempfile.mkdtemp(prefix="pyops-box-"))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir(mode=0o700)
    log = base / "postgres.log"
    log.touch(mode=0o644)
    if run_as is not None:
        for p in (data, log):
            os.chown(p, run_as[1], run_as[2])
    _initdb(bindir, data, base, run_as)
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# pyops container test\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {PORT}\n"
            f"unix_socket_directories = '{SOCKET_DIR}'\n"
            "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n"
            "max_connections = 40\nlogging_collector = off\n"
        )
    (data / "pg_hba.conf").write_text(HBA)
    uid, gid = (run_as[1], run_as[2]) if run_as else (os.getuid(), os.getgid())
    holder = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--net",
            "--",
            "sh",
            "-c",
            HOLDER.format(sock=SOCKET_DIR, uid=uid, gid=gid),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    box = Box(base, holder, run_as, bindir, data)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.strip() == "ready", (
            f"namespaces: {line!r} {holder.stderr.read() if holder.stderr else ''}"
        )
        started = box.pg_ctl("-w", "-t", "60", "start")
        box.running = True
        assert started.returncode == 0, f"pg_ctl start: {started.stderr}\n{log.read_text()}"
    except BaseException:
        box.stop()
        raise
    return box


# --- what must survive a restore -----------------------------------------------------

CONTENT_SQL = r"""
SELECT format(
    'SELECT %L, count(*), md5(coalesce(string_agg(t::text, %L ORDER BY t::text), %L)) FROM %I.%I t',
    n.nspname || '.' || c.relname, ',', '', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_%'
ORDER BY 1
\gexec
SELECT 'seq ' || schemaname || '.' || sequencename, last_value, '' FROM pg_sequences ORDER BY 1;
SELECT 'owner', pg_get_userbyid(datdba), '' FROM pg_database WHERE datname = current_database();
"""


def content(box: Box, db: str) -> list[str]:
    """Every table's row count and checksum, the sequences and the owner, as lines."""
    return sorted(box.psql(CONTENT_SQL, db).splitlines())


def databases(box: Box, prefix: str) -> list[str]:
    out = box.psql(f"SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}')")
    return sorted(out.split())


# --- the application and its target --------------------------------------------------


@dataclass
class App:
    """The application database inside the box, owned by a password-protected role."""

    db: str
    role: str
    password: str

    def dsn(self, db: str | None = None) -> str:
        # no host: libpq's default socket directory, inside the container
        return f"postgresql://{self.role}@/{db or self.db}"


def target(
    name: str,
    dsn: str,
    *,
    container: str = CONTAINER,
    engine: str = "docker",
    password_env: str = PW_ENV,
    fmt: str = "custom",
) -> str:
    lines = [
        "[[targets]]",
        f'name = "{name}"',
        'type = "postgres"',
        f'dsn = "{dsn}"',
        f'format = "{fmt}"',
        f'container = "{container}"',
        f'container_engine = "{engine}"',
    ]
    if password_env:
        lines.append(f'password_env = "{password_env}"')
    return "\n".join(lines) + "\n"
