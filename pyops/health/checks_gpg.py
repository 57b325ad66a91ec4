"""gpg_key: the recipient keys exist, can encrypt (a usable encryption subkey; not
revoked, not expired) and do not expire soon, and they really work: a small canary
is encrypted with the gpg CLI exactly as backups are, and where this host can
decrypt (secret key, passphrase) the canary and the first blocks of the newest
encrypted backup are decrypted too, with the configured passphrase. The keys are
judged by pyops.gpgkeys, as backup, verify and restore judge them."""

from __future__ import annotations

from pyops import execute, gpgkeys
from pyops.config import EncryptionConfig
from pyops.errors import PyopsError
from pyops.execute import PIPE, Stage
from pyops.health.context import Context
from pyops.health.result import Part, Result, Status, combine
from pyops.tools import gpg

CANARY = b"pyops health canary: if you can read this, the keys work\n"
HEAD = 1 << 16


def recipient_part(ctx: Context, recipient: gpgkeys.Recipient) -> Part:
    spec = recipient.spec
    if recipient.key is None or recipient.verdict is None:
        return Part("critical", f"recipient {spec!r}: no such key in the GnuPG home")
    verdict = recipient.verdict
    label = f"recipient {recipient.label}"
    if not verdict.usable:
        return Part("critical", f"{label}: {verdict.problem}: {verdict.fix}")
    if verdict.ends is None:
        return Part("ok", f"{label}: never expires")
    days = (verdict.ends - ctx.now.timestamp()) / 86400
    metrics = {f"{spec}.days_left": round(days, 2)}
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


def encrypt_canary(enc: EncryptionConfig, fingerprints: list[str]) -> bytes:
    """The canary, encrypted exactly as backups are (to the checked keys)."""
    if enc.mode == "gpg-public":
        return _run_bytes(gpg.encrypt_public(enc.gnupghome, fingerprints), CANARY)
    assert enc.passphrase_file is not None
    with gpgkeys.passphrase_fd(enc.passphrase_file) as fd:
        return _run_bytes(gpg.encrypt_symmetric(enc.gnupghome, fd), CANARY)


def _newest_encrypted(ctx: Context) -> tuple[str, bytes] | None:
    """(id, first bytes) of the newest encrypted backup whose artifact is there."""
    local = ctx.app.local()
    for backup in local.backups():
        if backup.manifest.encrypted and local.store.stat(backup.artifact_key) is not None:
            return backup.id, local.head(backup, HEAD)
    return None


def decrypt_part(ctx: Context, cipher: bytes) -> Part:
    """Decrypt the canary, then the first blocks of the newest encrypted backup, with
    the configured passphrase (never one the agent remembers), never asking anyone."""
    enc = ctx.app.config.encryption
    gpgkeys.probe(enc, cipher, "the canary", ask=False)
    newest = _newest_encrypted(ctx)
    if newest is None:
        return Part("ok", "canary decrypts; no encrypted backup yet")
    backup_id, head = newest
    gpgkeys.probe(enc, head, backup_id, ask=False)
    return Part("ok", f"canary and the first blocks of {backup_id} decrypt")


def gpg_key(ctx: Context) -> Result:
    enc = ctx.app.config.encryption
    gpgkeys.check_home(enc)
    parts: list[Part] = []
    fingerprints: list[str] = []
    if enc.mode == "gpg-public":
        now = ctx.now.timestamp()
        recipients = [gpgkeys.recipient(enc, spec, now) for spec in enc.recipients]
        parts = [recipient_part(ctx, r) for r in recipients]
        if any(p.status == "critical" for p in parts):
            return combine("gpg_key", parts)
        fingerprints = [r.key.fingerprint for r in recipients if r.key is not None]
    try:
        cipher = encrypt_canary(enc, fingerprints)
    except PyopsError as exc:
        return combine("gpg_key", [*parts, Part("critical", f"canary encryption failed: {exc}")])
    if not cipher:
        return combine("gpg_key", [*parts, Part("critical", "canary encryption gave nothing")])
    parts.append(Part("ok", "canary encrypts"))
    secret = enc.mode == "gpg-symmetric" or bool(
        set(fingerprints) & {k.fingerprint for k in gpgkeys.keys(enc.gnupghome, secret=True)}
    )
    if not secret:
        parts.append(Part("ok", "no secret key on this host: decryption not tested"))
        return combine("gpg_key", parts)
    try:
        parts.append(decrypt_part(ctx, cipher))
    except gpgkeys.CannotDecrypt as exc:
        if exc.reason == "no-passphrase":
            # a protected secret key and no passphrase: restores cannot run unattended
            parts.append(Part("warning", f"{exc}; restores cannot run unattended"))
        else:
            parts.append(Part("critical", str(exc)))
    return combine("gpg_key", parts)
