"""The only module that starts processes.

A pipeline is a list of stages joined stdout -> stdin. pyops may feed the first
stage's stdin and/or read the last stage's stdout in chunks, so no stream is
ever held in memory. Each stage's stderr goes to its own temp file (a pipe
nobody reads would hang the run), every stage's exit status is checked, and on
any failure the siblings are killed and the root cause is raised with the tail
of its stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from pyops.errors import PyopsError, StageFailed, ToolMissing

log = logging.getLogger(__name__)

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
CHUNK = 1 << 20
F_SETPIPE_SZ = 1031

PACKAGES = {
    "pg_dump": "postgresql-client",
    "pg_restore": "postgresql-client",
    "psql": "postgresql-client",
    "gpg": "gnupg",
    "zstd": "zstd",
    "gzip": "gzip",
    "sqlite3": "sqlite3",
    "tar": "tar",
}


@dataclass(frozen=True)
class Stage:
    """One program in a pipeline. `env` reaches this child only; `pass_fds` too."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    pass_fds: tuple[int, ...] = ()
    cwd: str | None = None
    ok_codes: tuple[int, ...] = (0,)

    def __str__(self) -> str:
        return shlex.join(self.argv)


def resolve(program: str) -> Any:
    """A plumbum command for `program`, or ToolMissing saying what to install."""
    # imported here, after secrets left the environment: importing plumbum runs
    # `uname -p`, a child that would inherit them
    from plumbum import local
    from plumbum.commands.processes import CommandNotFound

    try:
        return local[program]
    except CommandNotFound:
        name = os.path.basename(program)
        package = PACKAGES.get(name, name)
        raise ToolMissing(
            f"{name} not found (looked for {program!r}): install it, e.g. "
            f"`apt-get install {package}`"
        ) from None


_hidden: dict[str, str] = {}


def hide_from_children(names: Iterable[str]) -> None:
    """Move variables (a target's password_env) out of the environment every child
    inherits (ours, plumbum's, python-gnupg's); `hidden(name)` still reads them, and
    the one child that needs a secret gets it through its Stage.env."""
    for name in names:
        if name and name in os.environ:
            _hidden[name] = os.environ.pop(name)
    if "plumbum" in sys.modules:
        from plumbum import local

        for name in _hidden:
            if name in local.env:
                del local.env[name]


def hidden(name: str) -> str | None:
    return _hidden.get(name, os.environ.get(name))


class Running:
    """Processes of a started pipeline; `stdin`/`stdout` are pyops' ends, if any."""

    def __init__(self, stages: list[Stage], procs: list[Any], errs: list[IO[bytes]]) -> None:
        self.stages = stages
        self.procs = procs
        self.errs = errs
        self.stdin: IO[bytes] | None = procs[0].stdin if procs else None
        self.stdout: IO[bytes] | None = procs[-1].stdout if procs else None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def chunks(self) -> Iterator[bytes]:
        """The last stage's stdout, a chunk at a time."""
        assert self.stdout is not None
        fd = self.stdout.fileno()
        while chunk := os.read(fd, CHUNK):
            yield chunk

    def feed(self, chunks: Iterable[bytes]) -> None:
        """Write into the first stage's stdin; a dead reader ends the feed quietly
        (its exit status tells the story in `finish`)."""
        assert self.stdin is not None
        fd = self.stdin.fileno()
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        except BrokenPipeError:
            pass
        finally:
            self.stdin.close()
            self.stdin = None

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close()

    def finish(self) -> None:
        """Wait for every stage; raise the root cause if any failed."""
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
        codes = [proc.wait() for proc in self.procs]
        try:
            failed = [(i, rc) for i, rc in enumerate(codes) if rc not in self.stages[i].ok_codes]
            if failed:
                i, rc = root_cause(failed)
                raise StageFailed(self.stages[i].name, rc, _tail(self.errs[i]))
            for stage, err in zip(self.stages, self.errs, strict=True):
                text = _tail(err)
                if text:
                    log.debug("%s said: %s", stage.name, text)
        finally:
            self._close()

    def _close(self) -> None:
        if self.stdout is not None:
            self.stdout.close()
        for err in self.errs:
            err.close()


