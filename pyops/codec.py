"""The layers around a dump: compression and encryption, as pipeline stages.

Encoding follows the config; decoding follows the manifest, so a restore works
from the artifact and its manifest alone. Passphrases are handed to gpg as an
open file descriptor: pyops never reads them, and they never touch argv.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyops.config import CompressionConfig, EncryptionConfig
from pyops.errors import PyopsError
from pyops.execute import Stage, first_line, run_quiet
from pyops.manifest import Manifest
from pyops.tools import compress, gpg

PROBE_BYTES = 1 << 16


@dataclass(frozen=True)
class Codec:
    compression: CompressionConfig
    encryption: EncryptionConfig

    def extension(self, source_ext: str) -> str:
        layers = [source_ext]
        if ext := compress.extension(self.compression.algorithm):
            layers.append(ext)
        if self.encryption.mode != "none":
            layers.append("gpg")
        return ".".join(layers)

    def describe(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(compression, encryption) facts for the manifest; checks the keys first."""
        comp: dict[str, Any] = {"algorithm": self.compression.algorithm}
        if self.compression.algorithm != "none":
            comp["level"] = self.compression.level
        enc: dict[str, Any] = {"mode": self.encryption.mode}
        if self.encryption.mode == "gpg-public":
            enc["recipients"] = recipient_fingerprints(self.encryption)
        return comp, enc

    def tools(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.compression.algorithm != "none":
            out[self.compression.algorithm] = first_line(
                Stage(self.compression.algorithm, (self.compression.algorithm, "--version"))
            )
        if self.encryption.mode != "none":
            out["gpg"] = first_line(gpg.version(self.encryption.gnupghome))
        return out

    @contextlib.contextmanager
    def encoder(self) -> Iterator[list[Stage]]:
        stages = compress.compress(
            self.compression.algorithm, self.compression.level, self.compression.threads
        )
        enc = self.encryption
        if enc.mode == "gpg-public":
            yield [*stages, gpg.encrypt_public(enc.gnupghome, enc.recipients)]
        elif enc.mode == "gpg-symmetric":
            assert enc.passphrase_file is not None
            with passphrase_fd(enc.passphrase_file) as fd:
                yield [*stages, gpg.encrypt_symmetric(enc.gnupghome, fd)]
        else:
            yield stages

    @contextlib.contextmanager
    def decoder(self, manifest: Manifest) -> Iterator[list[Stage]]:
        """Stages that turn the artifact back into the dump, per its manifest."""
        stages = compress.decompress(manifest.compression.get("algorithm", "none"))
        if not manifest.encrypted:
            yield stages
            return
        with self._decrypt_fd() as fd:
            yield [gpg.decrypt(self.encryption.gnupghome, fd), *stages]

    @contextlib.contextmanager
    def _decrypt_fd(self) -> Iterator[int | None]:
        path = self.encryption.passphrase_file
        if path is None:
            yield None  # a secret key without a passphrase, or an agent that has it
            return
        with passphrase_fd(path) as fd:
            yield fd

    def probe_decrypt(self, head: bytes, what: str) -> None:
        """Prove the secret key (and passphrase) open this artifact before anything is
        touched: gpg reports the session key long before the data ends."""
        with self._decrypt_fd() as fd:
            stage = gpg.decrypt(self.encryption.gnupghome, fd, status_fd=1, output="/dev/null")
            result = run_quiet(stage, stdin_bytes=head, check=False)
        status = result.stdout
        # PLAINTEXT comes only once the session key opened the data; BEGIN_DECRYPTION
        # is printed even when the passphrase is wrong. The head is cut short, so a
        # DECRYPTION_FAILED after PLAINTEXT is expected.
        if "PLAINTEXT" in status or "DECRYPTION_OKAY" in status:
            return
        if "BAD_PASSPHRASE" in status or "symkey_decrypt.maybe_error" in status:
            raise PyopsError(
                f"cannot decrypt {what}: wrong passphrase "
                f"(encryption.passphrase_file = {self.encryption.passphrase_file})"
            )
        if "NO_SECKEY" in status or "ENC_TO" in status:
            raise PyopsError(
                f"cannot decrypt {what}: no usable secret key in "
                f"{self.encryption.gnupghome or 'the default GnuPG home'} (missing, or its "
                "passphrase in encryption.passphrase_file is wrong); import it "
                "(gpg --import backup-secret.asc) and run again. Nothing was changed"
            )
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        raise PyopsError(f"cannot decrypt {what}: {' | '.join(lines[-3:]) or 'gpg failed'}")


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


def recipient_fingerprints(enc: EncryptionConfig) -> list[str]:
    """Fingerprints of the configured recipients; refuse missing, revoked or expired keys
    with a message that says how to fix it."""
    import gnupg

    home = enc.gnupghome
    if home is not None and not home.is_dir():
        raise PyopsError(f"encryption.gnupghome {home} does not exist: create it and import keys")
    try:
        gpg_ = gnupg.GPG(gnupghome=str(home) if home else None)
    except (OSError, ValueError) as exc:
        raise PyopsError(f"gpg unusable: {exc} (apt-get install gnupg)") from None
    now = time.time()
    fingerprints = []
    for recipient in enc.recipients:
        keys = gpg_.list_keys(keys=[recipient])
        if not keys:
            raise PyopsError(
                f"gpg recipient key {recipient!r} not found in {home or 'the GnuPG home'}: "
                f"import it (gpg --homedir {home or '~/.gnupg'} --import backup-public.asc)"
            )
        key = keys[0]
        if key.get("trust") in ("r", "e") or (key.get("expires") and float(key["expires"]) < now):
            when = key.get("expires")
            detail = (
                f"expired on {time.strftime('%Y-%m-%d', time.gmtime(float(when)))}"
                if when
                else "revoked or expired"
            )
            raise PyopsError(
                f"gpg recipient key {recipient!r} is {detail}: extend it "
                "(gpg --quick-set-expire) or configure a new recipient"
            )
        fingerprints.append(str(key["fingerprint"]))
    return fingerprints
