"""The layers around a dump: compression and encryption, as pipeline stages.

Encoding follows the config; decoding follows the manifest, so a restore works
from the artifact and its manifest alone. Passphrases are handed to gpg as an
open file descriptor: pyops never reads them, and they never touch argv. Which
keys may encrypt, and what a failed decryption means, is pyops.gpgkeys' business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyops import gpgkeys
from pyops.config import CompressionConfig, EncryptionConfig
from pyops.errors import PyopsError
from pyops.execute import Stage, first_line
from pyops.manifest import Manifest
from pyops.tools import compress, gpg


@dataclass(frozen=True)
class Codec:
    compression: CompressionConfig
    encryption: EncryptionConfig
    _checked: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)

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
            enc["recipients"] = self.recipients()
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

    def recipients(self) -> list[str]:
        """The recipients' fingerprints, each able to encrypt (checked once per Codec:
        the manifest records the keys the data is encrypted to)."""
        if "recipients" not in self._checked:
            self._checked["recipients"] = gpgkeys.recipient_fingerprints(self.encryption)
        return list(self._checked["recipients"])

    @contextlib.contextmanager
    def encoder(self) -> Iterator[list[Stage]]:
        stages = compress.compress(
            self.compression.algorithm, self.compression.level, self.compression.threads
        )
        enc = self.encryption
        if enc.mode == "gpg-public":
            yield [*stages, gpg.encrypt_public(enc.gnupghome, self.recipients())]
        elif enc.mode == "gpg-symmetric":
            assert enc.passphrase_file is not None
            with gpgkeys.passphrase_fd(enc.passphrase_file) as fd:
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
        with gpgkeys.passphrase(self.encryption) as fd:
            yield [gpg.decrypt(self.encryption.gnupghome, fd), *stages]

    def probe_decrypt(self, head: bytes, what: str) -> None:
        """Prove the secret key and the configured passphrase open this artifact before
        anything is touched: gpg reaches the plaintext long before the data ends."""
        try:
            gpgkeys.probe(self.encryption, head, what)
        except gpgkeys.CannotDecrypt as exc:
            raise PyopsError(f"{exc}. Nothing was changed") from None
