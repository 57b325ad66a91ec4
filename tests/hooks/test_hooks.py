"""[hooks] and [targets.hooks] through the real CLI: real hook processes around real
backups and restores of SQLite targets, nothing mocked.

Each hook is `record.py LOG LABEL [options]`, a script that appends what it saw (its
argv, environment, working directory, stdin and open descriptors) as a JSON line to
LOG, so a test reads back which hooks ran, in which order, with what.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import PYOPS, run_pyops, write_config

PASSWORD = "hook-must-not-see-this-pg-password"
AWS_SECRET = "hook-must-not-see-this-aws-secret"
PYOPS_VARS = {
    "PYOPS_COMMAND",
    "PYOPS_HOOK",
    "PYOPS_TARGET",
    "PYOPS_TIER",
    "PYOPS_BACKUP_ID",
    "PYOPS_STATUS",
    "PYOPS_ERROR",
}
PASSED = {"PATH", "HOME", "LANG", "LC_ALL", "TZ"}

RECORDER = """\
#!{python}
import json, os, sys
log, label, *rest = sys.argv[1:]
opts = dict(zip(rest[::2], rest[1::2]))
watch = opts.get("--watch")
entry = {{
    "label": label,
    "argv": sys.argv[1:],
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "stdin_is_devnull": os.fstat(0).st_rdev == os.stat("/dev/null").st_rdev,
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "watch": sorted(os.listdir(watch)) if watch and os.path.isdir(watch) else None,
}}
with open(log, "a") as f:
    f.write(json.dumps(entry) + "\\n")
print("recorded", label)
if "--stderr" in opts:
    print(opts["--stderr"], file=sys.stderr)
