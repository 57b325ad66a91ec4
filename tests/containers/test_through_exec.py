"""A database the host reaches only through `<engine> exec`: backup, verify --deep,
restore in place and --into, drill, health and db report, through the real CLI; the
password never on a command line and only where libpq needs it; never a TTY."""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
from ct_support import CONTAINER, PW_ENV, App, Box, Engine, content, databases
from e2e.e2e_support import ProcWatcher, Repo, describe, run_traced, strace_usable

from pyops import containers

PG_TOOLS = ("pg_dump", "pg_restore", "psql")


def exec_calls(engine: Engine) -> list[list[str]]:
    calls = engine.calls()
    assert calls, "the engine was never called"
    return calls


def assert_never_a_tty_and_env_by_name(engine: Engine, password: str) -> None:
    for argv in exec_calls(engine):
        assert argv[1:3] == ["exec", "-i"], argv
        assert not {"-t", "--tty", "-it", "-ti"} & set(argv), argv
        assert password not in " ".join(argv), argv
        rest = argv[3:]
        while rest[0] == "-e":  # by name only: the value stays in the engine's environment
            assert "=" not in rest[1], argv
            rest = rest[2:]
        assert rest[0] == CONTAINER, argv


def test_the_host_cannot_reach_the_server_but_exec_can(box: Box, app: App, engine: Engine) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(app.dsn(), password=app.password, connect_timeout=3)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host="127.0.0.1",
            port=5432,
            dbname=app.db,
            user=app.role,
            password=app.password,
            connect_timeout=3,
        )
    inside = subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            "-e",
            "PGPASSWORD",
            CONTAINER,
            "psql",
            "-XAtq",
            app.dsn(),
            "-c",
            "SELECT count(*) FROM sales.orders",
        ],
        capture_output=True,
        text=True,
        env={"PATH": engine.path_env(), "PGPASSWORD": app.password},
        check=False,
    )
    assert inside.stdout.strip() == "3000", inside.stderr


def bridges() -> set[Path]:
    return {
        p
        for base in {Path(tempfile.gettempdir()), Path("/tmp")}
        for p in base.glob("pyops-bridge-*")
    }


def relays_alive() -> list[str]:
    """Processes still running a relay (their argv holds the relay's probe answer)."""
    alive = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes()
            if containers.OK.encode() in argv:
                alive.append(argv.decode(errors="replace")[:80])
    return alive


def test_backup_verify_restore_into_and_in_place(
    box: Box, app: App, engine: Engine, repo: Repo
) -> None:
    before = content(box, app.db)
    dirs = bridges()
    env = {**repo.env}

    with ProcWatcher([app.password], app.password) as watch:
        done = watch.run(repo.argv("backup"), env)
    assert done.returncode == 0, describe(done)
    assert watch.argv_leaks == [], watch.argv_leaks
    assert "pg_dump" in watch.tools_seen(), watch.sightings
    assert "pg_dump" in watch.holders()
    assert not {s.tool for s in watch.sightings if s.secret_in_env} & {"perl", "bash"}

    (manifest,) = repo.manifests()
    inside = subprocess.run(
        ["docker", "exec", "-i", CONTAINER, "pg_dump", "--version"],
        capture_output=True,
        text=True,
        env={"PATH": engine.path_env()},
        check=True,
    ).stdout.strip()
    assert manifest["tools"]["pg_dump"] == inside
    assert manifest["source"]["container"] == CONTAINER
    assert manifest["source"]["container_engine"] == "docker"
    assert manifest["content"]["tables"] == {"public.blobs": 50, "sales.orders": 3000}

    deep = repo.ok("verify", "--deep")
    assert "ok (deep)" in deep.stdout

    into = f"{app.db}_into"
    with ProcWatcher([app.password], app.password) as watch:
        done = watch.run(repo.argv("restore", "--latest", "--into", into, "--yes"), env)
    assert done.returncode == 0, describe(done)
    assert watch.argv_leaks == []
    assert "pg_restore" in watch.holders(), watch.sightings
    assert content(box, into) == before

    box.psql("DELETE FROM sales.orders WHERE id > 10; UPDATE public.blobs SET raw = ''", app.db)
    done = repo.ok("restore", "--latest", "--yes")
    assert f"restored database {app.db}" in done.stdout
    assert content(box, app.db) == before
    kept = [d for d in databases(box, app.db) if "_pre_restore_" in d]
    assert len(kept) == 1, databases(box, app.db)

    assert_never_a_tty_and_env_by_name(engine, app.password)
    assert bridges() == dirs, "a bridge directory was left behind"
    assert relays_alive() == []
    calls = exec_calls(engine)
    tools = {argv[argv.index(CONTAINER) + 1] for argv in calls}
    assert {"pg_dump", "pg_restore", "perl"} <= tools, tools
    for argv in calls:  # the password goes to the tools, never to the relay
        program = argv[argv.index(CONTAINER) + 1]
        assert ("PGPASSWORD" in argv) == (program in PG_TOOLS and "--version" not in argv), argv


