"""gpg_key: the recipient keys exist and do not expire soon, and they really work:
a small canary is encrypted with the gpg CLI exactly as backups are, and where
this host can decrypt (secret key, passphrase) the canary and the first blocks of
the newest encrypted backup are decrypted too."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

from pyops import execute
from pyops.codec import passphrase_fd
from pyops.config import EncryptionConfig
from pyops.errors import PyopsError
from pyops.execute import PIPE, Stage
from pyops.health.context import Context
from pyops.health.result import Part, Result, Status, combine
from pyops.tools import gpg

CANARY = b"pyops health canary: if you can read this, the keys work\n"
HEAD = 1 << 16


def _gpg(enc: EncryptionConfig) -> Any:
    import gnupg

    home = enc.gnupghome
    if home is not None and not home.is_dir():
        raise PyopsError(f"encryption.gnupghome {home} does not exist: create it and import keys")
    return gnupg.GPG(gnupghome=str(home) if home else None)


def _expiry(key: dict[str, Any]) -> tuple[float | None, bool]:
    """(when the key stops encrypting, None = never; whether it can encrypt now)."""
    now = time.time()
    primary = float(key["expires"]) if key.get("expires") else None
    usable: list[float | None] = []
    for info in (key.get("subkey_info") or {}).values():
        if "e" not in str(info.get("cap", "")) or info.get("trust") in ("e", "r"):
            continue
        expires = float(info["expires"]) if info.get("expires") else None
        if expires is None or expires > now:
            usable.append(expires)
    if not usable:
        return primary, False
    sub = None if None in usable else max(e for e in usable if e is not None)
    ends = [e for e in (primary, sub) if e is not None]
    return (min(ends) if ends else None), True


def recipient_part(ctx: Context, handle: Any, recipient: str) -> Part:
    keys = handle.list_keys(keys=[recipient])
    if not keys:
        return Part("critical", f"recipient {recipient!r}: no such key in the GnuPG home")
    key = keys[0]
    fpr = str(key["fingerprint"])
    if key.get("trust") == "r":
        return Part("critical", f"recipient {recipient!r} ({fpr[-16:]}): revoked")
    ends, usable = _expiry(key)
    days = (ends - ctx.now.timestamp()) / 86400 if ends is not None else None
    metrics = {f"{recipient}.days_left": round(days, 2)} if days is not None else {}
    label = f"recipient {recipient!r} ({fpr[-16:]})"
    if (days is not None and days <= 0) or key.get("trust") == "e":
        return Part("critical", f"{label}: expired: extend it (gpg --quick-set-expire)", metrics)
    if not usable:
        return Part("critical", f"{label}: no valid encryption subkey", metrics)
    if days is None:
        return Part("ok", f"{label}: never expires", metrics)
    status: Status = "warning" if days < ctx.cfg.gpg_expiry_warn_days else "ok"
    return Part(status, f"{label}: expires in {days:.0f} days", metrics)


def _run_bytes(stage: Stage, data: bytes) -> bytes:
    """Feed `data` to one gpg stage and collect its (small) binary output."""
    out: list[bytes] = []
    with execute.pipeline([stage], stdin=PIPE, stdout=PIPE) as running:
        join = execute.in_thread(lambda: running.feed([data]))
        out.extend(running.chunks())
        join()
    return b"".join(out)


def encrypt_canary(enc: EncryptionConfig) -> bytes:
    if enc.mode == "gpg-public":
        return _run_bytes(gpg.encrypt_public(enc.gnupghome, enc.recipients), CANARY)
    assert enc.passphrase_file is not None
    with passphrase_fd(enc.passphrase_file) as fd:
        return _run_bytes(gpg.encrypt_symmetric(enc.gnupghome, fd), CANARY)


def _newest_encrypted(ctx: Context) -> tuple[str, bytes] | None:
    """(id, first bytes) of the newest encrypted backup whose artifact is there."""
    local = ctx.app.local()
    for backup in local.backups():
        if backup.manifest.encrypted and local.store.stat(backup.artifact_key) is not None:
            return backup.id, local.head(backup, HEAD)
    return None


class CannotDecrypt(PyopsError):
    """The host holds a secret key but cannot open the data with it."""

    def __init__(self, message: str, passphrase: bool) -> None:
        super().__init__(message)
        self.passphrase = passphrase  # the passphrase, not the key, is what is missing


def _secret_ids(handle: Any) -> set[str]:
    ids: set[str] = set()
    for key in handle.list_keys(secret=True):
        ids.add(str(key.get("keyid", "")))
        ids.update(str(sub[0]) for sub in key.get("subkeys") or [])
    return ids


def probe(enc: EncryptionConfig, handle: Any, data: bytes, what: str) -> None:
    """Decrypt the start of `data` to /dev/null. Success is gpg reaching the plaintext
    (PLAINTEXT): BEGIN_DECRYPTION and even DECRYPTION_INFO are printed when no secret
    key matches or the passphrase is wrong, so Codec.probe_decrypt (which trusts
    BEGIN_DECRYPTION) cannot be relied on here. Without a passphrase file gpg must
    not pop up a pinentry on the operator's terminal."""
    holder = passphrase_fd(enc.passphrase_file) if enc.passphrase_file else nullcontext(None)
    with holder as fd:
        stage = gpg.decrypt(enc.gnupghome, fd, status_fd=1, output="/dev/null")
        if fd is None:
            argv = (stage.argv[0], "--pinentry-mode", "error", *stage.argv[1:])
            stage = replace(stage, argv=argv)
        result = execute.run_quiet(stage, stdin_bytes=data, check=False)
    status, err = result.stdout, result.stderr
    reached = any(m in status for m in ("[GNUPG:] PLAINTEXT", "DECRYPTION_OKAY"))
    if reached and "BAD_PASSPHRASE" not in status:
        return
    where = enc.gnupghome or "the default GnuPG home"
    lines = status.splitlines()
    wanted = {ln.split()[2] for ln in lines if ln.startswith("[GNUPG:] ENC_TO ")}
    if wanted and not wanted & _secret_ids(handle):
        raise CannotDecrypt(
            f"cannot decrypt {what}: the secret key is not in {where}: import it "
            "(gpg --import backup-secret.asc); a restore would fail the same way",
            passphrase=False,
        )
    if "DECRYPTION_FAILED" in status or "passphrase" in err.lower():
        raise CannotDecrypt(
            f"cannot decrypt {what}: the secret key's passphrase is wrong or missing "
            f"(encryption.passphrase_file = {enc.passphrase_file})",
            passphrase=True,
        )
    said = [ln for ln in err.splitlines() if ln.strip()]
    raise CannotDecrypt(
        f"cannot decrypt {what}: {' | '.join(said[-3:]) or 'gpg failed'}", passphrase=False
    )


