"""The shell scripts in scripts/: restore without pyops, install, the DR drill, shellcheck."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from drill_support import (
    ROOT,
    SCRIPTS,
    ZSTD,
    Live,
    Repo,
    databases_like,
    describe,
    edit_manifest,
    files_target,
    gpg_public,
    gpg_symmetric,
    newest_manifest,
    pg_snapshot,
    pg_target,
    run_script,
    secret_file,
    sqlite_snapshot,
    sqlite_target,
    tree_digest,
)
from fixtures.cli import PYOPS
from fixtures.gpgkeys import GpgKey, cleanup_home, make_gnupghome
from fixtures.pgcluster import PgCluster
from fixtures.s3 import S3

ALL_SCRIPTS = sorted(SCRIPTS.glob("*.sh"))
SYSTEM_PATH = "/usr/bin:/bin"


def bare_env(home: Path, pg: PgCluster | None = None, **extra: str) -> dict[str, str]:
    """What `env -i PATH=/usr/bin:/bin HOME=...` leaves: no venv, no pyops."""
    env = {"PATH": SYSTEM_PATH, "HOME": str(home), "LC_ALL": "C.UTF-8"}
    if pg is not None:
        env.update(PGHOST=pg.host, PGPORT=str(pg.port), PGUSER=pg.superuser)
    env.update(extra)
    return env


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


# --- restore-without-pyops.sh ---------------------------------------------------------


def test_no_pyops_in_the_bare_environment(home: Path) -> None:
    proc = subprocess.run(
        ["/bin/bash", "-c", "command -v pyops"],
        env=bare_env(home),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0, proc.stdout
    # while the tools the script needs are all there
    for tool in ("sha256sum", "gpg", "zstd", "pg_restore", "createdb", "sqlite3", "tar"):
        assert shutil.which(tool, path=SYSTEM_PATH), tool


def test_restore_postgres_gpg_public_zstd_without_pyops(
    repo: Repo, live: Live, gpg_home: GpgKey, home: Path
) -> None:
    repo.write(
        pg_target("appdb", live.pg.dsn(live.db))
        + ZSTD
        + gpg_public(gpg_home.email, gpg_home.gnupghome)
    )
    repo.ok("backup")
    artifact = repo.artifact("appdb")
    assert artifact.name.endswith(".pgdump.zst.gpg"), artifact
    new = f"{live.db}_nopyops"
    try:
        proc = run_script(
            "restore-without-pyops.sh",
            "--dbname",
            new,
            "--gnupghome",
            str(gpg_home.gnupghome),
            str(artifact),
            env=bare_env(home, live.pg, GNUPGHOME=str(gpg_home.gnupghome)),
        )
        assert proc.returncode == 0, describe(proc)
        assert "sha256 ok" in proc.stderr and "restored appdb.daily." in proc.stderr
        restored = pg_snapshot(live.pg, new)
        assert set(restored) == {"public.items", "public.MixedCase", "audit.events"}
        assert restored == pg_snapshot(live.pg, live.db)
    finally:
        live.pg.drop_database(new)


@pytest.mark.parametrize(
    ("fmt", "compression", "jobs", "suffix"),
    [
        ("plain", "gzip", "1", ".sql.gz"),
        ("directory", "zstd", "2", ".pgdir.tar.zst"),
        ("tar", "none", "1", ".pgtar"),
        ("custom", "zstd", "2", ".pgdump.zst"),
    ],
    ids=["plain-gzip", "directory-zstd", "tar-none", "custom-jobs2"],
)
def test_restore_every_postgres_format_without_pyops(
    repo: Repo, live: Live, home: Path, fmt: str, compression: str, jobs: str, suffix: str
) -> None:
    target = pg_target("appdb", live.pg.dsn(live.db)).replace('"custom"', json.dumps(fmt))
    repo.write(target + f'[compression]\nalgorithm = "{compression}"\n')
    repo.ok("backup")
    artifact = repo.artifact("appdb")
    assert artifact.name.endswith(suffix), artifact
    new = f"{live.db}_nopyops"
    try:
        proc = run_script(
            "restore-without-pyops.sh",
            "--dbname",
            new,
            "--jobs",
            jobs,
            str(artifact),
            env=bare_env(home, live.pg),
        )
        assert proc.returncode == 0, describe(proc)
        assert pg_snapshot(live.pg, new) == pg_snapshot(live.pg, live.db)
    finally:
        live.pg.drop_database(new)


def test_damaged_artifact_is_refused_before_anything_is_restored(
    repo: Repo, live: Live, gpg_home: GpgKey, home: Path
) -> None:
    repo.write(
        pg_target("appdb", live.pg.dsn(live.db))
        + ZSTD
        + gpg_public(gpg_home.email, gpg_home.gnupghome)
    )
    repo.ok("backup")
    artifact = repo.artifact("appdb")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    new = f"{live.db}_nopyops"
    try:
        proc = run_script(
            "restore-without-pyops.sh",
            "--dbname",
            new,
            "--gnupghome",
            str(gpg_home.gnupghome),
            str(artifact),
            env=bare_env(home, live.pg),
        )
        assert proc.returncode == 1, describe(proc)
        assert "sha256 mismatch" in proc.stderr and "do not restore" in proc.stderr
        assert databases_like(live.pg, new) == []
    finally:
        live.pg.drop_database(new)


def test_restore_with_a_passphrase_protected_secret_key(
    repo: Repo, live: Live, gpg_home_protected: GpgKey, home: Path, tmp_path: Path
) -> None:
    key = gpg_home_protected
    assert key.passphrase
    repo.write(
        pg_target("appdb", live.pg.dsn(live.db)) + ZSTD + gpg_public(key.email, key.gnupghome)
    )
    repo.ok("backup")
    passfile = secret_file(tmp_path / "key-passphrase", key.passphrase + "\n")
    new = f"{live.db}_nopyops"
    try:
        proc = run_script(
            "restore-without-pyops.sh",
            "--dbname",
            new,
            "--gnupghome",
            str(key.gnupghome),
            "--passphrase-file",
            str(passfile),
            str(repo.artifact("appdb")),
            env=bare_env(home, live.pg),
        )
        assert proc.returncode == 0, describe(proc)
        assert pg_snapshot(live.pg, new) == pg_snapshot(live.pg, live.db)

        # NEW exists now: a second run refuses (createdb fails) and changes nothing
        before = pg_snapshot(live.pg, new)
        again = run_script(
            "restore-without-pyops.sh",
            "--dbname",
            new,
            "--gnupghome",
            str(key.gnupghome),
            "--passphrase-file",
            str(passfile),
            str(repo.artifact("appdb")),
            env=bare_env(home, live.pg),
        )
        assert again.returncode == 1 and "already exists" in again.stderr, describe(again)
        assert pg_snapshot(live.pg, new) == before
    finally:
        live.pg.drop_database(new)


def test_decryption_failure_leaves_no_database_behind(
    repo: Repo, live: Live, gpg_home: GpgKey, home: Path
) -> None:
    repo.write(
        pg_target("appdb", live.pg.dsn(live.db))
        + ZSTD
        + gpg_public(gpg_home.email, gpg_home.gnupghome)
    )
    repo.ok("backup")
    keyless = make_gnupghome()
    new = f"{live.db}_nopyops"
    try:
        proc = run_script(
            "restore-without-pyops.sh",
            "--dbname",
            new,
            "--gnupghome",
            str(keyless),
            str(repo.artifact("appdb")),
            env=bare_env(home, live.pg),
        )
        assert proc.returncode == 1, describe(proc)
        assert "No secret key" in proc.stderr, describe(proc)
        assert databases_like(live.pg, new) == []
    finally:
        cleanup_home(keyless)
        live.pg.drop_database(new)


def test_wrong_passphrase_leaves_no_partial_file(
    repo: Repo, live: Live, home: Path, tmp_path: Path
) -> None:
    gnupghome = make_gnupghome()
    try:
        passfile = secret_file(tmp_path / "passphrase", "the right one\n")
        wrong = secret_file(tmp_path / "wrong", "not the right one\n")
        repo.write(sqlite_target("lite", live.sqlite) + ZSTD + gpg_symmetric(passfile, gnupghome))
        repo.ok("backup")
        dest = tmp_path / "restored" / "app.sqlite3"
        dest.parent.mkdir()
        proc = run_script(
            "restore-without-pyops.sh",
            "--dest",
            str(dest),
            "--gnupghome",
            str(gnupghome),
            "--passphrase-file",
            str(wrong),
            str(repo.artifact("lite")),
            env=bare_env(home),
        )
        assert proc.returncode == 1, describe(proc)
        assert "decryption failed" in proc.stderr, describe(proc)
        assert list(dest.parent.iterdir()) == []
    finally:
        cleanup_home(gnupghome)


def test_restore_script_refuses_without_a_manifest_or_destination(
    repo: Repo, live: Live, home: Path, tmp_path: Path
) -> None:
    repo.write(files_target("media", live.files) + ZSTD)
    repo.ok("backup")
    artifact = repo.artifact("media")
    nonempty = tmp_path / "nonempty"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("mine\n")

    proc = run_script("restore-without-pyops.sh", str(artifact), env=bare_env(home))
    assert proc.returncode == 1 and "--dest DIR is required" in proc.stderr, describe(proc)
    proc = run_script(
        "restore-without-pyops.sh", "--dest", str(nonempty), str(artifact), env=bare_env(home)
    )
    assert proc.returncode == 1 and "is not empty" in proc.stderr, describe(proc)
    assert [p.name for p in nonempty.iterdir()] == ["keep.txt"]

    newest_manifest(repo.path, "media").unlink()
    fresh = tmp_path / "fresh"
    proc = run_script(
        "restore-without-pyops.sh", "--dest", str(fresh), str(artifact), env=bare_env(home)
    )
    assert proc.returncode == 1 and "not found beside the artifact" in proc.stderr, describe(proc)
    assert not fresh.exists()

    usage = run_script("restore-without-pyops.sh", env=bare_env(home))
    assert usage.returncode == 2 and "usage:" in usage.stderr, describe(usage)


def test_restore_sqlite_gpg_symmetric_without_pyops(
    repo: Repo, live: Live, home: Path, tmp_path: Path
) -> None:
    gnupghome = make_gnupghome()
    try:
        passfile = secret_file(tmp_path / "passphrase", "drill-test symmetric passphrase\n")
        repo.write(sqlite_target("lite", live.sqlite) + ZSTD + gpg_symmetric(passfile, gnupghome))
        repo.ok("backup")
        artifact = repo.artifact("lite")
        assert artifact.name.endswith(".sqlite3.zst.gpg"), artifact
        dest = tmp_path / "restored" / "app.sqlite3"
        dest.parent.mkdir()
        proc = run_script(
            "restore-without-pyops.sh",
            "--dest",
            str(dest),
            "--gnupghome",
            str(gnupghome),
            "--passphrase-file",
            str(passfile),
            str(artifact),
            env=bare_env(home),
        )
        assert proc.returncode == 0, describe(proc)
        assert sqlite_snapshot(dest) == sqlite_snapshot(live.sqlite)
        assert not dest.with_name(dest.name + ".partial").exists()

        # the destination now exists: a second run refuses to overwrite it
        again = run_script(
            "restore-without-pyops.sh",
            "--dest",
            str(dest),
            "--gnupghome",
            str(gnupghome),
            "--passphrase-file",
            str(passfile),
            str(artifact),
            env=bare_env(home),
        )
        assert again.returncode == 1 and "exists" in again.stderr, describe(again)
    finally:
        cleanup_home(gnupghome)


def test_restore_files_tar_zst_without_pyops(
    repo: Repo, live: Live, home: Path, tmp_path: Path
) -> None:
    repo.write(files_target("media", live.files) + ZSTD)
    repo.ok("backup")
    artifact = repo.artifact("media")
    assert artifact.name.endswith(".tar.zst"), artifact
    dest = tmp_path / "restored-files"
    proc = run_script(
        "restore-without-pyops.sh", "--dest", str(dest), str(artifact), env=bare_env(home)
    )
    assert proc.returncode == 0, describe(proc)
    assert tree_digest(dest / live.files.relative_to("/")) == tree_digest(live.files)


# --- install.sh -----------------------------------------------------------------------


def copy_source(dest: Path) -> Path:
    """The working tree without venv, VCS and caches: pip builds a local directory in
    place, and the shared checkout must not grow a build/ directory."""
    shutil.copytree(
        ROOT,
        dest,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            "__pycache__",
            "*.egg-info",
            "build",
            ".*_cache",
            "tests",
            "demo-run",
        ),
    )
    return dest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_help_and_dry_run_change_nothing(tmp_path: Path) -> None:
    proc = run_script("install.sh", "--help")
    assert proc.returncode == 0 and "--prefix" in proc.stdout, describe(proc)

    prefix = tmp_path / "P"
    proc = run_script("install.sh", "--dry-run", "--prefix", str(prefix))
    assert proc.returncode == 0, describe(proc)
    steps = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    joined = "\n".join(steps)
    for expected in (
        f"mkdir -p {prefix}/etc/pyops {prefix}/var/backups/pyops",
        f"chmod 0700 {prefix}/etc/pyops {prefix}/var/backups/pyops",
        f"-m venv {prefix}/opt/pyops",
        f"{prefix}/opt/pyops/bin/pip install",
        "pyops init --path",
        f"systemd render --dest {prefix}/etc/systemd/system",
    ):
        assert expected in joined, (expected, proc.stdout)
    assert not prefix.exists()
    assert list(tmp_path.iterdir()) == []

    bad = run_script("install.sh", "--bogus")
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr, describe(bad)


def test_install_upgrade_uninstall_under_a_prefix(tmp_path: Path) -> None:
    source = copy_source(tmp_path / "src")
    prefix = tmp_path / "P"
    etc, repo_dir = prefix / "etc/pyops", prefix / "var/backups/pyops"
    venv, units = prefix / "opt/pyops", prefix / "etc/systemd/system"
    config = etc / "pyops.toml"
    args = ("--prefix", str(prefix), "--source", str(source))

    proc = run_script("install.sh", *args, timeout=180)
    assert proc.returncode == 0, describe(proc)
    assert mode(etc) == 0o700 and mode(repo_dir) == 0o700
    assert config.is_file() and mode(config) == 0o600
    assert f"path = {json.dumps(str(repo_dir))}" in config.read_text()
    version = subprocess.run(
        [str(venv / "bin/pyops"), "--version"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0 and "version" in version.stdout, describe(version)
    rendered = sorted(p.name for p in units.iterdir())
    assert {
        "pyops-backup@.service",
        "pyops-backup@auto.timer",
        "pyops-drill.service",
        "pyops-drill.timer",
        "pyops-health.timer",
        "pyops-maintenance.timer",
    } <= set(rendered)
    drill_unit = (units / "pyops-drill.service").read_text()
    assert f"ExecStart={venv}/bin/pyops " in drill_unit
    assert f"PYOPS_CONFIG={config}" in drill_unit
    verify_units(units, tmp_path / "verify")

    # run again (an upgrade): succeeds, installs the new code, and leaves the
    # operator's config byte for byte
    with config.open("a") as f:
        f.write("# edited by the operator\n")
    edited = config.read_bytes()
    marker = "UPGRADE_MARKER_7f3a = True\n"
    with (source / "pyops" / "__init__.py").open("a") as f:
        f.write(marker)
    again = run_script("install.sh", *args, timeout=180)
    assert again.returncode == 0, describe(again)
    assert "exists; left as it is" in again.stderr
    assert config.read_bytes() == edited and mode(config) == 0o600
    installed = list(venv.glob("lib/python3*/site-packages/pyops/__init__.py"))
    assert len(installed) == 1 and marker in installed[0].read_text(), installed
    version = subprocess.run(
        [str(venv / "bin/pyops"), "--version"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0, describe(version)

    gone = run_script("install.sh", "--uninstall", "--prefix", str(prefix))
    assert gone.returncode == 0, describe(gone)
    assert not venv.exists()
    assert not any(units.glob("pyops-*"))
    assert config.read_bytes() == edited and mode(etc) == 0o700
    assert repo_dir.is_dir() and mode(repo_dir) == 0o700
    # and uninstalling twice is harmless
    twice = run_script("install.sh", "--uninstall", "--prefix", str(prefix))
    assert twice.returncode == 0, describe(twice)


def verify_units(units: Path, work: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the rest of the install test still counts
    shutil.copytree(units, work)
    # instantiate the templates, as systemd would, and verify everything together
    for template, instance in (("pyops-backup@.service", "daily"), ("pyops-failure@.service", "x")):
        (work / template.replace("@.", f"@{instance}.")).write_text((work / template).read_text())
    names = [str(p) for p in sorted(work.iterdir()) if "@." not in p.name]
    proc = subprocess.run([analyze, "verify", *names], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, describe(proc)


# --- dr-drill.sh ----------------------------------------------------------------------


def dr_drill(
    repo: Repo, report_dir: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    days = {datetime.now(UTC).strftime("%Y-%m-%d")}
    proc = run_script(
        "dr-drill.sh",
        "--config",
        str(repo.config),
        "--report-dir",
        str(report_dir),
        *extra,
        env={**os.environ, "PYOPS": PYOPS},
    )
    days.add(datetime.now(UTC).strftime("%Y-%m-%d"))
    return proc, days


def report_files(report_dir: Path, days: set[str]) -> tuple[str, str]:
    """The Markdown report and the raw JSON beside it (named for the UTC day)."""
    found = [d for d in days if (report_dir / f"pyops-drill-{d}.md").exists()]
    assert len(found) == 1, sorted(p.name for p in report_dir.iterdir())
    md = (report_dir / f"pyops-drill-{found[0]}.md").read_text()
    raw = (report_dir / f"pyops-drill-{found[0]}.json").read_text()
    return md, raw


def test_dr_drill_script_from_the_bucket(repo: Repo, live: Live, s3: S3, tmp_path: Path) -> None:
    repo.write(
        pg_target("appdb", live.pg.dsn(live.db))
        + sqlite_target("lite", live.sqlite)
        + files_target("media", live.files)
        + ZSTD
        + s3.config(object_lock_days=0)
    )
    repo.ok("backup")
    reports = tmp_path / "reports"

    proc, days = dr_drill(repo, reports)
    assert proc.returncode == 0, describe(proc)
    md, raw = report_files(reports, days)
    assert "Result: PASSED" in md and "FAILED" not in md
    assert "bucket and manifests agree" in md
    for name in ("appdb", "lite", "media"):
        row = next((line for line in md.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None, md
        assert "| bucket |" in row and row.endswith("| ok |"), row
    drills = json.loads(raw)["drills"]
    assert sorted(d["target"] for d in drills) == ["appdb", "lite", "media"]
    assert all(d["ok"] and d["remote"] for d in drills), drills
    assert databases_like(live.pg, "pyops_drill_") == []


def test_dr_drill_script_reports_a_broken_backup(
    repo: Repo, live: Live, s3: S3, tmp_path: Path
) -> None:
    repo.write(
        pg_target("appdb", live.pg.dsn(live.db))
        + sqlite_target("lite", live.sqlite)
        + ZSTD
        + s3.config(object_lock_days=0)
    )
    repo.ok("backup")
    # the bucket's manifest claims rows the dump does not hold; the local copy is lost
    manifest = newest_manifest(repo.path, "appdb")
    edited = edit_manifest(manifest, lambda d: d["content"]["tables"].update({"public.items": 9}))
    (key,) = [k for k in s3.object_keys() if k.endswith(manifest.name)]
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=json.dumps(edited).encode())
    shutil.rmtree(repo.path)

    reports = tmp_path / "reports"
    proc, days = dr_drill(repo, reports)
    assert proc.returncode == 1, describe(proc)
    md, raw = report_files(reports, days)
    assert "Result: FAILED" in md and "PASSED" not in md
    assert [d["ok"] for d in json.loads(raw)["drills"]] == [False, True]
    appdb = next(line for line in md.splitlines() if line.startswith("| appdb |"))
    assert "FAILED" in appdb and "public.items: 250 rows, manifest says 9" in appdb, appdb
    lite = next(line for line in md.splitlines() if line.startswith("| lite |"))
    assert lite.endswith("| ok |"), lite
    assert databases_like(live.pg, "pyops_drill_") == []


def test_dr_drill_script_local_and_selected_target(repo: Repo, live: Live, tmp_path: Path) -> None:
    repo.write(sqlite_target("lite", live.sqlite) + files_target("media", live.files) + ZSTD)
    repo.ok("backup")
    reports = tmp_path / "reports"
    proc, days = dr_drill(repo, reports, "--local", "--target", "lite")
    assert proc.returncode == 0, describe(proc)
    md, raw = report_files(reports, days)
    assert "Result: PASSED" in md and "(not checked: --local)" in md
    assert [d["target"] for d in json.loads(raw)["drills"]] == ["lite"]
    row = next(line for line in md.splitlines() if line.startswith("| lite |"))
    assert "| local |" in row and row.endswith("| ok |"), row
    assert "| media |" not in md


def test_dr_drill_script_with_a_bad_config_fails_and_says_so(repo: Repo, tmp_path: Path) -> None:
    repo.config.write_text("[repository]\npath = 42\n")
    reports = tmp_path / "reports"
    proc, days = dr_drill(repo, reports, "--local")
    assert proc.returncode == 2, describe(proc)
    assert "repository.path" in proc.stderr, describe(proc)
    md, _ = report_files(reports, days)
    assert "Result: FAILED" in md


def test_dr_drill_script_help_and_bad_option() -> None:
    proc = run_script("dr-drill.sh", "--help")
    assert proc.returncode == 0 and "--report-dir" in proc.stdout, describe(proc)
    bad = run_script("dr-drill.sh", "--nope")
    assert bad.returncode == 2 and "unknown option --nope" in bad.stderr, describe(bad)


# --- every script ---------------------------------------------------------------------


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_script_help_and_syntax(script: Path) -> None:
    syntax = subprocess.run(["/bin/bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    proc = subprocess.run(
        ["shellcheck", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        check=False,
        cwd=SCRIPTS,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
