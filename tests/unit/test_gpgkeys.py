"""pyops.gpgkeys without gpg: the colon listing (records copied from gpg 2.2.40) and
the verdicts and status codes read from it. The real keys are in
tests/integration/test_gpg_keys.py and tests/health/test_gpg_subkeys.py."""

from __future__ import annotations

from pyops import gpgkeys

NOW = 1_795_971_900.0  # 2026-11-29

GOOD = """\
pub:u:255:22:C0013D12CE0E3521:1795971769:::u:::scESC:::::ed25519:::0:
fpr:::::::::53ADF407831AF83A4C3EC373C0013D12CE0E3521:
grp:::::::::D15080E3C93E41C1474F52C4E2CDB6E3877B44BC:
uid:u::::1795971769::D1B6::ok \\x3a colon <ok@x.invalid>::::::::::0:
sub:u:255:18:051608B7EFE9D2FA:1795971769:1859043769:::::e:::::cv25519::
fpr:::::::::5528D1BAF3E2EBC8E9A5F30D051608B7EFE9D2FA:
grp:::::::::57BD3395AA04F02AA0C34A86450783742AD5C3AE:
"""

SIGN_ONLY = """\
pub:-:255:22:C0D3F0CF85B86AED:1795971774:::u:::scSC:::::ed25519:::0:
fpr:::::::::CDD51A5656B8982585FC8C3BC0D3F0CF85B86AED:
uid:-::::1795971774::2782::signonly <so@x.invalid>::::::::::0:
"""

EXPIRED_SUBKEY = """\
pub:-:255:22:7D931865D76BF5D3:1577836800:::u:::scSC:::::ed25519:::0:
fpr:::::::::02DE0F43F7F30553F0EA4D497D931865D76BF5D3:
uid:-::::1577836800::3170::expsub2 <es2@x.invalid>::::::::::0:
sub:e:255:18:8E0FBBB80241C13A:1577836860:1577923260:::::e:::::cv25519::
fpr:::::::::116E84787511F3494299035F8E0FBBB80241C13A:
"""

REVOKED = """\
pub:r:255:22:ED7620E8C5AB25E6:1795971779:::-:::sc:::::ed25519:::0:
fpr:::::::::1337129C94CB168413CFCB80ED7620E8C5AB25E6:
rev:::22:ED7620E8C5AB25E6:1795971782::::rev <rev@x.invalid>:20x,02::1337:::8:
uid:r::::1795971779::51F2::rev <rev@x.invalid>::::::::::0:
sig:::22:ED7620E8C5AB25E6:1795971779::::rev <rev@x.invalid>:13x::1337:::8:
sub:r:255:18:5EEC8593D46C1C90:1795971779::::::e:::::cv25519::
fpr:::::::::E9A5B5FAE831E7EF0520D2055EEC8593D46C1C90:
"""

UID_REVOKED_ONLY = """\
pub:u:255:22:C0013D12CE0E3521:1795971769:::u:::scESC:::::ed25519:::0:
fpr:::::::::53ADF407831AF83A4C3EC373C0013D12CE0E3521:
uid:r::::1795971769::D1B6::old <old@x.invalid>::::::::::0:
rev:::22:C0013D12CE0E3521:1795971782::::old <old@x.invalid>:30x,00::5:::8:
sub:u:255:18:051608B7EFE9D2FA:1795971769::::::e:::::cv25519::
"""


def one(text: str) -> gpgkeys.Key:
    (key,) = gpgkeys.parse_colons(text)
    return key


def test_parse_a_good_key() -> None:
    key = one(GOOD)
    assert key.fingerprint == "53ADF407831AF83A4C3EC373C0013D12CE0E3521"
    assert key.uids == ["ok : colon <ok@x.invalid>"]
    (sub,) = key.subkeys
    assert sub.fingerprint.endswith(sub.keyid)
    assert sub.keygrip == "57BD3395AA04F02AA0C34A86450783742AD5C3AE"
    assert sub.encrypts and sub.expires == 1859043769.0
    verdict = gpgkeys.verdict(key, NOW)
    assert verdict.usable and verdict.ends == 1859043769.0


def test_a_signing_only_key_cannot_encrypt() -> None:
    verdict = gpgkeys.verdict(one(SIGN_ONLY), NOW)
    assert not verdict.usable
    assert verdict.problem == "cannot encrypt: it has no encryption subkey (a signing-only key)"
    assert "gpg --quick-add-key CDD51A5656B8982585FC8C3BC0D3F0CF85B86AED cv25519 encr" in (
        verdict.fix
    )


def test_an_expired_encryption_subkey_says_which_and_when() -> None:
    verdict = gpgkeys.verdict(one(EXPIRED_SUBKEY), NOW)
    assert not verdict.usable
    assert (
        verdict.problem
        == "cannot encrypt: its encryption subkey 8E0FBBB80241C13A expired on 2020-01-02"
    )


def test_a_revoked_key_is_revoked_with_date_and_reason_never_expired() -> None:
    verdict = gpgkeys.verdict(one(REVOKED), NOW)
    assert not verdict.usable
    assert verdict.problem == "is revoked (since 2026-11-29, key compromised)"
    assert "expire" not in verdict.problem + verdict.fix


def test_a_revoked_user_id_does_not_revoke_the_key() -> None:
    key = one(UID_REVOKED_ONLY)
    assert key.primary.revoked_on is None
    assert gpgkeys.verdict(key, NOW).usable


def test_a_key_gpg_lists_without_usable_encryption_is_not_trusted_to_encrypt() -> None:
    # the subkey looks fine to us, but gpg's whole-key capabilities lack "E"
    text = GOOD.replace(":scESC:", ":scSC:")
    assert not gpgkeys.verdict(one(text), NOW).usable


def test_status_codes_of_gpg() -> None:
    status = (
        "[GNUPG:] ERROR pkdecrypt_failed 67108875\n"  # agent source, GPG_ERR_BAD_PASSPHRASE
        "[GNUPG:] ERROR symkey_decrypt.maybe_error 11_BAD_PASSPHRASE\n"
        "[GNUPG:] ERROR get_passphrase 85\n"
        "[GNUPG:] ERROR pkdecrypt_failed 67109041\n"  # GPG_ERR_NO_PASSPHRASE
    )
    assert gpgkeys._codes(status) == {
        gpgkeys.BAD_PASSPHRASE,
        gpgkeys.NO_PIN_ENTRY,
        gpgkeys.NO_PASSPHRASE,
    }