def test_plain_format_restores_with_psql_inside(
    box: Box, app: App, engine: Engine, repo: Repo
) -> None:
    repo.write(repo.body.replace('format = "custom"', 'format = "plain"'))
    before = content(box, app.db)
    repo.ok("backup")
    into = f"{app.db}_plain"
    repo.ok("restore", "--latest", "--into", into, "--yes")
    assert content(box, into) == before
    programs = [argv[argv.index(CONTAINER) + 1] for argv in exec_calls(engine)]
    assert "psql" in programs and "pg_restore" not in programs, programs


def test_drill(box: Box, app: App, engine: Engine, repo: Repo) -> None:
    repo.ok("backup")
    done = repo.ok("drill", "--format", "json")
    (result,) = json.loads(done.stdout)["drills"]
    assert result["ok"], result
    assert result["checked"]["rows"] == 3050, result
    assert databases(box, "pyops_drill_") == []
    assert_never_a_tty_and_env_by_name(engine, app.password)


def test_health_and_db_report_reach_the_same_database(
    box: Box, app: App, engine: Engine, repo: Repo
) -> None:
    done = repo.run("health", "--check", "database", "--format", "json")
    data = json.loads(done.stdout)
    (check,) = [c for c in data["checks"] if c["name"] == "database"]
    assert check["status"] == "ok", check
    assert f"app: PostgreSQL {box.major()}" in check["message"], check
    assert check["metrics"]["app.up"] == 1.0

    report = repo.ok("db", "report", "--section", "size", "--format", "json")
    data = json.loads(report.stdout)
    assert list(data) == ["app"]
    assert app.db in json.dumps(data["app"]), data
    assert_never_a_tty_and_env_by_name(engine, app.password)


def test_the_password_reaches_only_the_engine_and_the_tools(
    app: App, engine: Engine, repo: Repo, tmp_path: Path
) -> None:
    """Every exec, traced: the password is in the environment of the engine running a
    PostgreSQL tool and of what it starts inside, never of the relays, never on argv."""
    if not strace_usable():
        pytest.skip("strace missing or ptrace not permitted")
    done, execs = run_traced(repo.argv("backup"), repo.env, tmp_path / "backup.strace")
    assert done.returncode == 0, describe(done)
    holders = [e for e in execs[1:] if any(app.password in v for v in e.env)]
    assert holders, "the password reached no tool"
    for e in execs:
        assert not any(app.password in a for a in e.argv), e.argv
    for e in holders:  # the engine running pg_dump, nsenter (the engine here), pg_dump
        assert e.tool in ("docker", "nsenter", *PG_TOOLS), (e.tool, e.argv)
        assert "pg_dump" in " ".join(e.argv), e.argv
        assert e.tool == "pg_dump" or "PGPASSWORD" in e.argv or e.tool == "nsenter", e.argv
    relays = [e for e in execs if e.tool == "perl"]
    assert relays and not any(any(app.password in v for v in e.env) for e in relays)
    assert not any(any(v.startswith(f"{PW_ENV}=") for v in e.env) for e in execs[1:])
