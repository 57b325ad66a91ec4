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
import functools
import logging
import os
import shlex
import signal
import subprocess
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
    "gpg-connect-agent": "gnupg",
    "zstd": "zstd",
    "gzip": "gzip",
    "sqlite3": "sqlite3",
    "tar": "tar",
    "docker": "docker.io",  # container engines (a postgres target's container_engine)
    "podman": "podman",
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
    # what it writes to stderr is warnings even when it exits 0 (tar -x: an extended
    # attribute it could not set): collected into Running.warnings
    stderr_warns: bool = False

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


class Running:
    """Processes of a started pipeline; `stdin`/`stdout` are pyops' ends, if any."""

    def __init__(self, stages: list[Stage], procs: list[Any], errs: list[IO[bytes]]) -> None:
        self.stages = stages
        self.procs = procs
        self.errs = errs
        self.stdin: IO[bytes] | None = procs[0].stdin if procs else None
        self.stdout: IO[bytes] | None = procs[-1].stdout if procs else None
        # what stages that exited with an accepted non-zero status said (`finish`)
        self.warnings: list[str] = []
        self._drainer: Callable[[], None] | None = None  # join() of `drain_when_done`

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
        (its exit status tells the story in `finish`).

        A first stage that exited successfully without reading everything (pg_restore
        stops before a tar archive's end) does not end the reading: the rest of
        `chunks` is still consumed, so a checksum taken over them covers every byte of
        the artifact. One that failed does: there is no point reading on."""
        assert self.stdin is not None
        fd = self.stdin.fileno()
        rest = iter(chunks)
        try:
            for chunk in rest:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        except BrokenPipeError:
            self.stdin.close()
            self.stdin = None
            if self.procs[0].wait() in self.stages[0].ok_codes:
                for _ in rest:
                    pass
        finally:
            if self.stdin is not None:
                self.stdin.close()
                self.stdin = None

    def drain_when_done(self, pipe: IO[bytes]) -> None:
        """`pipe` is pyops' copy of the read end feeding the last stage. Once that stage
        has exited with an accepted status, read what it left unread (pg_restore stops
        before a tar archive's end), so the stages before it run to their end and
        check their whole input (zstd's frame checksum, gpg's MDC) instead of dying of
        SIGPIPE. If it failed, close the pipe at once: they get SIGPIPE and stop."""
        last, stage = self.procs[-1], self.stages[-1]
        try:
            if last.wait() in stage.ok_codes:
                fd, left = pipe.fileno(), 0
                while chunk := os.read(fd, CHUNK):
                    left += len(chunk)
                if left:
                    log.debug(
                        "%s finished before its input did: drained %d bytes", stage.name, left
                    )
        finally:
            pipe.close()

    def _join_drainer(self) -> None:
        if self._drainer is not None:
            join, self._drainer = self._drainer, None
            join()

    def kill(self) -> None:
        _terminate(self.procs)
        with contextlib.suppress(Exception):
            self._join_drainer()  # every writer is gone: it reaches end of file
        self._close()

    def finish(self) -> None:
        """Wait for every stage; raise the root cause if any failed."""
        if self.stdin is not None:
            self.stdin.close()
            self.stdin = None
        codes: list[int] = []
        for i, proc in enumerate(self.procs):
            codes.append(proc.wait())
            if codes[i] not in self.stages[i].ok_codes and not _sigpipe(codes[i]):
                # the stream is broken from here on, and a tool reading a cut stream may
                # never end (pg_restore spins on a cut tar archive): stop the rest
                _terminate(self.procs[i + 1 :])
        try:
            self._join_drainer()
            failed = [(i, rc) for i, rc in enumerate(codes) if rc not in self.stages[i].ok_codes]
            if failed:
                i, rc = root_cause(failed)
                raise StageFailed(self.stages[i].name, rc, _tail(self.errs[i]))
            for stage, err, rc in zip(self.stages, self.errs, codes, strict=True):
                if rc != 0 or stage.stderr_warns:  # an accepted non-zero status: the
                    self.warnings += _lines(err, stage.name)  # tool warned (tar: exit 1)
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
        if not _sigpipe(rc):
            return i, rc
    return failed[0]


def _sigpipe(rc: int) -> bool:
    return rc in (-signal.SIGPIPE, 128 + signal.SIGPIPE)


def _terminate(procs: list[Any]) -> None:
    """SIGTERM whatever still runs, SIGKILL what has not ended 5 s later; reap all."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lines(err: IO[bytes], name: str, limit: int = 1 << 20, most: int = 100) -> list[str]:
    """The first `most` lines a stage wrote to stderr, each as `name: line`."""
    err.seek(0)
    text = err.read(limit).decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    out = [ln if ln.startswith(f"{name}: ") else f"{name}: {ln}" for ln in lines[:most]]
    if len(lines) > most:
        out.append(f"{name}: ... and {len(lines) - most} more lines")
    return out


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


def start(
    stages: list[Stage], *, stdin: Any = DEVNULL, stdout: Any = PIPE, drain: bool = False
) -> Running:
    """Start `stages` joined by pipes. `stdin`/`stdout` are PIPE (pyops' end), an fd,
    or DEVNULL. `drain`: the last stage is a consumer that may stop reading before the
    end of a valid stream (pg_restore and a tar archive); what it leaves is read by
    pyops once it has succeeded (`Running.drain_when_done`), never judged a failure."""
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
            if last and drain and n > 0:
                # pyops keeps a read end too, to drain it once the last stage succeeded
                running._drainer = in_thread(functools.partial(running.drain_when_done, upstream))
            elif n > 0 and upstream is not None and hasattr(upstream, "close"):
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
def pipeline(
    stages: list[Stage], *, stdin: Any = DEVNULL, stdout: Any = PIPE, drain: bool = False
) -> Iterator[Running]:
    """Run a pipeline; on any exception inside the block every stage is killed."""
    running = start(stages, stdin=stdin, stdout=stdout, drain=drain)
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


@dataclass(frozen=True)
class Contained:
    """How a `run_contained` command ended: its status (negative: killed by a signal),
    whether the timeout killed it, and the tails of what it wrote."""

    returncode: int
    timed_out: bool
    stdout: str
    stderr: str


def run_contained(stage: Stage, timeout: float, keep: int = 16384, grace: float = 5) -> Contained:
    """Run a command pyops neither wrote nor trusts to end or to stay small (a hook).

    Its environment is exactly `stage.env`: nothing of pyops' own is inherited (plumbum
    would merge in ours, so this one is started here, directly). stdin is /dev/null;
    stdout and stderr go to temp files, of which the last `keep` bytes are read (a
    child it left in the background holding a pipe would stall pyops). It runs in a
    session of its own: at the timeout, or when pyops is interrupted, its whole process
    group gets SIGTERM, then SIGKILL `grace` seconds later. A failure is not raised:
    the caller judges it (a missing program is: ToolMissing)."""
    program = str(resolve(stage.argv[0]).executable)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        log.debug("run %s: %s", stage.name, stage)
        proc = subprocess.Popen(  # an argv list, no shell
            list(stage.argv),
            executable=program,
            stdin=DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(stage.env),
            pass_fds=stage.pass_fds,
            cwd=stage.cwd,
            start_new_session=True,
        )
        timed_out = False
        try:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc, grace)
        except BaseException:
            _kill_group(proc, grace)
            raise
        return Contained(proc.returncode, timed_out, _tail_bytes(out, keep), _tail_bytes(err, keep))


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to the process group `proc` leads, SIGKILL to what is left of it after
    `grace` seconds (or at once once `proc` ended); reap `proc`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail_bytes(f: IO[bytes], keep: int) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - keep))
    return f.read().decode("utf-8", "replace")


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
