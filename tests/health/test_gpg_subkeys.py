"""gpg_key judges the encryption subkey, as backup does (issue 10, row 10): through
the real CLI, with real keys whose encryption subkey expired, that were revoked,
that can only sign, or whose encryption subkey (not the primary) expires soon."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.gpgkeys import (
    GpgKey,
    add_encryption_subkey,
    generate_key,
    key_with_expired_encryption_subkey,
    private_home,
    revoke_key,
    sign_only_key,
)
from health_support import Env, q


@pytest.fixture
def home() -> Iterator[Path]:
    with private_home() as path:
        yield path


def gpg_key(env: Env, key: GpgKey) -> tuple[int, dict[str, Any]]:
    env.write(
        env.sqlite() + f'[encryption]\nmode = "gpg-public"\nrecipients = [{q(key.email)}]\n'
        f"gnupghome = {q(key.gnupghome)}\n"
    )
    rc, out, _ = env.pyops("health", "--check", "gpg_key", "--format", "json")
    (result,) = json.loads(out)["checks"]
    return rc, result


def test_an_expired_encryption_subkey_is_critical(env: Env, home: Path) -> None:
    key = key_with_expired_encryption_subkey(home)

    rc, result = gpg_key(env, key)

    assert rc == 2, result
    assert result["status"] == "critical"
    assert (
        f"recipient '{key.email}' ({key.fingerprint[-16:]}): cannot encrypt: "
        in (result["message"])
    )
    assert "expired on 2020-01-02" in result["message"]
    assert "canary" not in result["message"]  # refused before any gpg encrypt


def test_a_signing_only_key_is_critical(env: Env, home: Path) -> None:
    key = sign_only_key(home)

    rc, result = gpg_key(env, key)

    assert rc == 2, result
    assert "cannot encrypt: it has no encryption subkey (a signing-only key)" in (result["message"])


def test_a_revoked_key_is_revoked_not_expired(env: Env, home: Path) -> None:
    key = generate_key(home=home)
    revoke_key(key)

    rc, result = gpg_key(env, key)

    assert rc == 2, result
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"is revoked (since {today})" in result["message"], result
    assert "expire" not in result["message"], result


def test_the_encryption_subkey_expiring_soon_warns_though_the_primary_never_expires(
    env: Env, home: Path
) -> None:
    key = key_with_expired_encryption_subkey(home)
    add_encryption_subkey(key, "10d")

    rc, result = gpg_key(env, key)

    assert rc == 1, result
    assert result["status"] == "warning"
    assert "expires in 10 days" in result["message"]
    assert 9.9 < result["metrics"][f"{key.email}.days_left"] <= 10
    assert "canary decrypts" in result["message"]
