"""Issue 10, row 11: the configured passphrase is what is tested, whatever gpg-agent
caches. A wrong `passphrase_file` fails `verify --deep`, `drill`, `restore` and
`health` even while the agent remembers the right passphrase from an earlier run,
and with a cold agent it is reported as a wrong passphrase, not as a missing key.

The GnuPG homes here let the agent cache passphrases (as a real one does, 10
minutes by default); each test warms the agent the way an operator would, by
decrypting once by hand, and checks that the agent really caches it first."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.gpgkeys import (
    GpgKey,
    agent_running,
    cached_keygrips,
    cleanup_home,
    daemons_for,
    generate_key,
    kill_agent,
    make_gnupghome,
    warm_agent,
)
from integration_helpers import (
    Pyops,
    make_sample_db,
    output,
    passphrase_file,
    row_counts,
    sqlite_target,
)

RIGHT = "the right passphrase 42"


@pytest.fixture
def key() -> Iterator[GpgKey]:
    """A passphrase-protected key in a home whose agent caches passphrases."""
    home = make_gnupghome(cache_passphrases=True)
    try:
        yield generate_key(RIGHT, home=home)
    finally:
        cleanup_home(home)
        assert daemons_for(home) == [], "a gpg daemon outlived the test"


def public_backup(pyops: Pyops, key: GpgKey) -> tuple[Path, Path, str]:
    """(live db, passphrase file, backup id) of a gpg-public backup whose secret key
    and passphrase are on this host."""
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=50)
    secret = passphrase_file(pyops.root, RIGHT)
    pyops.write(
        f'[encryption]\nmode = "gpg-public"\nrecipients = ["{key.fingerprint}"]\n'
        f'gnupghome = "{key.gnupghome}"\npassphrase_file = "{secret}"\n' + sqlite_target("app", db)
    )
    return db, secret, pyops.backup("app")


def said(proc: object) -> str:
    return str(getattr(proc, "stdout", "")) + str(getattr(proc, "stderr", ""))


def test_a_wrong_passphrase_file_fails_although_the_agent_caches_the_right_one(
    pyops: Pyops, key: GpgKey
) -> None:
    db, secret, bid = public_backup(pyops, key)
    assert pyops.run("verify", "--deep", bid).returncode == 0
    secret.write_text("not the passphrase\n")
    counts = row_counts(db)
    wrong = f"cannot decrypt {bid}: wrong passphrase (encryption.passphrase_file = {secret})"

    for args in (("verify", "--deep", bid), ("restore", bid, "--yes"), ("drill",)):
        warm_agent(key, RIGHT)
        assert cached_keygrips(key.gnupghome), "the agent does not cache: the test proves nothing"

        proc = pyops.run(*args)

        assert proc.returncode == 1, output(proc)
        assert wrong in said(proc), output(proc)
        assert "missing, or" not in said(proc), output(proc)

    assert row_counts(db) == counts
    assert not (pyops.repo / "app" / "pre-restore").exists()


def test_health_tests_the_configured_passphrase_not_the_cached_one(
    pyops: Pyops, key: GpgKey
) -> None:
    _, secret, _ = public_backup(pyops, key)
    secret.write_text("not the passphrase\n")
    warm_agent(key, RIGHT)
    assert cached_keygrips(key.gnupghome)

    proc = pyops.run("health", "--check", "gpg_key", "--format", "json")

    assert proc.returncode == 2, output(proc)
    (result,) = json.loads(proc.stdout)["checks"]
    assert result["status"] == "critical", result
    assert (
        f"cannot decrypt the canary: wrong passphrase (encryption.passphrase_file = {secret})"
        in (result["message"])
    )


def test_with_a_cold_agent_a_wrong_passphrase_is_called_wrong(pyops: Pyops, key: GpgKey) -> None:
    _, secret, bid = public_backup(pyops, key)
    secret.write_text("not the passphrase\n")
    kill_agent(key.gnupghome)
    assert not agent_running(key.gnupghome)

    for args in (("verify", "--deep", bid), ("restore", bid, "--yes")):
        proc = pyops.run(*args)

        assert proc.returncode == 1, output(proc)
        assert f"cannot decrypt {bid}: wrong passphrase (encryption.passphrase_file" in said(proc)
        assert "secret key" not in said(proc), output(proc)


def test_an_empty_passphrase_file_is_called_empty(pyops: Pyops, key: GpgKey) -> None:
    _, secret, bid = public_backup(pyops, key)
    secret.write_text("")

    proc = pyops.run("verify", "--deep", bid)

    assert proc.returncode == 1, output(proc)
    assert f"wrong passphrase (encryption.passphrase_file = {secret} is empty)" in said(proc)


def test_pyops_leaves_no_passphrase_cached_behind(pyops: Pyops, key: GpgKey) -> None:
    _, _, bid = public_backup(pyops, key)
    warm_agent(key, RIGHT)
    assert cached_keygrips(key.gnupghome)

    for args in (("verify", "--deep", bid), ("restore", bid, "--yes"), ("drill",)):
        proc = pyops.run(*args)

        assert proc.returncode == 0, output(proc)
        assert cached_keygrips(key.gnupghome) == set(), args


def test_without_a_passphrase_file_the_agent_is_left_alone(pyops: Pyops, key: GpgKey) -> None:
    """No passphrase configured: an agent the operator primed is how restores work,
    so pyops neither clears it nor needs it cleared."""
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=10)
    pyops.write(
        f'[encryption]\nmode = "gpg-public"\nrecipients = ["{key.fingerprint}"]\n'
        f'gnupghome = "{key.gnupghome}"\n' + sqlite_target("app", db)
    )
    bid = pyops.backup("app")
    warm_agent(key, RIGHT)
    cached = cached_keygrips(key.gnupghome)
    assert cached

    proc = pyops.run("verify", "--deep", bid)

    assert proc.returncode == 0, output(proc)
    assert cached_keygrips(key.gnupghome) == cached


def test_symmetric_wrong_passphrase_fails_verify_drill_and_restore(
    pyops: Pyops, key: GpgKey
) -> None:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=10)
    secret = passphrase_file(pyops.root, RIGHT)
    pyops.write(
        f'[encryption]\nmode = "gpg-symmetric"\ngnupghome = "{key.gnupghome}"\n'
        f'passphrase_file = "{secret}"\n' + sqlite_target("app", db)
    )
    bid = pyops.backup("app")
    assert pyops.run("verify", "--deep", bid).returncode == 0
    secret.write_text("not the passphrase\n")

    for args in (("verify", "--deep", bid), ("drill",), ("restore", bid, "--yes")):
        proc = pyops.run(*args)

        assert proc.returncode == 1, output(proc)
        assert f"cannot decrypt {bid}: wrong passphrase" in said(proc), output(proc)
