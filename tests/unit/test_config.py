"""pyops.config: the contract's example parses, every rule names its key, and the config
file is found where the contract says."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from pyops import config
from pyops.cli import exit_code
from pyops.config import (
    CleanupRule,
    FilesTarget,
    PostgresTarget,
    SqliteTarget,
    find_config,
    load,
    parse,
)
from pyops.errors import ConfigError, UsageError

# Section 2 of the contract, verbatim.
CONTRACT_EXAMPLE = """
[repository]
path = "/var/backups/pyops"      # created 0700; backups written 0600
host = "web-1"                   # default: the machine's hostname

[retention]                      # complete backups kept per target and tier
daily = 7
weekly = 5
monthly = 12

[compression]
algorithm = "zstd"               # zstd | gzip | none
level = 3
threads = 0                      # zstd -T; 0 = all cores

[encryption]
mode = "gpg-public"              # none | gpg-public | gpg-symmetric
recipients = ["backup@example.org"]
gnupghome = "/etc/pyops/gnupg"
passphrase_file = "/etc/pyops/passphrase"   # symmetric mode; secret-key passphrase for restore

[offsite]
bucket = "acme-backups"
prefix = "pyops"
endpoint_url = ""                # any S3-compatible store
region = "eu-central-1"
storage_class = "STANDARD_IA"
sse = "AES256"                   # AES256 | aws:kms | none
object_lock_days = 0             # >0: COMPLIANCE retain-until on every object

[[targets]]
name = "app-db"
type = "postgres"
dsn = "postgresql://app@127.0.0.1:5432/app"   # no password here: .pgpass, PGPASSFILE or password_env
password_env = "APP_DB_PASSWORD"
format = "custom"                # custom | plain | directory | tar
jobs = 2                         # directory format only

[[targets]]
name = "app-sqlite"
type = "sqlite"
path = "/srv/app/db.sqlite3"

[[targets]]
name = "media"
type = "files"
paths = ["/srv/app/media", "/etc/nginx"]
exclude = ["*.tmp"]

[[maintenance.cleanup]]          # batched deletes, run by `maintenance --operation cleanup`
target = "app-db"
table = "django_session"
where = "expire_date < now()"
batch_size = 1000

[health]
disk_min_free_percent = 10
backup_max_age_hours = 26
drill_max_age_days = 92
tls = ["example.org:443"]
http = ["https://example.org/health/"]
redis = ["redis://127.0.0.1:6379/0"]

[notify]                         # GET/POST a URL, healthchecks.io style
on_start = ""
on_success = ""
on_failure = ""

