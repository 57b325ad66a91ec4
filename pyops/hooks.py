"""The operator's commands around a target's backup and restore: [hooks] and each
target's [targets.hooks] (the global ones first, then the target's).

    before_*   run in order; the first that fails stops that target (exit 1, its
               stderr tail in the error); the rest of the run goes on
    after_*    run after the work, after a failure too (PYOPS_STATUS=failed), and
               after a failed before_* hook: they undo what before_* did
    on_error   runs once when the target ended FAILED, for whatever reason

An after_* or on_error hook that fails fails the target too (exit 1): the backup or
restore it followed is complete and kept, but an app left stopped or in maintenance
mode needs the operator as much as a failed backup does.

A hook is an argv list, started through execute.run_contained: no shell unless the
list starts with one, stdin /dev/null, a timeout that kills its whole process group,
and an environment built from an allow-list: PYOPS_* facts plus PATH, HOME, LANG,
LC_ALL and TZ. Never a secret: no password_env variable, no AWS key, no descriptor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pyops import pgdatabases, secrets
from pyops.config import Config, HooksConfig, Target
from pyops.config_rules import HOOK_KINDS, hook_tables
from pyops.errors import ConfigError, PyopsError, Terminated, ToolMissing
from pyops.execute import Stage, run_contained

log = logging.getLogger(__name__)

PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")  # of pyops' own environment
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
ERROR_CHARS = 300  # PYOPS_ERROR: one line, at most this long
LOG_LINES = 40  # of each of a hook's stdout and stderr, logged at info


class HookFailed(PyopsError):
    """A hook exited non-zero, was killed at its timeout, or could not be started."""


@dataclass(frozen=True)
class Hook:
    key: str  # where the config says it: hooks.before_backup[0], targets[1].hooks.on_error[0]
    argv: tuple[str, ...]
    timeout: float


def commands(config: Config, target: Target, kind: str) -> list[Hook]:
    """The hooks of `kind` for `target`: [hooks]' first, then the target's."""
    tables: list[tuple[str, HooksConfig]] = [
        ("hooks", config.hooks),
        (f"{target_key(config, target)}.hooks", target.hooks),
    ]
    return [
        Hook(f"{prefix}.{kind}[{i}]", argv, table.timeout_seconds)
        for prefix, table in tables
        for i, argv in enumerate(getattr(table, kind))
    ]


def not_found(program: str) -> str | None:
    """Why `program` cannot run (looked up on pyops' PATH, which hooks get too); None
    when it can."""
    if shutil.which(program, path=os.environ.get("PATH", DEFAULT_PATH)) is not None:
        return None
    if "/" in program:
        return f"{program!r} is not an executable file"
    return f"{program!r} not found on PATH"


def check_programs(config: Config) -> None:
    """`config check`: every hook's program is there, or ConfigError naming its key.
    (Other commands do not refuse the config for it: a restore host can list and
    verify before the application's scripts are installed; a backup or restore checks
    its target's hooks before running any.)"""
    for prefix, table in hook_tables(config):
        for kind in HOOK_KINDS:
            for i, argv in enumerate(getattr(table, kind)):
                problem = not_found(argv[0])
                if problem:
                    raise ConfigError(f"{prefix}.{kind}[{i}]", problem)


def target_key(config: Config, target: Target) -> str:
    """`targets[i]` of the configured target (a `databases = "all"` target's for one of
    its databases)."""
    for i, t in enumerate(config.targets):
        if t.name == target.name:
            return f"targets[{i}]"
    for i, t in enumerate(config.targets):
        if pgdatabases.is_all(t) and target.name.startswith(f"{t.name}-"):
            return f"targets[{i}]"
    return f"targets.{target.name}"


def one_line(text: str, config: Config) -> str:
    """An error as PYOPS_ERROR carries it: its first line, bounded, with any secret
    value pyops holds masked."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    for name in secrets.names(config):
        value = secrets.get(name)
        if value and len(value) >= 4:
            line = line.replace(value, "***")
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."


def describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, Terminated):
        return "terminated"
    return str(exc) or type(exc).__name__


def join(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


@dataclass
class Hooks:
    """The hooks of one target's backup or restore. `around` brackets the work;
    `problems` collects the after_* hooks that failed; `on_error` runs at most once."""

    config: Config
    target: Target
    command: Literal["backup", "restore"]
    tier: str = ""
    backup_id: str = ""  # backup: known once written; restore: the backup restored
    into: str = ""  # restore --into (empty: in place)
    problems: list[str] = field(default_factory=list)
    errored: bool = False

    @contextlib.contextmanager
    def around(self) -> Iterator[None]:
        """before_* (HookFailed if one fails), the block, then after_*: with
        PYOPS_STATUS=failed and on_error when the block or a before_* hook failed,
        whose exception then goes on. A hook of this run whose program is missing
        stops it before any hook runs (but on_error)."""
        missing = self._missing()
        if missing:
            error = f"{missing}: no hook was run, and {self._not_started()}"
            self.on_error(error)
            raise HookFailed(error)
        try:
            self._run_before()
            yield
        except BaseException as exc:
            error = describe(exc)
            self.problems += self._run_all(f"after_{self.command}", "failed", error)
            self.on_error(join(error, *self.problems))
            raise
        self.problems += self._run_all(f"after_{self.command}", "ok", "")

    def on_error(self, error: str) -> list[str]:
        """on_error, once: the target ended FAILED. What failed of it (also added to
        `problems`)."""
        if self.errored:
            return []
        self.errored = True
        failed = self._run_all("on_error", "failed", error)
        self.problems += failed
        return failed

    def settle(self, done: str) -> None:
        """After a successful `around`: an after_* hook that failed fails the target
        (on_error runs), saying the work itself is `done`."""
        if self.problems:
            self.on_error(join(*self.problems))
            raise HookFailed(join(*self.problems, done))

    def _not_started(self) -> str:
        if self.command == "backup":
            return "the backup was not started"
        return "the restore was not started: nothing was changed"

    def _missing(self) -> str | None:
        """The first hook of this run (before_*, after_*, on_error) that cannot start:
        an after_* hook that cannot undo what before_* did must stop the run first."""
        for kind in (f"before_{self.command}", f"after_{self.command}", "on_error"):
            for hook in commands(self.config, self.target, kind):
                problem = not_found(hook.argv[0])
                if problem:
                    return f"{hook.key}: {problem}"
        return None

    def _run_before(self) -> None:
        for hook in commands(self.config, self.target, f"before_{self.command}"):
            problem = self._run(hook, f"before_{self.command}", "ok", "")
            if problem:
                raise HookFailed(f"{problem}; {self._not_started()}")

    def _run_all(self, kind: str, status: str, error: str) -> list[str]:
        """Every hook of `kind`, each whatever the others did; what failed."""
        problems = []
        for hook in commands(self.config, self.target, kind):
            problem = self._run(hook, kind, status, error)
            if problem:
                log.error("%s %s: %s", self.command, self.target.name, problem)
                problems.append(problem)
        return problems

    def environment(self, kind: str, status: str, error: str) -> dict[str, str]:
        """The allow-list: nothing of pyops' environment but PASSED."""
        env = {name: os.environ[name] for name in PASSED if name in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        env.update(
            PYOPS_COMMAND=self.command,
            PYOPS_HOOK=kind,
            PYOPS_TARGET=self.target.name,
            PYOPS_TIER=self.tier,
            PYOPS_BACKUP_ID=self.backup_id,
            PYOPS_STATUS=status,
            PYOPS_ERROR=one_line(error, self.config),
        )
        if self.command == "restore":
            env["PYOPS_RESTORE_INTO"] = self.into
        return env

    def _run(self, hook: Hook, kind: str, status: str, error: str) -> str | None:
        """Run one hook; None when it succeeded, else what went wrong (with its stderr
        tail)."""
        argv = shlex.join(hook.argv)
        log.info("%s %s: running %s: %s", self.command, self.target.name, hook.key, argv)
        # in /, as under systemd: a hook that works by hand works from the timer too
        stage = Stage(hook.key, hook.argv, self.environment(kind, status, error), cwd="/")
        try:
            done = run_contained(stage, hook.timeout)
        except ToolMissing:
            return f"{hook.key} ({argv}): {hook.argv[0]} not found on PATH"
        except OSError as exc:
            return f"{hook.key} ({argv}) could not start: {exc.strerror or exc}"
        for name, text in (("stdout", done.stdout), ("stderr", done.stderr)):
            lines = [ln for ln in text.splitlines() if ln.strip()]
            for line in lines[-LOG_LINES:]:
                log.info("%s %s: %s %s: %s", self.command, self.target.name, hook.key, name, line)
        if done.timed_out:
            how = f"did not finish within {hook.timeout:g}s and was killed"
        elif done.returncode < 0:
            how = f"was killed by {_signal_name(-done.returncode)}"
        elif done.returncode != 0:
            how = f"exited with status {done.returncode}"
        else:
            return None
        tail = " | ".join([ln.strip() for ln in done.stderr.splitlines() if ln.strip()][-6:])
        return f"{hook.key} ({argv}) {how}" + (f": {tail}" if tail else "")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