def root_cause(failed: list[tuple[int, int]]) -> tuple[int, int]:
    """The upstream-most failure that is not a mere SIGPIPE from a dead reader."""
    for i, rc in failed:
        if rc not in (-signal.SIGPIPE, 128 + signal.SIGPIPE):
            return i, rc
    return failed[0]


def _tail(err: IO[bytes], limit: int = 2000) -> str:
    err.seek(0, os.SEEK_END)
    size = err.tell()
    err.seek(max(0, size - limit))
    text = err.read().decode("utf-8", "replace").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-6:])


def _widen(pipe: IO[bytes] | None) -> None:
    """Bigger pipe buffers mean fewer wake-ups for the pyops end."""
    if pipe is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, CHUNK)


def start(stages: list[Stage], *, stdin: Any = DEVNULL, stdout: Any = PIPE) -> Running:
    """Start `stages` joined by pipes. `stdin`/`stdout` are PIPE (pyops' end), an fd,
    or DEVNULL."""
    commands = [resolve(s.argv[0]) for s in stages]
    procs: list[Any] = []
    errs: list[IO[bytes]] = []
    running = Running(stages, procs, errs)
    upstream: Any = stdin
    try:
        for n, (stage, cmd) in enumerate(zip(stages, commands, strict=True)):
            last = n == len(stages) - 1
            err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by Running
            errs.append(err)
            log.debug("run %s: %s", stage.name, stage)
            proc = cmd.popen(
                list(stage.argv[1:]),
                stdin=upstream,
                stdout=stdout if last else PIPE,
                stderr=err,
                env=dict(stage.env),
                pass_fds=stage.pass_fds,
                cwd=stage.cwd,
                bufsize=0,
            )
            procs.append(proc)
            if n > 0 and upstream is not None and hasattr(upstream, "close"):
                upstream.close()  # only the child keeps the read end: SIGPIPE works
            upstream = proc.stdout
            if n == 0:
                _widen(proc.stdin)
        running.stdin = procs[0].stdin
        running.stdout = procs[-1].stdout
        _widen(running.stdout)
    except BaseException:
        running.kill()
        raise
    return running


@contextlib.contextmanager
def pipeline(stages: list[Stage], *, stdin: Any = DEVNULL, stdout: Any = PIPE) -> Iterator[Running]:
    """Run a pipeline; on any exception inside the block every stage is killed."""
    running = start(stages, stdin=stdin, stdout=stdout)
    try:
        yield running
    except BaseException:
        running.kill()
        raise
    running.finish()


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_quiet(
    stage: Stage, stdin_bytes: bytes | None = None, timeout: float = 60, check: bool = True
) -> Result:
    """Run a short command whose small output pyops needs (versions, key probes).
    Never for data streams."""
    cmd = resolve(stage.argv[0])
    proc = cmd.popen(
        list(stage.argv[1:]),
        stdin=PIPE if stdin_bytes is not None else DEVNULL,
        stdout=PIPE,
        stderr=PIPE,
        env=dict(stage.env),
        pass_fds=stage.pass_fds,
        cwd=stage.cwd,
    )
    try:
        out, err = proc.communicate(stdin_bytes, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise PyopsError(f"{stage.name} did not finish within {timeout:.0f}s") from None
    result = Result(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
    if check and proc.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        raise StageFailed(stage.name, proc.returncode, " | ".join(lines[-6:]))
    return result


def first_line(stage: Stage) -> str:
    """A tool's version banner, for the manifest."""
    return run_quiet(stage).stdout.strip().splitlines()[0]


def in_thread(fn: Callable[[], None]) -> Callable[[], None]:
    """Run `fn` in a thread; the returned join() re-raises its exception."""
    box: list[BaseException] = []

    def body() -> None:
        try:
            fn()
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()

    def join() -> None:
        thread.join()
        if box:
            raise box[0]

    return join
