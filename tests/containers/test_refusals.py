"""What cannot work is said before anything changes, naming the container and the
engine: no such container, a stopped one, no engine, an engine without its daemon,
an image without a relay program; and what does work with less (bash, podman)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from ct_support import CONTAINER, IMAGE, PW_ENV, App, Box, Engine, content, databases, target
from e2e.e2e_support import Repo, describe


def refused(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 1, describe(proc)
    for word in words:
        assert word in proc.stderr, describe(proc)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_no_such_container_stops_backup_and_restore_before_any_change(
    box: Box, app: App, engine: Engine, repo: Repo
) -> None:
    repo.ok("backup")
    before, files = content(box, app.db), repo.backup_files()
    dbs = databases(box, app.db)

    repo.write(target("app", app.dsn(), container="ghost"))
    refused(repo.run("backup"), "ghost", "docker", "no container ghost")
    refused(repo.run("restore", "--latest", "--yes"), "ghost", "docker")
    refused(repo.run("restore", "--latest", "--into", f"{app.db}_x", "--yes"), "ghost")
    assert repo.backup_files() == files  # no backup, no safety backup
    assert databases(box, app.db) == dbs and content(box, app.db) == before

    engine.add("stopped", dead_pid(), IMAGE, box.bindir)
    repo.write(target("app", app.dsn(), container="stopped"))
    refused(repo.run("backup"), "container stopped is not running", "docker start stopped")

    health = repo.run("health", "--check", "database", "--format", "json")
    assert health.returncode == 2, describe(health)
    (check,) = json.loads(health.stdout)["checks"]
    assert check["status"] == "critical" and "stopped" in check["message"], check


def test_no_engine(app: App, engine: Engine, repo: Repo, tmp_path: Path) -> None:
    if shutil.which("podman"):
        pytest.skip("a real podman is installed")
    only_docker = tmp_path / "only-docker"
    only_docker.mkdir()
    (only_docker / "docker").symlink_to(engine.bin / "docker")
    repo.env["PATH"] = f"{only_docker}:/usr/bin:/bin"
    repo.write(target("app", app.dsn(), engine="podman"))
    text = refused(repo.run("backup"), "podman", CONTAINER, "not installed")
    assert "apt-get install podman" in text
    assert repo.backup_files() == []


def test_engine_without_its_daemon(app: App, repo: Repo) -> None:
    real = shutil.which("docker", path="/usr/local/bin:/usr/bin:/bin")
    if real is None:
        pytest.skip("no docker CLI")
    ps = subprocess.run([real, "ps"], capture_output=True, text=True, check=False)
    if ps.returncode == 0:
        pytest.skip("a docker daemon answers here")
    repo.env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    refused(repo.run("backup"), "docker cannot reach its daemon", CONTAINER)
    assert repo.backup_files() == []


def test_image_without_perl(box: Box, app: App, engine: Engine, repo: Repo) -> None:
    """A unix socket needs perl inside; with a TCP dsn, bash's /dev/tcp relays."""
    engine.add("noperl", box.pid, [p for p in IMAGE if p != "perl"], box.bindir)
    repo.write(target("app", app.dsn(), container="noperl"))
    text = refused(repo.run("backup"), "container noperl (docker) has no perl")
    assert "host=127.0.0.1" in text

    tcp = f"postgresql://{app.role}@127.0.0.1:5432/{app.db}"
    repo.write(target("app", tcp, container="noperl"))
    before = content(box, app.db)
    repo.ok("backup")
    repo.ok("restore", "--latest", "--into", f"{app.db}_tcp", "--yes")
    assert content(box, f"{app.db}_tcp") == before
    inside = [a[a.index("noperl") + 1 :] for a in engine.calls()]
    # each run tried perl once (it is missing), then relayed every session with bash
    assert all(a[3] == "probe" for a in inside if a[0] == "perl"), inside
    assert len([a for a in inside if a[0] == "bash" and "cat" in a[2]]) >= 4, inside

    engine.add("bare", box.pid, ["pg_dump", "pg_restore", "psql", "cat"], box.bindir)
    repo.write(target("app", tcp, container="bare"))
    refused(repo.run("backup"), "container bare (docker) has no perl or bash")


def test_no_server_at_the_dsn(app: App, repo: Repo) -> None:
    repo.write(target("app", f"postgresql://{app.role}@/{app.db}?port=5999"))
    refused(
        repo.run("backup"),
        f"no PostgreSQL answers in container {CONTAINER} (docker)",
        "/var/run/postgresql/.s.PGSQL.5999",
    )


def test_wrong_password_is_named(app: App, repo: Repo) -> None:
    repo.env[PW_ENV] = "not-the-password"
    refused(repo.run("backup"), "password rejected", f"in container {CONTAINER}", PW_ENV)


def test_directory_format_is_a_config_error(app: App, repo: Repo) -> None:
    repo.write(target("app", app.dsn(), fmt="directory"))
    done = repo.run("backup")
    assert done.returncode == 2, describe(done)
    assert "targets.app.format" in done.stderr


def test_podman(box: Box, app: App, engine: Engine, repo: Repo) -> None:
    repo.write(target("app", app.dsn(), engine="podman"))
    repo.ok("backup")
    (manifest,) = repo.manifests()
    assert manifest["source"]["container_engine"] == "podman"
    assert {a[0] for a in engine.calls()} == {"podman"}
    assert all("-t" not in a for a in engine.calls())


def test_drill_in_a_scratch_cluster_on_this_host(box: Box, app: App, repo: Repo) -> None:
    """--scratch-cluster restores into a throwaway cluster here: the container's dump
    needs no container to be read back."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("the scratch cluster needs root and setpriv")
    repo.ok("backup")
    done = repo.run("drill", "--scratch-cluster", "--format", "json")
    assert done.returncode == 0, describe(done)
    (result,) = json.loads(done.stdout)["drills"]
    assert result["ok"] and result["checked"]["rows"] == 3050, result
