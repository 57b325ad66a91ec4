"""pyops.tools: the exact command lines pyops runs, and that no secret is ever on them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyops.execute import Stage
from pyops.tools import archive, compress, gpg, pg

SECRET = "s3cret-Pa55word!"
ENV = {"PGPASSWORD": SECRET}
DSN = "postgresql://app@127.0.0.1:5432/app"
HOME = Path("/etc/pyops/gnupg")
BASE = ("gpg", "--batch", "--no-tty", "--quiet", "--yes")


def no_secret(stage: Stage) -> None:
    """No password or passphrase on argv, nor any way of putting one there."""
    for arg in stage.argv:
        assert SECRET not in arg, stage.argv
        assert "password=" not in arg.lower(), stage.argv  # conninfo keyword
        assert not re.search(r"://[^/@]*:[^/@]*@", arg), stage.argv  # URI user:password@
        assert arg not in ("--password", "-W", "--passphrase", "--passphrase-file"), stage.argv


# --------------------------------------------------------------------------- pg_dump


@pytest.mark.parametrize(
    ("fmt", "flags"),
    [
        ("custom", ("--format=c", "--compress=0")),
        ("plain", ("--format=p",)),
        ("tar", ("--format=t",)),
        ("directory", ("--format=d", "--compress=0")),
    ],
)
def test_pg_dump_argv_per_format(fmt: str, flags: tuple[str, ...]) -> None:
    stage = pg.pg_dump(None, DSN, fmt, env=ENV)
    assert stage.argv == ("pg_dump", "--no-password", *flags, f"--dbname={DSN}")
    assert stage.name == "pg_dump"
    assert stage.env == ENV  # the password reaches this child only, by environment
    assert stage.pass_fds == ()
    no_secret(stage)


def test_pg_dump_from_a_snapshot_with_a_bin_dir() -> None:
    stage = pg.pg_dump(
        Path("/usr/lib/postgresql/16/bin"), DSN, "custom", env=ENV, snapshot="00000003-1B"
    )
    assert stage.argv == (
        "/usr/lib/postgresql/16/bin/pg_dump",
        "--no-password",
        "--format=c",
        "--compress=0",
        "--snapshot=00000003-1B",
        f"--dbname={DSN}",
    )
    no_secret(stage)


def test_pg_dump_directory_in_parallel() -> None:
    stage = pg.pg_dump(
        None, DSN, "directory", env=ENV, snapshot="S", jobs=4, directory=Path("/scratch/dump")
    )
    assert stage.argv == (
        "pg_dump",
        "--no-password",
        "--format=d",
        "--compress=0",
        "--snapshot=S",
        "--jobs=4",
        "--file=/scratch/dump",
        f"--dbname={DSN}",
    )
    no_secret(stage)


def test_pg_dump_jobs_only_apply_to_directory_format() -> None:
    stage = pg.pg_dump(None, DSN, "custom", env=ENV, jobs=4, directory=Path("/x"))
    assert not [a for a in stage.argv if a.startswith(("--jobs", "--file"))]


def test_pg_file_name_layers() -> None:
    assert pg.EXTENSIONS == {
        "custom": "pgdump",
        "plain": "sql",
        "directory": "pgdir.tar",
        "tar": "pgtar",
    }


# --------------------------------------------------------------------------- pg_restore / psql


def test_pg_restore_into_a_database() -> None:
    dest = "host=/run/postgresql dbname=app_restore user=app"
    stage = pg.pg_restore(None, dest, env=ENV)
    assert stage.argv == ("pg_restore", "--no-password", f"--dbname={dest}", "--exit-on-error")
    assert stage.env == ENV
    no_secret(stage)


def test_pg_restore_in_parallel_from_a_file() -> None:
    stage = pg.pg_restore(
        Path("/usr/lib/postgresql/16/bin"),
        DSN,
        env=ENV,
        jobs=4,
        source=Path("/repo/.pyops/scratch/restore-x/restore.pgdump"),
    )
    assert stage.argv == (
        "/usr/lib/postgresql/16/bin/pg_restore",
        "--no-password",
        f"--dbname={DSN}",
        "--exit-on-error",
        "--jobs=4",
        "/repo/.pyops/scratch/restore-x/restore.pgdump",
    )
    no_secret(stage)


def test_pg_restore_deep_check_reads_everything_to_dev_null() -> None:
    stage = pg.pg_restore(None, None, env={})
    assert stage.argv == ("pg_restore", "--no-password", "--file=/dev/null")
    assert "--list" not in stage.argv  # --list reads only the table of contents


def test_psql_script() -> None:
    stage = pg.psql_script(None, DSN, env=ENV)
    assert stage.argv == (
        "psql",
        "--no-password",
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={DSN}",
    )
    assert stage.env == ENV
    no_secret(stage)


def test_pg_version() -> None:
    assert pg.version(None).argv == ("pg_dump", "--version")
    assert pg.version(Path("/b"), "pg_restore").argv == ("/b/pg_restore", "--version")


# --------------------------------------------------------------------------- compression


def test_zstd() -> None:
    (stage,) = compress.compress("zstd", 19, 0)
    assert stage.argv == ("zstd", "-q", "-c", "-19", "-T0")
    (stage,) = compress.compress("zstd", 3, 4)
    assert stage.argv == ("zstd", "-q", "-c", "-3", "-T4")
    (stage,) = compress.decompress("zstd")
    assert stage.argv == ("zstd", "-q", "-d", "-c")
    assert compress.extension("zstd") == "zst"


def test_gzip() -> None:
    (stage,) = compress.compress("gzip", 6, 8)  # gzip has no threads
    assert stage.argv == ("gzip", "-c", "-n", "-6")
    (stage,) = compress.decompress("gzip")
    assert stage.argv == ("gzip", "-d", "-c")
    assert compress.extension("gzip") == "gz"


def test_no_compression_adds_no_stage_and_no_layer() -> None:
    assert compress.compress("none", 3, 0) == []
    assert compress.decompress("none") == []
    assert compress.extension("none") is None


# --------------------------------------------------------------------------- gpg

HOMED = ("--homedir", "/etc/pyops/gnupg")
OFFLINE = ("--no-auto-key-locate", "--no-auto-key-retrieve", "--disable-dirmngr")


def test_encrypt_public() -> None:
    stage = gpg.encrypt_public(HOME, ("backup@example.org", "0xABCDEF"))
    assert stage.argv == (
        *BASE,
        *HOMED,
        *OFFLINE,
        "--trust-model",
        "always",
        "--compress-algo",
        "none",
        "--encrypt",
        "--recipient",
        "backup@example.org",
        "--recipient",
        "0xABCDEF",
        "--output",
        "-",
    )
    assert stage.pass_fds == ()
    assert stage.env == {}


def test_encrypt_public_default_home() -> None:
    stage = gpg.encrypt_public(None, ("a@b",))
    assert "--homedir" not in stage.argv
    assert stage.argv[: len(BASE)] == BASE


def test_encrypt_symmetric_takes_the_passphrase_by_fd() -> None:
    stage = gpg.encrypt_symmetric(HOME, 7)
    assert stage.argv == (
        *BASE,
        *HOMED,
        *OFFLINE,
        "--no-symkey-cache",
        "--pinentry-mode",
        "loopback",
        "--passphrase-fd",
        "7",
        "--compress-algo",
        "none",
        "--cipher-algo",
        "AES256",
        "--symmetric",
        "--output",
        "-",
    )
    # the fd is inherited by this child only; tests/runbook proves the round trip for real
    assert stage.pass_fds == (7,)
    for forbidden in ("--passphrase", "--passphrase-file"):
        assert forbidden not in stage.argv


def test_decrypt_without_passphrase() -> None:
    stage = gpg.decrypt(HOME, None)
    assert stage.argv == (
        *BASE,
        *HOMED,
        *OFFLINE,
        "--no-symkey-cache",
        "--output",
        "-",
        "--decrypt",
    )
    assert stage.pass_fds == ()
    assert stage.name == "gpg -d"


def test_decrypt_with_passphrase_fd() -> None:
    stage = gpg.decrypt(None, 9)
    assert stage.argv == (
        *BASE,
        *OFFLINE,
        "--no-symkey-cache",
        "--pinentry-mode",
        "loopback",
        "--passphrase-fd",
        "9",
        "--output",
        "-",
        "--decrypt",
    )
    assert stage.pass_fds == (9,)


def test_decrypt_probe_reports_status_and_is_not_quiet() -> None:
    # --quiet would drop the "ERROR pkdecrypt_failed 11" line that tells a wrong passphrase
    stage = gpg.decrypt_probe(HOME, 9, ask=False)
    assert stage.argv == (
        "gpg",
        "--batch",
        "--no-tty",
        "--yes",
        *HOMED,
        *OFFLINE,
        "--no-symkey-cache",
        "--pinentry-mode",
        "loopback",
        "--passphrase-fd",
        "9",
        "--status-fd",
        "1",
        "--output",
        "/dev/null",
        "--decrypt",
    )
    assert stage.pass_fds == (9,)


def test_decrypt_probe_without_passphrase_never_opens_a_pinentry_unless_asked() -> None:
    unattended = gpg.decrypt_probe(HOME, None, ask=False).argv
    assert unattended[unattended.index("--pinentry-mode") + 1] == "error"
    assert "--pinentry-mode" not in gpg.decrypt_probe(HOME, None, ask=True).argv


def test_list_keys() -> None:
    stage = gpg.list_keys(HOME, "-backup@example.org")
    assert stage.argv == (
        *BASE,
        *HOMED,
        *OFFLINE,
        "--trust-model",
        "always",
        "--with-colons",
        "--fixed-list-mode",
        "--with-keygrip",
        "--list-sigs",
        "--",
        "-backup@example.org",
    )
    assert gpg.list_keys(None, secret=True).argv[-1] == "--list-secret-keys"


def test_connect_agent_never_starts_an_agent() -> None:
    stage = gpg.connect_agent(HOME, ["KEYINFO --list"])
    assert stage.argv == ("gpg-connect-agent", *HOMED, "--no-autostart", "KEYINFO --list", "/bye")


@pytest.mark.parametrize(
    "stage",
    [
        gpg.encrypt_public(HOME, ("a@b",)),
        gpg.encrypt_symmetric(HOME, 7),
        gpg.decrypt(HOME, 9),
        gpg.decrypt(HOME, None),
        gpg.decrypt_probe(HOME, None, ask=True),
        gpg.list_keys(HOME, "a@b"),
    ],
    ids=lambda s: " ".join(s.argv[-3:]),
)
def test_every_gpg_is_offline_and_keeps_secrets_off_argv(stage: Stage) -> None:
    """No WKD, keyserver or dirmngr: a key that is not in the home is missing."""
    for option in OFFLINE:
        assert option in stage.argv
    no_secret(stage)


def test_gpg_version() -> None:
    assert gpg.version(HOME).argv == ("gpg", "--homedir", "/etc/pyops/gnupg", "--version")


# --------------------------------------------------------------------------- tar


def test_tar_create() -> None:
    stage = archive.tar_create(
        (Path("/srv/app/media"), Path("/etc/nginx")),
        ("*.tmp", "cache/*"),
        Path("/repo/.pyops/scratch/x/index.txt"),
    )
    assert stage.argv == (
        "tar",
        "--create",
        "--file=-",
        "--format=posix",
        "--pax-option=delete=atime,delete=ctime,delete=mtime",
        "--xattrs",
        "--acls",
        "--sparse",
        "--directory=/",
        "--verbose",
        "--verbose",
        "--quoting-style=escape",
        "--index-file=/repo/.pyops/scratch/x/index.txt",
        "--numeric-owner",
        "--exclude=*.tmp",
        "--exclude=cache/*",
        "--",
        "srv/app/media",
        "etc/nginx",
    )
    # GNU tar exits 1 when a file changed while being read: the archive is still sound
    assert stage.ok_codes == (0, 1)


def test_tar_extract_keeps_tars_own_refusals_and_restores_owners_only_as_root() -> None:
    for as_root, owner in ((True, "--same-owner"), (False, "--no-same-owner")):
        stage = archive.tar_extract(Path("/srv/.media.pyops-tar-x"), as_root)
        assert stage.argv == (
            "tar",
            "--extract",
            "--file=-",
            "--read-full-records",
            "--directory=/srv/.media.pyops-tar-x",
            "--no-overwrite-dir",
            "--preserve-permissions",
            "--numeric-owner",
            owner,
            "--xattrs",
            "--xattrs-include=*",
            "--warning=no-timestamp",
        )
        assert stage.stderr_warns and stage.ok_codes == (0,)
        assert not any(a.startswith(("--absolute-names", "-P", "--overwrite")) for a in stage.argv)


def test_tar_create_names_are_relative_to_root_even_if_they_look_like_options() -> None:
    stage = archive.tar_create((Path("/--checkpoint-action=exec=sh"),), (), Path("/i"))
    assert stage.argv[-2:] == ("--", "--checkpoint-action=exec=sh")


def test_tar_version() -> None:
    assert archive.version("tar").argv == ("tar", "--version")


@pytest.mark.parametrize(
    "argv",
    [
        ("pg_dump", f"--dbname=postgresql://app:{SECRET}@h/app"),
        ("pg_dump", "--dbname=host=h dbname=app password=x"),
        ("gpg", "--passphrase", "x"),
        ("psql", "-W"),
    ],
)
def test_the_secret_check_itself_catches_secrets(argv: tuple[str, ...]) -> None:
    with pytest.raises(AssertionError):
        no_secret(Stage("x", argv))
