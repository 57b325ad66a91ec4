"""gpg command lines. Passphrases travel only by file descriptor.

Every gpg pyops runs is offline: it never asks the network for a key (gpg's
default `--auto-key-locate local,wkd` would fetch an unknown e-mail recipient over
WKD), never retrieves keys, and never starts dirmngr. A key that is not in the
GnuPG home is simply missing. Symmetric passphrases are never cached by the agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pyops.execute import Stage

BASE = ("gpg", "--batch", "--no-tty", "--quiet", "--yes")
OFFLINE = ("--no-auto-key-locate", "--no-auto-key-retrieve", "--disable-dirmngr")


def _home(gnupghome: Path | None) -> tuple[str, ...]:
    return ("--homedir", str(gnupghome)) if gnupghome else ()


def _base(gnupghome: Path | None, *, quiet: bool = True) -> tuple[str, ...]:
    base = BASE if quiet else tuple(a for a in BASE if a != "--quiet")
    return (*base, *_home(gnupghome), *OFFLINE)


def encrypt_public(gnupghome: Path | None, recipients: Sequence[str]) -> Stage:
    # trust-model always: an imported-but-unsigned backup key must not fail quietly.
    argv = (
        *_base(gnupghome),
        "--trust-model",
        "always",
        "--compress-algo",
        "none",
        "--encrypt",
        *(arg for r in recipients for arg in ("--recipient", r)),
        "--output",
        "-",
    )
    return Stage("gpg", argv)


def encrypt_symmetric(gnupghome: Path | None, passphrase_fd: int) -> Stage:
    argv = (
        *_base(gnupghome),
        "--no-symkey-cache",
        "--pinentry-mode",
        "loopback",
        "--passphrase-fd",
        str(passphrase_fd),
        "--compress-algo",
        "none",
        "--cipher-algo",
        "AES256",
        "--symmetric",
        "--output",
        "-",
    )
    return Stage("gpg", argv, pass_fds=(passphrase_fd,))


def _secret(passphrase_fd: int | None, ask: bool) -> tuple[str, ...]:
    if passphrase_fd is not None:
        return ("--pinentry-mode", "loopback", "--passphrase-fd", str(passphrase_fd))
    # without a passphrase file: an agent that has it, a key without one, or (ask)
    # the operator at a pinentry; never a pinentry popping up for an unattended check
    return () if ask else ("--pinentry-mode", "error")


def decrypt(gnupghome: Path | None, passphrase_fd: int | None) -> Stage:
    """The data path: ciphertext on stdin, plaintext on stdout."""
    argv = (
        *_base(gnupghome),
        "--no-symkey-cache",
        *_secret(passphrase_fd, ask=True),
        "--output",
        "-",
        "--decrypt",
    )
    fds = (passphrase_fd,) if passphrase_fd is not None else ()
    return Stage("gpg -d", argv, pass_fds=fds)


def decrypt_probe(gnupghome: Path | None, passphrase_fd: int | None, *, ask: bool) -> Stage:
    """Decrypt the first blocks to /dev/null, reporting on stdout (--status-fd 1).
    Not --quiet: gpg then leaves out the status lines that tell a wrong passphrase
    (ERROR pkdecrypt_failed) from a missing key."""
    argv = (
        *_base(gnupghome, quiet=False),
        "--no-symkey-cache",
        *_secret(passphrase_fd, ask),
        "--status-fd",
        "1",
        "--output",
        "/dev/null",
        "--decrypt",
    )
    fds = (passphrase_fd,) if passphrase_fd is not None else ()
    return Stage("gpg -d", argv, pass_fds=fds)


def list_keys(gnupghome: Path | None, spec: str | None = None, *, secret: bool = False) -> Stage:
    """Keys as colon records (gpg's DETAILS): validity, expiry, capabilities, keygrips;
    public keys with their signatures, for the revocation date."""
    argv = (
        *_base(gnupghome),
        "--trust-model",
        "always",
        "--with-colons",
        "--fixed-list-mode",
        "--with-keygrip",
        "--list-secret-keys" if secret else "--list-sigs",
        *(("--", spec) if spec is not None else ()),
    )
    return Stage("gpg", argv)


def connect_agent(gnupghome: Path | None, commands: Sequence[str]) -> Stage:
    """Talk to the running gpg-agent of the home; never start one."""
    argv = ("gpg-connect-agent", *_home(gnupghome), "--no-autostart", *commands, "/bye")
    return Stage("gpg-connect-agent", argv)


def version(gnupghome: Path | None) -> Stage:
    return Stage("gpg", ("gpg", *_home(gnupghome), "--version"))
