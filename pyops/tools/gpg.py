"""gpg command lines for the data path. Passphrases travel only by file descriptor."""

from __future__ import annotations

from pathlib import Path

from pyops.execute import Stage

BASE = ("gpg", "--batch", "--no-tty", "--quiet", "--yes")


def _home(gnupghome: Path | None) -> tuple[str, ...]:
    return ("--homedir", str(gnupghome)) if gnupghome else ()


def encrypt_public(gnupghome: Path | None, recipients: tuple[str, ...]) -> Stage:
    # trust-model always: an imported-but-unsigned backup key must not fail quietly.
    argv = (
        *BASE,
        *_home(gnupghome),
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
        *BASE,
        *_home(gnupghome),
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


def decrypt(
    gnupghome: Path | None,
    passphrase_fd: int | None,
    *,
    status_fd: int | None = None,
    output: str = "-",
) -> Stage:
    secret = (
        ("--pinentry-mode", "loopback", "--passphrase-fd", str(passphrase_fd))
        if passphrase_fd is not None
        else ()
    )
    status = ("--status-fd", str(status_fd)) if status_fd is not None else ()
    fds = tuple(fd for fd in (passphrase_fd, status_fd) if fd is not None)
    argv = (*BASE, *_home(gnupghome), *secret, *status, "--output", output, "--decrypt")
    return Stage("gpg -d", argv, pass_fds=fds)


def version(gnupghome: Path | None) -> Stage:
    return Stage("gpg", ("gpg", *_home(gnupghome), "--version"))
