"""gpg_key with real GnuPG homes: keys that work, expire soon, have expired, are
missing, or cannot open the newest backup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.gpgkeys import (
    GpgKey,
    cleanup_home,
    generate_key,
    gpg,
    make_gnupghome,
    public_only_home,
)
from health_support import Env, one, q


def _encryption(key: GpgKey, passphrase_file: Path | None = None) -> str:
    body = (
        f'[encryption]\nmode = "gpg-public"\nrecipients = [{q(key.email)}]\n'
        f"gnupghome = {q(key.gnupghome)}\n"
    )
    if passphrase_file:
        body += f"passphrase_file = {q(passphrase_file)}\n"
    return body


@pytest.fixture
def home() -> Iterator[Path]:
    path = make_gnupghome()
    try:
        yield path
    finally:
        cleanup_home(path)


def _key(home: Path, email: str, expire: str, *faked: str) -> None:
    gpg(
        home,
        [
            *faked,
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            f"t <{email}>",
            "future-default",
            "default",
            expire,
        ],
    )


def test_working_key_decrypts_the_newest_backup(env: Env, gpg_home: GpgKey) -> None:
    env.write(env.sqlite() + _encryption(gpg_home))
    rc, out, err = env.pyops("backup", "--format", "json")
    assert rc == 0, err
    backup_id = json.loads(out)["backups"][0]["id"]
    result = one(env.config, "gpg_key")
    assert result.status == "ok", result.message
    assert "never expires" in result.message
    assert f"canary and the first blocks of {backup_id} decrypt" in result.message


def test_public_key_only_host(env: Env, gpg_home: GpgKey) -> None:
    public = public_only_home(gpg_home)
    try:
        env.write(env.sqlite() + _encryption(public))
        result = one(env.config, "gpg_key")
    finally:
        cleanup_home(public.gnupghome)
    assert result.status == "ok", result.message
    assert "canary encrypts; no secret key on this host: decryption not tested" in result.message


def test_key_expiring_soon_warns_and_expired_is_critical(env: Env, home: Path) -> None:
    _key(home, "soon@example.invalid", "10d")
    env.write(
        env.sqlite() + f'[encryption]\nmode = "gpg-public"\nrecipients = ["soon@example.invalid"]\n'
        f"gnupghome = {q(home)}\n"
    )
    result = one(env.config, "gpg_key")
    assert result.status == "warning", result.message
    assert "expires in 10 days" in result.message
    assert 9.9 < result.metrics["soon@example.invalid.days_left"] <= 10
    assert "canary decrypts; no encrypted backup yet" in result.message

    _key(home, "old@example.invalid", "1d", "--faked-system-time", "20200101T000000")
    env.write(
        env.sqlite() + f'[encryption]\nmode = "gpg-public"\nrecipients = ["old@example.invalid"]\n'
        f"gnupghome = {q(home)}\n"
    )
    rc, out, _ = env.pyops("health", "--check", "gpg_key")
    assert rc == 2, out
    assert "CRITICAL  gpg_key  recipient 'old@example.invalid'" in out and "expired" in out


def test_missing_recipient_is_critical(env: Env, gpg_home: GpgKey) -> None:
    env.write(
        env.sqlite()
        + f'[encryption]\nmode = "gpg-public"\nrecipients = ["nobody@example.invalid"]\n'
        f"gnupghome = {q(gpg_home.gnupghome)}\n"
    )
    result = one(env.config, "gpg_key")
    assert result.status == "critical"
    assert result.message == "recipient 'nobody@example.invalid': no such key in the GnuPG home"


def test_backup_the_keys_cannot_open_is_critical(env: Env, gpg_home: GpgKey) -> None:
    env.write(env.sqlite() + _encryption(gpg_home))
    rc, out, err = env.pyops("backup", "--format", "json")
    assert rc == 0, err
    backup_id = json.loads(out)["backups"][0]["id"]
    other = generate_key()  # the old key was lost; a new one is configured
    try:
        env.write(env.sqlite() + _encryption(other))
        result = one(env.config, "gpg_key")
    finally:
        cleanup_home(other.gnupghome)
    assert result.status == "critical", result.message
    assert f"cannot decrypt {backup_id}: the secret key is not in" in result.message


def test_protected_key_without_passphrase_warns(env: Env, gpg_home_protected: GpgKey) -> None:
    env.write(env.sqlite() + _encryption(gpg_home_protected))
    result = one(env.config, "gpg_key")
    assert result.status == "warning", result.message
    assert "encryption.passphrase_file" in result.message
    secret = env.root / "passphrase"
    secret.write_text(str(gpg_home_protected.passphrase))
    secret.chmod(0o600)
    env.write(env.sqlite() + _encryption(gpg_home_protected, secret))
    result = one(env.config, "gpg_key")
    assert result.status == "ok", result.message
    assert "canary decrypts" in result.message


def test_symmetric_passphrase_changed_since_the_backup(env: Env, home: Path) -> None:
    secret = env.root / "passphrase"
    secret.write_text("first passphrase")
    secret.chmod(0o600)
    body = (
        env.sqlite() + f'[encryption]\nmode = "gpg-symmetric"\ngnupghome = {q(home)}\n'
        f"passphrase_file = {q(secret)}\n"
    )
    env.write(body)
    rc, out, err = env.pyops("backup", "--format", "json")
    assert rc == 0, err
    backup_id = json.loads(out)["backups"][0]["id"]
    result = one(env.config, "gpg_key")
    assert result.status == "ok", result.message
    assert f"canary and the first blocks of {backup_id} decrypt" in result.message

    secret.write_text("another passphrase")
    result = one(env.config, "gpg_key")
    assert result.status == "critical", result.message
    assert f"cannot decrypt {backup_id}: wrong passphrase (encryption.passphrase_file" in (
        result.message
    )
