"""Issue 10, row 10: one gpg layer judges recipient keys for backup, verify, restore
and health. A recipient must have a usable encryption subkey; revoked and expired
are told apart; gpg never looks a key up on the network.

Real gpg keys made for the test (an encryption subkey that expired in 2020 via
--faked-system-time, a key revoked with its own revocation certificate, a
signing-only key), the real `pyops` CLI, and no gpg daemon left behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.gpgkeys import (
    GpgKey,
    add_encryption_subkey,
    daemons_for,
    expired_key,
    generate_key,
    key_with_expired_encryption_subkey,
    private_home,
    revoke_key,
    sign_only_key,
)
from integration_helpers import Pyops, make_sample_db, output, sqlite_target

from pyops import execute
from pyops.tools import gpg


@pytest.fixture
def home() -> Iterator[Path]:
    with private_home() as path:
        yield path


def encryption(recipient: str, home: Path) -> str:
    return (
        f'[encryption]\nmode = "gpg-public"\nrecipients = [{json.dumps(recipient)}]\n'
        f"gnupghome = {json.dumps(str(home))}\n"
    )


def sqlite_config(pyops: Pyops, recipient: str, home: Path) -> Path:
    db = pyops.root / "app.sqlite3"
    make_sample_db(db, rows=20)
    pyops.write(encryption(recipient, home) + sqlite_target("app", db))
    return db


def artifacts(pyops: Pyops) -> list[Path]:
    return [p for p in pyops.repo.rglob("*") if p.is_file() and p.parent.parent != pyops.repo]


def refused(pyops: Pyops, key: GpgKey) -> str:
    """Run a backup that must be refused for `key`; what it said."""
    proc = pyops.run("backup")
    assert proc.returncode == 1, output(proc)
    said = proc.stdout + proc.stderr
    assert f"gpg recipient key '{key.email}' ({key.fingerprint[-16:]})" in said, output(proc)
    assert not any(a.name.startswith("app.") for a in artifacts(pyops)), output(proc)
    return said


def test_an_expired_encryption_subkey_is_refused_before_pg_dump_starts(
    pyops: Pyops, home: Path
) -> None:
    key = key_with_expired_encryption_subkey(home)
    # nothing listens on port 1: had pyops contacted PostgreSQL or started pg_dump
    # before judging the key, the error would be about the server
    pyops.write(
        encryption(key.email, home) + '[[targets]]\nname = "app-db"\ntype = "postgres"\n'
        'dsn = "postgresql://app@127.0.0.1:1/app"\n'
    )

    proc = pyops.run("-v", "backup")

    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, output(proc)
    assert (
        f"gpg recipient key '{key.email}' ({key.fingerprint[-16:]}) cannot encrypt: "
        "its encryption subkey" in said
    ), output(proc)
    assert "expired on 2020-01-02" in said, output(proc)
    assert f"gpg --quick-set-expire {key.fingerprint} 2y '*'" in said, output(proc)
    assert "run pg_dump" not in said and "PostgreSQL" not in said, output(proc)
    assert "WKD" not in said, output(proc)
    assert not list(pyops.repo.glob("app-db/*/*")), output(proc)


def test_a_signing_only_key_is_refused(pyops: Pyops, home: Path) -> None:
    key = sign_only_key(home)
    sqlite_config(pyops, key.email, home)

    said = refused(pyops, key)

    assert "cannot encrypt: it has no encryption subkey (a signing-only key)" in said
    assert f"gpg --quick-add-key {key.fingerprint} cv25519 encr 2y" in said


def test_a_revoked_key_is_revoked_not_expired(pyops: Pyops, home: Path) -> None:
    key = generate_key(home=home)
    revoke_key(key)
    sqlite_config(pyops, key.fingerprint, home)

    proc = pyops.run("backup")

    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, output(proc)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert (
        f"gpg recipient key '{key.fingerprint}' ({key.fingerprint[-16:]}) is revoked "
        f"(since {today}): a revoked key never encrypts again: configure a new recipient"
    ) in said, output(proc)
    assert "expire" not in said, output(proc)


def test_an_expired_key_says_when(pyops: Pyops, home: Path) -> None:
    key = expired_key(home)
    sqlite_config(pyops, key.email, home)

    said = refused(pyops, key)

    assert (
        "expired on 2020-01-02: extend it (gpg --quick-set-expire) or configure a new recipient"
    ) in said
    assert "revoked" not in said


def test_a_fresh_encryption_subkey_beside_an_expired_one_is_used(pyops: Pyops, home: Path) -> None:
    key = key_with_expired_encryption_subkey(home)
    add_encryption_subkey(key)
    sqlite_config(pyops, key.email, home)

    bid = pyops.backup("app")

    assert pyops.manifest(bid)["encryption"]["recipients"] == [key.fingerprint]
    proc = pyops.run("verify", "--deep", bid)
    assert proc.returncode == 0, output(proc)


def test_an_address_that_matches_two_usable_keys_is_refused(pyops: Pyops, home: Path) -> None:
    first = generate_key(home=home, email="backup@example.invalid")
    second = generate_key(home=home, name="pyops new", email="backup@example.invalid")
    db = sqlite_config(pyops, "backup@example.invalid", home)

    proc = pyops.run("backup")

    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, output(proc)
    assert "matches 2 usable keys" in said, output(proc)
    assert first.fingerprint in said and second.fingerprint in said, output(proc)
    assert "name one by fingerprint in encryption.recipients" in said, output(proc)

    pyops.write(encryption(second.fingerprint, home) + sqlite_target("app", db))
    bid = pyops.backup("app")
    assert pyops.manifest(bid)["encryption"]["recipients"] == [second.fingerprint]


def test_an_unknown_recipient_is_never_looked_up_on_the_network(pyops: Pyops, home: Path) -> None:
    # the operator's gpg.conf asks for every network lookup there is
    (home / "gpg.conf").write_text(
        "auto-key-locate wkd,keyserver,local\nauto-key-retrieve\n"
        "keyserver hkps://keys.openpgp.org\n"
    )
    key = generate_key(home=home)
    sqlite_config(pyops, "someone@example.org", home)

    backup = pyops.run("backup")
    health = pyops.run("health", "--check", "gpg_key")

    assert backup.returncode == 1, output(backup)
    assert "gpg recipient key 'someone@example.org' not found in" in backup.stderr, output(backup)
    assert health.returncode == 2, output(health)
    assert "recipient 'someone@example.org': no such key in the GnuPG home" in health.stdout
    # the whole cycle with a present key, under the same gpg.conf
    pyops.write(
        encryption(key.fingerprint, home) + sqlite_target("app", pyops.root / "app.sqlite3")
    )
    bid = pyops.backup("app")
    for args in (("verify", "--deep", bid), ("restore", bid, "--yes"), ("health",)):
        proc = pyops.run(*args, "--check", "gpg_key") if args == ("health",) else pyops.run(*args)
        assert proc.returncode == 0, output(proc)
    assert daemons_for(home, "dirmngr") == [], "gpg started dirmngr: a network lookup"


def test_the_data_path_gpg_itself_does_not_try_wkd(home: Path) -> None:
    """pyops' own encrypt stage, given an address with no key: gpg says "No public
    key" at once; without the offline options it starts dirmngr and tries WKD."""
    stage = gpg.encrypt_public(home, ["nobody@example.org"])

    result = execute.run_quiet(stage, stdin_bytes=b"data", check=False)

    assert result.returncode != 0
    assert "No public key" in result.stderr, result.stderr
    assert "WKD" not in result.stderr, result.stderr
    assert daemons_for(home, "dirmngr") == []