def decrypt_part(ctx: Context, handle: Any, cipher: bytes) -> Part:
    enc = ctx.app.config.encryption
    probe(enc, handle, cipher, "the canary")
    newest = _newest_encrypted(ctx)
    if newest is None:
        return Part("ok", "canary decrypts; no encrypted backup yet")
    backup_id, head = newest
    probe(enc, handle, head, backup_id)
    return Part("ok", f"canary and the first blocks of {backup_id} decrypt")


def gpg_key(ctx: Context) -> Result:
    enc = ctx.app.config.encryption
    handle = _gpg(enc)
    parts: list[Part] = []
    if enc.mode == "gpg-public":
        parts = [recipient_part(ctx, handle, r) for r in enc.recipients]
        if any(p.status == "critical" for p in parts):
            return combine("gpg_key", parts)
    try:
        cipher = encrypt_canary(enc)
    except PyopsError as exc:
        return combine("gpg_key", [*parts, Part("critical", f"canary encryption failed: {exc}")])
    if not cipher:
        return combine("gpg_key", [*parts, Part("critical", "canary encryption gave nothing")])
    parts.append(Part("ok", "canary encrypts"))
    secret = enc.mode == "gpg-symmetric" or any(
        handle.list_keys(secret=True, keys=[r]) for r in enc.recipients
    )
    if not secret:
        parts.append(Part("ok", "no secret key on this host: decryption not tested"))
        return combine("gpg_key", parts)
    try:
        parts.append(decrypt_part(ctx, handle, cipher))
    except CannotDecrypt as exc:
        if exc.passphrase and enc.passphrase_file is None:
            # a protected secret key and no passphrase: restores cannot run unattended
            parts.append(Part("warning", f"{exc}: set it to make restores work unattended"))
        else:
            parts.append(Part("critical", str(exc)))
    return combine("gpg_key", parts)
