"""The error hierarchy. `cli.EXIT_CODES` is the one table that turns these into exit
codes; the names below are for commands that end with SystemExit themselves.

Every message is written for the operator at 3 a.m.: what went wrong and what to do.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class PyopsError(Exception):
    """An operation failed or was refused; nothing half-done was left behind."""


class ConfigError(PyopsError):
    """The configuration is wrong; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key


class UsageError(PyopsError):
    """The command line asks for something pyops cannot do as given, found after click
    parsed it (a --target the config lacks, --latest among several targets); the
    message names the option."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


class ToolMissing(PyopsError):
    """A program pyops drives is not installed."""


class StageFailed(PyopsError):
    """A stage of a pipeline exited non-zero or was killed."""

    def __init__(self, stage: str, returncode: int, stderr_tail: str) -> None:
        if returncode < 0:
            import signal

            try:
                how = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with status {returncode}"
        detail = f": {stderr_tail}" if stderr_tail else ""
        super().__init__(f"{stage} {how}{detail}")
        self.stage = stage
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class VerifyFailed(PyopsError):
    """A backup does not match its manifest or does not decode."""


class LockBusy(PyopsError):
    """Another pyops run holds the repository lock."""


class Terminated(BaseException):
    """SIGTERM (systemctl stop, a unit's timeout): unwind like Ctrl-C, so uploads are
    aborted, pipelines killed and temp files removed on the way out."""


class Aborted(PyopsError):
    """The operator declined, or confirmation was impossible."""


def os_error_message(exc: OSError) -> str:
    """An OSError as the operator needs it: what failed, on which path, what to do."""
    import errno

    where = f": {exc.filename}" if exc.filename else ""
    hint = {
        errno.EROFS: "the file system is read-only: check mounts or the unit's ReadWritePaths=",
        errno.EACCES: "permission denied: check ownership and modes (repository 0700, pyops user)",
        errno.EPERM: "not permitted: check ownership and the service's sandboxing",
        errno.ENOSPC: "disk full: free space on the file system holding that path"
        if exc.filename
        else "disk full: free space where pyops writes (repository, scratch, destination)",
        errno.ENOTDIR: "a file stands where a directory should be",
    }.get(exc.errno or 0, "check the path and its permissions")
    return f"{exc.strerror or exc}{where}: {hint}"
