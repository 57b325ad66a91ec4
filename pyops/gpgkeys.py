"""The one gpg layer that backup, verify, restore, drill and health share.

- Which recipient key gpg would encrypt to, and whether it can: the key must have
  a usable *encryption* (sub)key. A signing-only key, a key whose encryption
  subkey expired or was revoked, a revoked key and an expired key are each refused
  with their own reason (a revoked key is "revoked", never "expired on ...").
- What a decryption probe says: the secret key is not here, the passphrase is
  wrong, or no passphrase was given, read from gpg's status lines.
- The configured passphrase is what is tested: with a `passphrase_file`, the
  agent's cached passphrases for the home's secret keys are cleared before gpg
  asks for one (and again afterwards, so pyops leaves none behind).

Keys are read from gpg's colon listing (doc/DETAILS in GnuPG) with the same
offline gpg the data path runs (`pyops.tools.gpg`); nothing here asks the network.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyops.config import EncryptionConfig
from pyops.errors import PyopsError
from pyops.execute import run_quiet
from pyops.tools import gpg

# libgpg-error codes (the low 16 bits of gpg's ERROR status values)
BAD_PASSPHRASE = 11
NO_PIN_ENTRY = 85
CANCELED = 99
NO_PASSPHRASE = 177
NO_PASSPHRASE_GIVEN = {NO_PIN_ENTRY, CANCELED, 83}  # 83: pinentry error

REVOCATION_REASONS = {
    "00": "",
    "01": "superseded",
    "02": "key compromised",
    "03": "no longer used",
}


def day(when: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(when))


@dataclass
class SubKey:
    """The primary key or a subkey: one record of the listing."""

    keyid: str
    validity: str
    caps: str  # own capabilities (lower case); on the primary, upper case: the whole key's
    expires: float | None
    fingerprint: str = ""
    keygrip: str = ""
    secret: bool = False  # the secret part is here (not a stub)
    revoked_on: float | None = None
    revocation_reason: str = ""

    @property
    def encrypts(self) -> bool:
        return "e" in self.caps

    def state(self, now: float) -> str:
        """'revoked', 'expired', 'invalid' or '' (usable)."""
        if self.validity == "r" or self.revoked_on is not None:
            return "revoked"
        if self.validity == "e" or (self.expires is not None and self.expires <= now):
            return "expired"
        if self.validity in ("i", "d"):
            return "invalid"
        return ""


@dataclass
class Key:
    primary: SubKey
    uids: list[str] = field(default_factory=list)
    subkeys: list[SubKey] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return self.primary.fingerprint

    @property
    def short(self) -> str:
        return self.fingerprint[-16:] or self.primary.keyid

    def parts(self) -> list[SubKey]:
        return [self.primary, *self.subkeys]


@dataclass(frozen=True)
class Verdict:
    """Whether a key can encrypt now; if not, what is wrong and how to fix it."""

    usable: bool
    problem: str = ""
    fix: str = ""
    ends: float | None = None  # when it stops encrypting (None: never)


def _unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _when(text: str) -> float | None:
    """A date field of the listing (seconds since the epoch with --fixed-list-mode)."""
    return float(text) if text.isdigit() else None


def parse_colons(text: str) -> list[Key]:
    """Keys from `gpg --with-colons --fixed-list-mode --list-sigs|--list-secret-keys`."""
    keys: list[Key] = []
    current: SubKey | None = None
    for line in text.splitlines():
        f = line.split(":")
        kind = f[0]
        if kind in ("fpr", "grp") and current is not None and len(f) > 9:
            setattr(current, "fingerprint" if kind == "fpr" else "keygrip", f[9])
        elif kind in ("pub", "sec", "sub", "ssb") and len(f) > 11:
            current = SubKey(
                keyid=f[4],
                validity=f[1],
                caps=f[11],
                expires=_when(f[6]),
                secret=kind in ("sec", "ssb") and len(f) > 14 and f[14] == "+",
            )
            if kind in ("pub", "sec"):
                keys.append(Key(current))
            elif keys:
                keys[-1].subkeys.append(current)
        elif kind == "uid" and keys and len(f) > 9:
            keys[-1].uids.append(_unescape(f[9]))
            current = None  # a revocation after a uid is the uid's, not the key's
        elif kind == "rev" and current is not None and len(f) > 10:
            sigclass, _, reason = f[10].partition(",")
            if sigclass[:2] in ("20", "28"):  # key or subkey revocation
                current.revoked_on = _when(f[5])
                current.revocation_reason = REVOCATION_REASONS.get(reason, "")
    return keys


def check_home(enc: EncryptionConfig) -> None:
    home = enc.gnupghome
    if home is not None and not home.is_dir():
        raise PyopsError(f"encryption.gnupghome {home} does not exist: create it and import keys")


def keys(home: Path | None, spec: str | None = None, *, secret: bool = False) -> list[Key]:
    """The keys gpg finds for `spec` (as `gpg --recipient spec` would), none if none."""
    result = run_quiet(gpg.list_keys(home, spec, secret=secret), check=False)
    found = parse_colons(result.stdout)
    if result.returncode != 0 and not found:
        said = " ".join(result.stderr.split())
        if "No public key" in said or "No secret key" in said:
            return []
        raise PyopsError(f"gpg cannot list keys in {where(home)}: {said or 'gpg failed'}")
    return found


def where(home: Path | None) -> str:
    return str(home) if home else "the default GnuPG home"


# --- can this key encrypt? ------------------------------------------------------------


def verdict(key: Key, now: float | None = None) -> Verdict:
    now = time.time() if now is None else now
    p = key.primary
    fpr = key.fingerprint
    if p.state(now) == "revoked":
        since = [f"since {day(p.revoked_on)}"] if p.revoked_on else []
        detail = ", ".join(since + ([p.revocation_reason] if p.revocation_reason else []))
        return Verdict(
            False,
            f"is revoked{f' ({detail})' if detail else ''}",
            "a revoked key never encrypts again: configure a new recipient",
        )
    if "D" in p.caps:
        return Verdict(
            False,
            "is disabled in the GnuPG home",
            f"enable it (gpg --edit-key {fpr} enable) or configure a new recipient",
        )
    if p.state(now) == "expired":
        when = f" on {day(p.expires)}" if p.expires else ""
        return Verdict(
            False,
            f"expired{when}",
            "extend it (gpg --quick-set-expire) or configure a new recipient "
            "(an extended key: re-export it and import it here)",
        )
    candidates = [k for k in key.parts() if k.encrypts]
    add = (
        f"add one where the secret key lives (gpg --quick-add-key {fpr} cv25519 encr 2y), "
        "re-export the public key and import it here, or configure a new recipient"
    )
    if not candidates:
        return Verdict(
            False, "cannot encrypt: it has no encryption subkey (a signing-only key)", add
        )
    usable = [k for k in candidates if not k.state(now)]
    if not usable:
        newest = max(candidates, key=lambda k: k.expires or 0.0)
        state = newest.state(now)
        if state == "expired":
            when = f" on {day(newest.expires)}" if newest.expires else ""
            return Verdict(
                False,
                f"cannot encrypt: its encryption subkey {newest.keyid} expired{when}",
                f"extend it where the secret key lives (gpg --quick-set-expire {fpr} 2y '*'), "
                "re-export the public key and import it here, or configure a new recipient",
            )
        return Verdict(
            False, f"cannot encrypt: its encryption subkey {newest.keyid} is {state}", add
        )
    if "E" not in p.caps:  # gpg's own word on the whole key, should we miss a reason
        return Verdict(False, "cannot encrypt: gpg finds no usable encryption subkey", add)
    last = None if any(k.expires is None for k in usable) else max(k.expires or 0 for k in usable)
    ends = [e for e in (p.expires, last) if e is not None]
    return Verdict(True, ends=min(ends) if ends else None)


@dataclass(frozen=True)
class Recipient:
    spec: str
    key: Key | None  # what gpg encrypts to; when nothing is usable, the first match
    verdict: Verdict | None  # None: no key matches

    @property
    def label(self) -> str:
        return f"{self.spec!r} ({self.key.short})" if self.key else repr(self.spec)


def recipient(enc: EncryptionConfig, spec: str, now: float | None = None) -> Recipient:
    found = keys(enc.gnupghome, spec)
    if not found:
        return Recipient(spec, None, None)
    judged = [(k, verdict(k, now)) for k in found]
    usable = [(k, v) for k, v in judged if v.usable]
    if len(usable) == 1:
        return Recipient(spec, *usable[0])
    if len(usable) > 1:
        fprs = ", ".join(k.fingerprint for k, _ in usable)
        return Recipient(
            spec,
            usable[0][0],
            Verdict(
                False,
                f"matches {len(usable)} usable keys ({fprs})",
                "name one by fingerprint in encryption.recipients",
            ),
        )
    return Recipient(spec, *judged[0])


def recipient_fingerprints(enc: EncryptionConfig) -> list[str]:
    """Fingerprints of the configured recipients, each able to encrypt now; refuse
    anything else with a message that names the key, says why and how to fix it."""
    check_home(enc)
    home = enc.gnupghome
    out = []
    for spec in enc.recipients:
        r = recipient(enc, spec)
        if r.key is None or r.verdict is None:
            raise PyopsError(
                f"gpg recipient key {spec!r} not found in {home or 'the GnuPG home'}: "
                f"import it (gpg --homedir {home or '~/.gnupg'} --import backup-public.asc)"
            )
        if not r.verdict.usable:
            raise PyopsError(f"gpg recipient key {r.label} {r.verdict.problem}: {r.verdict.fix}")
        out.append(r.key.fingerprint)
    return out


# --- passphrases and the agent --------------------------------------------------------


@contextlib.contextmanager
def passphrase_fd(path: Path) -> Iterator[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise PyopsError(
            f"passphrase file {path} unreadable ({exc.strerror}): check "
            "encryption.passphrase_file and its permissions (0600, owned by the pyops user)"
        ) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _cached(home: Path | None, commands: Sequence[str] = ()) -> set[str] | None:
    """Keygrips whose passphrase the home's running gpg-agent caches, after running
    `commands`; None when no agent runs (then nothing is cached). Never starts one."""
    result = run_quiet(gpg.connect_agent(home, [*commands, "KEYINFO --list"]), check=False)
    if "no gpg-agent running" in result.stderr:
        return None
    if result.returncode != 0 or "ERR" in result.stdout.split():
        said = " ".join(result.stderr.split()) or result.stdout.strip()
        raise PyopsError(f"gpg-agent of {where(home)} failed: {said}")
    fields = (line.split() for line in result.stdout.splitlines())
    return {f[2] for f in fields if f[:2] == ["S", "KEYINFO"] and len(f) > 6 and f[6] == "1"}


def forget_cached_passphrases(home: Path | None) -> None:
    """Make gpg-agent forget the cached passphrases of the home's decryption keys, and
    check that it did: otherwise a wrong passphrase_file passes while the agent
    remembers the right one. Other cached entries (an ssh key's) are left alone."""
    cached = _cached(home)
    if not cached:
        return
    grips = {k.keygrip for key in keys(home, secret=True) for k in key.parts() if k.encrypts}
    clear = sorted(cached & grips)
    if not clear:
        return
    still = _cached(home, [f"CLEAR_PASSPHRASE --mode=normal {grip}" for grip in clear])
    if still and still & set(clear):
        raise PyopsError(
            f"gpg-agent of {where(home)} did not forget cached passphrases (keygrip "
            f"{', '.join(sorted(still & set(clear)))}): encryption.passphrase_file cannot be "
            f"tested; stop the agent (gpgconf{' --homedir ' + str(home) if home else ''} "
            "--kill gpg-agent) and run again"
        )


@contextlib.contextmanager
def passphrase(enc: EncryptionConfig) -> Iterator[int | None]:
    """The passphrase file as an open descriptor for gpg (None without one). With a
    file, the agent holds no cached passphrase for this home while and after gpg
    runs: what decrypts is the configured passphrase, and nothing stays behind."""
    path = enc.passphrase_file
    if path is None:
        yield None  # a key without passphrase, an agent that has it, or a pinentry
        return
    with passphrase_fd(path) as fd:
        forget_cached_passphrases(enc.gnupghome)
        try:
            yield fd
        finally:
            with contextlib.suppress(PyopsError):
                forget_cached_passphrases(enc.gnupghome)


# --- does this host open the data? ----------------------------------------------------


class CannotDecrypt(PyopsError):
    """gpg could not reach the plaintext; `reason` says which of the known causes."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # no-secret-key | wrong-passphrase | no-passphrase | other


def _codes(status: str) -> set[int]:
    codes: set[int] = set()
    for line in status.splitlines():
        f = line.split()
        if f[:2] == ["[GNUPG:]", "ERROR"] and len(f) >= 4:
            raw = f[3].split("_", 1)[0]
            if raw.isdigit():
                codes.add(int(raw) & 0xFFFF)
        elif f[:2] == ["[GNUPG:]", "BAD_PASSPHRASE"]:
            codes.add(BAD_PASSPHRASE)
    return codes


def secret_keyids(home: Path | None) -> set[str]:
    """Key ids whose secret part is in the home (stubs for offline keys excluded)."""
    return {k.keyid for key in keys(home, secret=True) for k in key.parts() if k.secret}


def probe(enc: EncryptionConfig, data: bytes, what: str, *, ask: bool = True) -> None:
    """Decrypt the start of `data` to /dev/null; success is gpg reaching the plaintext
    (the head is cut short, so a DECRYPTION_FAILED after PLAINTEXT is expected).
    `ask`: without a passphrase file, gpg may ask the operator at a pinentry; not
    for unattended checks."""
    with passphrase(enc) as fd:
        result = run_quiet(
            gpg.decrypt_probe(enc.gnupghome, fd, ask=ask), stdin_bytes=data, check=False
        )
    status = result.stdout
    if "[GNUPG:] PLAINTEXT" in status or "[GNUPG:] DECRYPTION_OKAY" in status:
        return
    codes = _codes(status)
    path = enc.passphrase_file
    if BAD_PASSPHRASE in codes:
        detail = f" (encryption.passphrase_file = {path})" if path else ""
        raise CannotDecrypt(f"cannot decrypt {what}: wrong passphrase{detail}", "wrong-passphrase")
    if NO_PASSPHRASE in codes and path:
        raise CannotDecrypt(
            f"cannot decrypt {what}: wrong passphrase (encryption.passphrase_file = {path} "
            "is empty)",
            "wrong-passphrase",
        )
    wanted = {ln.split()[2] for ln in status.splitlines() if ln.startswith("[GNUPG:] ENC_TO ")}
    if wanted and not wanted & secret_keyids(enc.gnupghome):
        raise CannotDecrypt(
            f"cannot decrypt {what}: the secret key is not in {where(enc.gnupghome)} "
            f"(encrypted to {', '.join(sorted(wanted))}): import it "
            "(gpg --import backup-secret.asc) and run again",
            "no-secret-key",
        )
    if path is None and (codes & (NO_PASSPHRASE_GIVEN | {NO_PASSPHRASE}) or wanted):
        raise CannotDecrypt(
            f"cannot decrypt {what}: the secret key is passphrase-protected and "
            "encryption.passphrase_file is not set: put the passphrase in a 0600 file "
            "and set it",
            "no-passphrase",
        )
    said = [ln for ln in result.stderr.splitlines() if ln.strip()]
    raise CannotDecrypt(f"cannot decrypt {what}: {' | '.join(said[-3:]) or 'gpg failed'}", "other")