[metrics]
textfile_dir = ""                # node_exporter textfile collector directory
"""  # noqa: E501


def toml(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def error_for(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(toml(text))
    return info.value


# --------------------------------------------------------------------------- the example


def test_contract_example_parses_verbatim() -> None:
    cfg = parse(toml(CONTRACT_EXAMPLE))

    assert cfg.repository.path == Path("/var/backups/pyops")
    assert cfg.repository.state == Path("/var/backups/pyops/.pyops")
    assert cfg.host == "web-1"
    assert (cfg.retention.daily, cfg.retention.weekly, cfg.retention.monthly) == (7, 5, 12)
    assert cfg.compression.algorithm == "zstd" and cfg.compression.level == 3
    assert cfg.encryption.mode == "gpg-public"
    assert cfg.encryption.recipients == ("backup@example.org",)
    assert cfg.encryption.gnupghome == Path("/etc/pyops/gnupg")
    assert cfg.encryption.passphrase_file == Path("/etc/pyops/passphrase")
    assert cfg.offsite.bucket == "acme-backups" and cfg.offsite.storage_class == "STANDARD_IA"

    db, lite, media = cfg.targets
    assert isinstance(db, PostgresTarget)
    assert (db.name, db.format, db.jobs, db.password_env) == (
        "app-db",
        "custom",
        2,  # accepted with any format; only the directory format uses it
        "APP_DB_PASSWORD",
    )
    assert isinstance(lite, SqliteTarget) and lite.path == Path("/srv/app/db.sqlite3")
    assert isinstance(media, FilesTarget)
    assert media.paths == (Path("/srv/app/media"), Path("/etc/nginx"))
    assert media.exclude == ("*.tmp",)

    assert cfg.maintenance.cleanup == (
        CleanupRule("app-db", "django_session", "expire_date < now()", 1000),
    )
    assert cfg.health.disk_min_free_percent == 10.0
    assert isinstance(cfg.health.disk_min_free_percent, float)
    assert cfg.health.tls == ("example.org:443",)
    assert cfg.notify.on_start == "" and cfg.metrics.textfile_dir == ""
    assert cfg.target("media") is media
    assert cfg.select(["app-sqlite"]) == (lite,)
    assert cfg.select([]) == cfg.targets


def test_contract_example_with_directory_format_keeps_jobs() -> None:
    cfg = parse(toml(CONTRACT_EXAMPLE.replace('format = "custom"', 'format = "directory"')))
    db = cfg.targets[0]
    assert isinstance(db, PostgresTarget) and (db.format, db.jobs) == ("directory", 2)


def test_empty_document_gives_the_defaults() -> None:
    cfg = parse({})
    assert cfg.repository.path == Path("/var/backups/pyops")
    assert cfg.compression.algorithm == "zstd"
    assert cfg.encryption.mode == "none"
    assert cfg.targets == ()


def test_as_data_is_plain_and_holds_no_password() -> None:
    cfg = parse(toml(CONTRACT_EXAMPLE))
    data = config.as_data(cfg)
    assert data["repository"]["path"] == "/var/backups/pyops"
    assert data["targets"][2]["paths"] == ["/srv/app/media", "/etc/nginx"]
    assert "source" not in data
    assert data["targets"][0]["password_env"] == "APP_DB_PASSWORD"  # the name, not a value


def test_unknown_target_on_the_command_line_names_the_option() -> None:
    cfg = parse(toml(CONTRACT_EXAMPLE))
    with pytest.raises(UsageError) as info:
        cfg.target("nope")
    assert info.value.option == "--target"
    assert exit_code(info.value) == 2
    assert "app-db, app-sqlite, media" in str(info.value)


# --------------------------------------------------------------------------- every rule

PG = '[[targets]]\nname = "db"\ntype = "postgres"\ndsn = "postgresql://app@h/app"\n'
LITE = '[[targets]]\nname = "lite"\ntype = "sqlite"\npath = "/srv/db.sqlite3"\n'
FILES = '[[targets]]\nname = "media"\ntype = "files"\npaths = ["/srv/media"]\n'

RULES: list[tuple[str, str, str, str]] = [
    # (case id, TOML, the key the error must name, a fragment of its message)
    ("unknown top-level key", "[repositroy]\npath = '/x'\n", "repositroy", "unknown key"),
    ("unknown nested key", "[compression]\nlevle = 3\n", "compression.levle", "unknown key"),
    ("top-level source key", 'source = "/x"\n', "source", "unknown key"),
    ("unknown target key", PG + 'passwrod_env = "X"\n', "targets[0].passwrod_env", "unknown key"),
    (
        "unknown cleanup key",
        PG + '[[maintenance.cleanup]]\ntarget = "db"\ntable = "t"\nwhere = "true"\nbatch = 5\n',
        "maintenance.cleanup[0].batch",
        "unknown key",
    ),
    ("section not a table", 'repository = "/x"\n', "repository", "expected a table"),
    ("string for int", '[compression]\nlevel = "3"\n', "compression.level", "expected integer"),
    ("float for int", "[retention]\ndaily = 7.5\n", "retention.daily", "expected integer"),
    ("int for string", "[repository]\nhost = 1\n", "repository.host", "expected string"),
    ("string for list", '[encryption]\nrecipients = "a@b"\n', "encryption.recipients", "list"),
    ("bad list item", "[encryption]\nrecipients = [1]\n", "encryption.recipients[0]", "string"),
    ("int for path", "[repository]\npath = 5\n", "repository.path", "path"),
    ("empty path", '[repository]\npath = ""\n', "repository.path", "non-empty path"),
    ("targets not a list", '[targets]\nname = "x"\n', "targets", "expected list"),
    ("target not a table", 'targets = ["db"]\n', "targets[0]", "expected a table"),
    ("bool for int", "[compression]\nlevel = true\n", "compression.level", "boolean"),
    ("bool for int in target", PG + "jobs = true\n", "targets[0].jobs", "boolean"),
    (
        "bool for float",
        "[repository]\nlock_wait_seconds = true\n",
        "repository.lock_wait_seconds",
        "number",
    ),
    ("algorithm choice", '[compression]\nalgorithm = "lz4"\n', "compression.algorithm", "one of"),
    ("mode choice", '[encryption]\nmode = "gpg"\n', "encryption.mode", "one of"),
    ("format choice", PG + 'format = "sql"\n', "targets[0].format", "one of"),
    ("sse choice", '[offsite]\nsse = "kms"\n', "offsite.sse", "one of"),
    ("missing type", '[[targets]]\nname = "x"\n', "targets[0].type", "required"),
    ("unknown type", '[[targets]]\nname = "x"\ntype = "mysql"\n', "targets[0].type", "mysql"),
    ("missing dsn", '[[targets]]\nname = "db"\ntype = "postgres"\n', "targets[0].dsn", "required"),
    ("missing name", '[[targets]]\ntype = "sqlite"\npath = "/x"\n', "targets[0].name", "required"),
    ("missing path", '[[targets]]\nname = "l"\ntype = "sqlite"\n', "targets[0].path", "required"),
    ("missing paths", '[[targets]]\nname = "m"\ntype = "files"\n', "targets[0].paths", "required"),
    (
        "missing cleanup where",
        PG + '[[maintenance.cleanup]]\ntarget = "db"\ntable = "t"\n',
        "maintenance.cleanup[0].where",
        "required",
    ),
    ("name with a space", LITE.replace('"lite"', '"my db"'), "targets[0].name", "letters"),
    ("name with a dot", LITE.replace('"lite"', '"my.db"'), "targets[0].name", "letters"),
    ("empty name", LITE.replace('"lite"', '""'), "targets[0].name", "letters"),
    ("duplicate names", LITE + LITE, "targets[1].name", "duplicate target name 'lite'"),
    (
        "duplicate across types",
        PG + FILES.replace('"media"', '"db"', 1),
        "targets[1].name",
        "duplicate",
    ),
    (
        "relative files path",
        FILES.replace('["/srv/media"]', '["/a", "b/c"]'),
        "targets[0].paths[1]",
        "absolute",
    ),
    ("no files paths", FILES.replace('["/srv/media"]', "[]"), "targets[0].paths", "at least one"),
    (
        "dsn with a password (URI)",
        PG.replace("app@h", "app:s3cret@h"),
        "targets[0].dsn",
        "contains a password",
    ),
    (
        "dsn with a password (query)",
        PG.replace("/app", "/app?password=s3cret"),
        "targets[0].dsn",
        "contains a password",
    ),
    (
        "dsn with a password (key=value)",
        PG.replace("postgresql://app@h/app", "host=h dbname=app password=s3cret"),
        "targets[0].dsn",
        "contains a password",
    ),
    (
        "dsn without dbname (URI)",
        PG.replace("postgresql://app@h/app", "postgresql://app@h:5432"),
        "targets[0].dsn",
        "names no database",
    ),
    (
        "dsn without dbname (key=value)",
        PG.replace("postgresql://app@h/app", "host=h user=app"),
        "targets[0].dsn",
        "names no database",
    ),
    (
        "dsn unparsable",
        PG.replace("postgresql://app@h/app", "host='unterminated"),
        "targets[0].dsn",
        "not a valid connection string",
    ),
    ("jobs zero", PG + "jobs = 0\n", "targets[0].jobs", "at least 1"),
    (
        "gpg-public without recipients",
        '[encryption]\nmode = "gpg-public"\n',
        "encryption.recipients",
        "at least one recipient",
    ),
    (
        "gpg-public with an empty list",
        '[encryption]\nmode = "gpg-public"\nrecipients = []\n',
        "encryption.recipients",
        "at least one recipient",
    ),
    (
        "symmetric without passphrase_file",
        '[encryption]\nmode = "gpg-symmetric"\n',
        "encryption.passphrase_file",
        "passphrase file",
    ),
    ("zstd level too high", "[compression]\nlevel = 20\n", "compression.level", "1..19"),
    ("zstd level zero", "[compression]\nlevel = 0\n", "compression.level", "1..19"),
    (
        "gzip level too high",
        '[compression]\nalgorithm = "gzip"\nlevel = 10\n',
        "compression.level",
        "1..9",
    ),
    ("negative threads", "[compression]\nthreads = -1\n", "compression.threads", "0"),
    ("negative retention", "[retention]\nweekly = -1\n", "retention.weekly", "negative"),
    (
        "negative pre-restore days",
        "[retention]\npre_restore_days = -1\n",
        "retention.pre_restore_days",
        "negative",
    ),
    (
        "cleanup names an unknown target",
        PG + '[[maintenance.cleanup]]\ntarget = "nope"\ntable = "t"\nwhere = "true"\n',
        "maintenance.cleanup[0].target",
        "unknown target 'nope'",
    ),
    (
        "aws:kms without kms_key_id",
        '[offsite]\nsse = "aws:kms"\n',
        "offsite.kms_key_id",
        "needs a key id",
    ),
    (
        "negative object lock",
        "[offsite]\nobject_lock_days = -1\n",
        "offsite.object_lock_days",
        "negative",
    ),
    (
        "negative upload rate",
        "[offsite]\nmax_upload_rate = -1\n",
        "offsite.max_upload_rate",
        "negative",
    ),
    (
        "upload rate not an integer",
        "[offsite]\nmax_upload_rate = 1.5\n",
        "offsite.max_upload_rate",
        "expected integer",
    ),
    (
        "upload rate as a string",
        '[offsite]\nmax_upload_rate = "10M"\n',
        "offsite.max_upload_rate",
        "expected integer",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [pytest.param(text, key, fragment, id=case) for case, text, key, fragment in RULES],
)
def test_every_rule_names_its_key(text: str, key: str, fragment: str) -> None:
    err = error_for(text)
    assert err.key == key, str(err)
    assert str(err).startswith(f"config: {key}: "), str(err)
    assert fragment in str(err)
    assert exit_code(err) == 2


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(PG + 'format = "directory"\njobs = 8\n', id="jobs-directory"),
        pytest.param(PG + "jobs = 2\n", id="jobs-custom-ignored"),
        pytest.param(PG + 'format = "plain"\njobs = 4\n', id="jobs-plain-ignored"),
        pytest.param('[compression]\nalgorithm = "none"\nlevel = 50\n', id="level-ignored-none"),
        pytest.param('[compression]\nalgorithm = "gzip"\nlevel = 9\n', id="gzip-9"),
        pytest.param("[compression]\nlevel = 19\nthreads = 4\n", id="zstd-19"),
        pytest.param('[offsite]\nsse = "aws:kms"\nkms_key_id = "alias/x"\n', id="kms-with-key"),
        pytest.param(
            '[encryption]\nmode = "gpg-symmetric"\npassphrase_file = "/etc/p"\n', id="symmetric"
        ),
        pytest.param("[repository]\nlock_wait_seconds = 5\n", id="int-for-float"),
        pytest.param(
            PG.replace("postgresql://app@h/app", "host=/run/postgresql dbname=app user=app"),
            id="dsn-key-value",
        ),
        pytest.param(PG.replace("app@h", "app:@h"), id="dsn-empty-password"),
        pytest.param(LITE + FILES + PG, id="three-types"),
    ],
)
def test_valid_edges_are_accepted(text: str) -> None:
    parse(toml(text))


def test_lock_wait_seconds_int_becomes_float() -> None:
    cfg = parse(toml("[repository]\nlock_wait_seconds = 5\n"))
    assert cfg.repository.lock_wait_seconds == 5.0
    assert isinstance(cfg.repository.lock_wait_seconds, float)


def test_targets_keep_their_order_and_type() -> None:
    cfg = parse(toml(FILES + LITE + PG))
    assert [type(t) for t in cfg.targets] == [FilesTarget, SqliteTarget, PostgresTarget]
    assert [t.name for t in cfg.targets] == ["media", "lite", "db"]


# --------------------------------------------------------------------------- loading


def test_load_sets_the_source(tmp_path: Path) -> None:
    path = tmp_path / "pyops.toml"
    path.write_text(LITE)
    cfg = load(path)
    assert cfg.source == path
    assert cfg.targets[0].name == "lite"


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == str(path)
    assert "pyops init" in str(info.value)


def test_load_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pyops.toml"
    path.write_text("[repository\npath = 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == str(path)
    assert "not valid TOML" in str(info.value)


def test_load_reports_rule_errors_with_the_key(tmp_path: Path) -> None:
    path = tmp_path / "pyops.toml"
    path.write_text("[compression]\nlevel = 42\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == "compression.level"


# --------------------------------------------------------------------------- find_config


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYOPS_CONFIG", raising=False)
    return tmp_path


def test_explicit_config_wins_over_everything(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cwd / "pyops.toml").write_text("")
    monkeypatch.setenv("PYOPS_CONFIG", "/from/env.toml")
    assert find_config("/explicit.toml") == Path("/explicit.toml")


def test_explicit_config_need_not_exist(cwd: Path) -> None:
    assert find_config("does-not-exist.toml") == Path("does-not-exist.toml")


def test_env_wins_over_the_working_directory(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cwd / "pyops.toml").write_text("")
    monkeypatch.setenv("PYOPS_CONFIG", "/from/env.toml")
    assert find_config(None) == Path("/from/env.toml")


def test_empty_env_is_ignored(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cwd / "pyops.toml").write_text("")
    monkeypatch.setenv("PYOPS_CONFIG", "")
    assert find_config(None) == Path("pyops.toml")


def test_working_directory_file_when_present(cwd: Path) -> None:
    (cwd / "pyops.toml").write_text("")
    found = find_config(None)
    assert found == Path("pyops.toml")
    assert found.resolve() == (cwd / "pyops.toml").resolve()


def test_fallback_when_nothing_exists(cwd: Path) -> None:
    etc = Path("/etc/pyops/pyops.toml")
    expected = etc if etc.exists() else Path("pyops.toml")
    assert find_config(None) == expected


def test_config_show_redacts_passwords_in_urls() -> None:
    cfg = parse(
        toml(
            '[health]\nredis = ["redis://:hunter2@127.0.0.1:6379/0"]\n'
            'http = ["https://user:hunter2@example.org/health/"]\n'
        )
    )
    assert "hunter2" not in repr(config.as_data(cfg))