sys.exit(int(opts.get("--exit", "0")))
"""


@dataclass
class Env:
    root: Path
    repo: Path
    config: Path
    recorder: Path
    log: Path

    def hook(self, label: str, *extra: str) -> str:
        """A TOML argv list running the recorder as `label`."""
        return json.dumps([str(self.recorder), str(self.log), label, *extra])

    def db(self, name: str, rows: int = 3) -> Path:
        path = self.root / f"{name}.sqlite3"
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
            conn.execute("DELETE FROM t")
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
        conn.close()
        return path

    def write(self, body: str) -> None:
        write_config(self.config, self.repo, textwrap.dedent(body))

    def run(
        self, *args: str, env: dict[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_pyops(self.config, *args, env=env, input=input, timeout=120)

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def labels(self) -> list[str]:
        return [r["label"] for r in self.records()]

    def record(self, label: str) -> dict[str, Any]:
        found = [r for r in self.records() if r["label"] == label]
        assert len(found) == 1, (label, self.labels())
        return found[0]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    recorder = tmp_path / "record.py"
    recorder.write_text(RECORDER.format(python=sys.executable))
    recorder.chmod(0o755)
    return Env(
        tmp_path, tmp_path / "repo", tmp_path / "pyops.toml", recorder, tmp_path / "hooks.log"
    )


def said(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def sqlite_target(name: str, path: Path, hooks: str = "") -> str:
    body = f'[[targets]]\nname = "{name}"\ntype = "sqlite"\npath = "{path}"\n'
    return body + (f"[targets.hooks]\n{hooks}\n" if hooks else "")


def results(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {r["target"]: r for r in json.loads(proc.stdout)["backups"]}


def manifests(repo: Path, target: str) -> list[Path]:
    return sorted((repo / target).rglob("*.manifest.json"))


def rows(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        conn.close()


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie nobody reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --- backup -------------------------------------------------------------------------------


def test_backup_hooks_run_global_first_with_facts_and_no_secret(env: Env) -> None:
    db = env.db("app")
    target_hooks = (
        f"before_backup = [{env.hook('target-before')}]\n"
        f"after_backup = [{env.hook('target-after')}]"
    )
    env.write(
        f"""
        [hooks]
        before_backup = [{env.hook("global-before")}]
        after_backup = [{env.hook("global-after")}]
        on_error = [{env.hook("global-error")}]

        {sqlite_target("app", db, target_hooks)}

        [[targets]]
        name = "pg"
        type = "postgres"
        dsn = "postgresql://app@127.0.0.1:1/app"
        password_env = "APP_DB_PASSWORD"
        """
    )
    planted = {
        "APP_DB_PASSWORD": PASSWORD,
        "AWS_ACCESS_KEY_ID": "AKIAHOOKTEST",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "PGPASSWORD": PASSWORD,
        "UNRELATED_VARIABLE": "not on the allow-list",
    }
    proc = env.run("backup", "--target", "app", "--format", "json", env=planted)
    assert proc.returncode == 0, said(proc)
    backup_id = results(proc)["app"]["id"]

    assert env.labels() == ["global-before", "target-before", "global-after", "target-after"]
    for record in env.records():
        hook_env = record["env"]
        assert set(hook_env) - {"PWD", "SHLVL", "_"} <= PYOPS_VARS | PASSED, hook_env
        assert set(hook_env) >= PYOPS_VARS
        assert hook_env["PATH"] == os.environ["PATH"]
        for secret in (PASSWORD, AWS_SECRET, "AKIAHOOKTEST"):
            assert not any(secret in value for value in hook_env.values())
        assert hook_env["PYOPS_COMMAND"] == "backup"
        assert hook_env["PYOPS_TARGET"] == "app"
        assert hook_env["PYOPS_TIER"] == "daily"
        assert hook_env["PYOPS_STATUS"] == "ok"
        assert hook_env["PYOPS_ERROR"] == ""
        assert record["cwd"] == "/"
        assert record["stdin_is_devnull"]
        assert len(record["fds"]) <= 4, record["fds"]  # 0, 1, 2 and listdir's own
    assert env.record("global-before")["env"]["PYOPS_HOOK"] == "before_backup"
    assert env.record("target-before")["env"]["PYOPS_BACKUP_ID"] == ""
    assert env.record("target-after")["env"]["PYOPS_HOOK"] == "after_backup"
    assert env.record("target-after")["env"]["PYOPS_BACKUP_ID"] == backup_id
    # what a hook says is logged, naming the hook
    assert "targets[0].hooks.before_backup[0] stdout: recorded target-before" in proc.stderr


def test_a_failing_before_backup_stops_that_target_only(env: Env) -> None:
    a, b = env.db("a"), env.db("b")
    failing = env.hook("a-before", "--exit", "3", "--stderr", "the app refused maintenance mode")
    env.write(
        f"""
        [hooks]
        after_backup = [{env.hook("global-after")}]
        on_error = [{env.hook("global-error")}]

        {sqlite_target("a", a, f"before_backup = [{failing}]")}
        {sqlite_target("b", b, f"before_backup = [{env.hook('b-before')}]")}
        """
    )
    proc = env.run("backup", "--format", "json")
    assert proc.returncode == 1, said(proc)
    out = results(proc)
    assert not out["a"]["ok"]
    assert "targets[0].hooks.before_backup[0]" in out["a"]["error"]
    assert "exited with status 3: the app refused maintenance mode" in out["a"]["error"]
    assert "the backup was not started" in out["a"]["error"]
    assert out["b"]["ok"], said(proc)
    assert manifests(env.repo, "a") == []
    assert not (env.repo / "a").exists() or not any((env.repo / "a").rglob("*.sqlite3*"))
    assert len(manifests(env.repo, "b")) == 1

    # a's after_backup still ran, saying why; on_error ran for a only
    assert env.labels() == ["a-before", "global-after", "global-error", "b-before", "global-after"]
    after_a = env.records()[1]["env"]
    assert after_a["PYOPS_TARGET"] == "a"
    assert after_a["PYOPS_STATUS"] == "failed"
    assert "exited with status 3" in after_a["PYOPS_ERROR"]
    assert "\n" not in after_a["PYOPS_ERROR"]
    assert env.record("global-error")["env"]["PYOPS_HOOK"] == "on_error"
    assert env.records()[4]["env"]["PYOPS_STATUS"] == "ok"


def test_after_backup_and_on_error_run_after_a_failed_backup(env: Env) -> None:
    missing = env.root / "no-such-dir" / "app.sqlite3"
    env.write(
        f"""
        [hooks]
        after_backup = [{env.hook("after")}]
        on_error = [{env.hook("error")}]
        {sqlite_target("app", missing)}
        """
    )
    proc = env.run("backup", "--format", "json")
    assert proc.returncode == 1, said(proc)
    error = results(proc)["app"]["error"]
    assert env.labels() == ["after", "error"]
    for label, hook in (("after", "after_backup"), ("error", "on_error")):
        hook_env = env.record(label)["env"]
        assert hook_env["PYOPS_HOOK"] == hook
        assert hook_env["PYOPS_STATUS"] == "failed"
        assert hook_env["PYOPS_BACKUP_ID"] == ""
        assert hook_env["PYOPS_ERROR"]
        assert hook_env["PYOPS_ERROR"].split(";")[0] in error


def test_a_failing_after_backup_hook_fails_the_run_but_keeps_the_backup(env: Env) -> None:
    db = env.db("app")
    failing = env.hook("after", "--exit", "1", "--stderr", "web did not come back")
    env.write(
        f"""
        [hooks]
        after_backup = [{failing}, {env.hook("after-2")}]
        on_error = [{env.hook("error")}]
        {sqlite_target("app", db)}
        """
    )
    proc = env.run("backup", "--format", "json")
    assert proc.returncode == 1, said(proc)
    result = results(proc)["app"]
    assert not result["ok"]
    assert "hooks.after_backup[0]" in result["error"]
    assert "web did not come back" in result["error"]
    assert f"the backup {result['id']} itself is complete" in result["error"]
    assert len(manifests(env.repo, "app")) == 1
    assert run_pyops(env.config, "verify", result["id"]).returncode == 0
    # the second after_backup hook ran all the same; on_error then
    assert env.labels() == ["after", "after-2", "error"]
    assert env.record("error")["env"]["PYOPS_BACKUP_ID"] == result["id"]
    assert "web did not come back" in env.record("error")["env"]["PYOPS_ERROR"]
    # the run log says so too
    runs = json.loads(env.run("history", "--format", "json").stdout)["runs"]
    history = next(r for r in runs if r["command"] == "backup")
    assert history["result"] == "failed"
    assert "web did not come back" in history["backups"][0]["error"]


def test_a_missing_hook_program_stops_the_target_before_any_hook(env: Env) -> None:
    """An after_backup hook that could not undo what before_backup did: nothing runs
    (but on_error), the other target is backed up, and commands that run no hook
    (list) keep working."""
    a, b = env.db("a"), env.db("b")
    missing = env.root / "not-installed-yet"
    a_hooks = f'before_backup = [{env.hook("a-before")}]\nafter_backup = [["{missing}"]]'
    env.write(
        f"""
        [hooks]
        on_error = [{env.hook("error")}]
        {sqlite_target("a", a, a_hooks)}
        {sqlite_target("b", b)}
        """
    )
    proc = env.run("backup", "--format", "json")
    assert proc.returncode == 1, said(proc)
    out = results(proc)
    assert (
        f"targets[0].hooks.after_backup[0]: '{missing}' is not an executable file"
        in (out["a"]["error"])
    )
    assert "no hook was run, and the backup was not started" in out["a"]["error"]
    assert out["b"]["ok"]
    assert manifests(env.repo, "a") == []
    assert env.labels() == ["error"]
    assert env.run("list").returncode == 0
    check = env.run("config", "check")
    assert check.returncode == 2, said(check)
    assert "config: targets[0].hooks.after_backup[0]:" in check.stderr


def test_a_hook_over_its_timeout_is_killed_with_its_children(env: Env) -> None:
    db = env.db("app")
    pidfile = env.root / "sleeper.pid"
    sleeper = json.dumps(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"])
    env.write(
        f"""
        [hooks]
        timeout_seconds = 1
        before_backup = [{sleeper}]
        after_backup = [{env.hook("after")}]
        {sqlite_target("app", db)}
        """
    )
    t0 = time.monotonic()
    proc = env.run("backup", "--format", "json")
    took = time.monotonic() - t0
    assert proc.returncode == 1, said(proc)
    assert took < 30, took
    error = results(proc)["app"]["error"]
    assert "hooks.before_backup[0]" in error
    assert "did not finish within 1s and was killed" in error
    assert gone(int(pidfile.read_text()))
    assert manifests(env.repo, "app") == []
    assert env.record("after")["env"]["PYOPS_STATUS"] == "failed"


def test_after_backup_runs_when_pyops_is_terminated(env: Env) -> None:
    """systemctl stop during a before_backup hook: the hook is killed, after_backup runs
    (an app must not stay in maintenance mode), pyops exits 143."""
    db = env.db("app")
    pidfile = env.root / "sleeper.pid"
    sleeper = json.dumps(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"])
    env.write(
        f"""
        [hooks]
        before_backup = [{sleeper}]
        after_backup = [{env.hook("after")}]
        {sqlite_target("app", db)}
        """
    )
    child = subprocess.Popen(
        [PYOPS, "--config", str(env.config), "backup"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "the hook never started"
            assert child.poll() is None, child.communicate()
            time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 143, stderr
    assert gone(int(pidfile.read_text()))
    after = env.record("after")["env"]
    assert after["PYOPS_STATUS"] == "failed"
    assert after["PYOPS_ERROR"] == "terminated"
    assert manifests(env.repo, "app") == []


# --- restore ------------------------------------------------------------------------------


def restore_setup(env: Env, hooks: str, target_hooks: str = "") -> tuple[Path, str]:
    """A backup of 3 rows, then the live database changed to 5 rows."""
    db = env.db("app", rows=3)
    env.write(f"[hooks]\n{hooks}\n{sqlite_target('app', db, target_hooks)}")
    proc = env.run("backup", "--format", "json")
    assert proc.returncode == 0, said(proc)
    env.db("app", rows=5)
    env.log.unlink(missing_ok=True)
    return db, str(results(proc)["app"]["id"])


def test_restore_hooks_around_a_restore(env: Env) -> None:
    safety = env.repo / "app" / "pre-restore"
    db, backup_id = restore_setup(
        env,
        f"before_restore = [{env.hook('global-before', '--watch', str(safety))}]\n"
        f"after_restore = [{env.hook('global-after', '--watch', str(safety))}]\n"
        f"on_error = [{env.hook('error')}]",
        f"before_restore = [{env.hook('target-before')}]\n"
        f"after_restore = [{env.hook('target-after')}]",
    )
    proc = env.run("restore", backup_id, "--yes")
    assert proc.returncode == 0, said(proc)
    assert rows(db) == 3
    assert env.labels() == ["global-before", "target-before", "global-after", "target-after"]
    # before_restore ran before the safety backup, after_restore after the restore
    assert env.record("global-before")["watch"] is None
    assert any(n.endswith(".manifest.json") for n in env.record("global-after")["watch"])
    for record in env.records():
        hook_env = record["env"]
        assert hook_env["PYOPS_COMMAND"] == "restore"
        assert hook_env["PYOPS_TARGET"] == "app"
        assert hook_env["PYOPS_BACKUP_ID"] == backup_id
        assert hook_env["PYOPS_TIER"] == "daily"
        assert hook_env["PYOPS_STATUS"] == "ok"
        assert hook_env["PYOPS_RESTORE_INTO"] == ""
    assert env.record("target-after")["env"]["PYOPS_HOOK"] == "after_restore"

    # restore --into: the hooks run too, and are told where to
    env.log.unlink()
    into = env.root / "copy.sqlite3"
    proc = env.run("restore", backup_id, "--into", str(into), "--yes")
    assert proc.returncode == 0, said(proc)
    assert env.record("global-before")["env"]["PYOPS_RESTORE_INTO"] == str(into)


def test_a_failing_before_restore_changes_nothing(env: Env) -> None:
    failing = env.hook("before", "--exit", "2", "--stderr", "maintenance mode unavailable")
    db, backup_id = restore_setup(
        env,
        f"before_restore = [{failing}]\n"
        f"after_restore = [{env.hook('after')}]\n"
        f"on_error = [{env.hook('error')}]",
    )
    proc = env.run("restore", backup_id, "--yes")
    assert proc.returncode == 1, said(proc)
    assert "hooks.before_restore[0]" in proc.stderr
    assert "maintenance mode unavailable" in proc.stderr
    assert "nothing was changed" in proc.stderr
    assert rows(db) == 5
    assert not (env.repo / "app" / "pre-restore").exists()
    assert list(env.root.glob("app.sqlite3.pre-restore-*")) == []
    assert env.labels() == ["before", "after", "error"]
    assert env.record("after")["env"]["PYOPS_STATUS"] == "failed"


def test_a_refused_confirmation_runs_no_hook(env: Env) -> None:
    _, backup_id = restore_setup(env, f"before_restore = [{env.hook('before')}]")
    proc = env.run("restore", backup_id, env={"PYOPS_CONFIRM_FROM_STDIN": "1"}, input="no\n")
    assert proc.returncode == 1, said(proc)
    assert env.labels() == []


def test_a_failing_after_restore_fails_the_run_after_the_restore(env: Env) -> None:
    failing = env.hook("after", "--exit", "1", "--stderr", "app still in maintenance")
    db, backup_id = restore_setup(
        env, f"after_restore = [{failing}]\non_error = [{env.hook('error')}]"
    )
    proc = env.run("restore", backup_id, "--yes", "--no-safety-backup")
    assert proc.returncode == 1, said(proc)
    assert rows(db) == 3
    assert "app still in maintenance" in proc.stderr
    assert "the restore itself is complete" in proc.stderr
    assert env.labels() == ["after", "error"]
    assert env.record("after")["env"]["PYOPS_STATUS"] == "ok"


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hooks", "target_hooks", "key"),
    [
        ("before_backup = [[]]", "", "hooks.before_backup[0]"),
        ('before_backup = [[""]]', "", "hooks.before_backup[0]"),
        ('on_error = [["/bin/true"], ["no-such-program-pyops"]]', "", "hooks.on_error[1]"),
        ('after_backup = [["bin/maintenance", "off"]]', "", "hooks.after_backup[0]"),
        ("timeout_seconds = 0", "", "hooks.timeout_seconds"),
        ("", 'after_restore = [["/nonexistent/pyops-hook"]]', "targets[1].hooks.after_restore[0]"),
        ("", "timeout_seconds = -1", "targets[1].hooks.timeout_seconds"),
    ],
)
def test_config_check_names_the_bad_hook(env: Env, hooks: str, target_hooks: str, key: str) -> None:
    env.write(
        f"[hooks]\n{hooks}\n"
        + sqlite_target("one", env.root / "one.sqlite3")
        + sqlite_target("two", env.root / "two.sqlite3", target_hooks)
    )
    proc = env.run("config", "check")
    assert proc.returncode == 2, said(proc)
    assert f"config: {key}:" in proc.stderr


def test_config_check_accepts_hooks_on_path_and_absolute(env: Env) -> None:
    env.write(
        '[hooks]\nbefore_backup = [["true"], ["sh", "-c", "exit 0"]]\n'
        + sqlite_target("one", env.root / "one.sqlite3", f"on_error = [{env.hook('x')}]")
    )
    proc = env.run("config", "check")
    assert proc.returncode == 0, said(proc)
