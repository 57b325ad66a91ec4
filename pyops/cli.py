"""The command line: parsing, output, and the one place errors become exit codes
(`EXIT_CODES`, which `pyops --help` prints too).
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import sys
from datetime import UTC, datetime

import click

from pyops.commands import Ctx
from pyops.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    ConfigError,
    PyopsError,
    Terminated,
    UsageError,
    os_error_message,
)

log = logging.getLogger("pyops")

# The one table from how a run ended to its exit code: the first row whose classes
# match wins. (`pyops health` reports its checks with its own codes: docs/health.md.)
EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], int, str], ...] = (
    (
        (UsageError, ConfigError, click.UsageError),
        EXIT_USAGE,
        "usage or configuration error; the message names the option or config key",
    ),
    ((KeyboardInterrupt,), EXIT_INTERRUPTED, "interrupted (SIGINT, Ctrl-C)"),
    ((Terminated,), EXIT_TERMINATED, "terminated (SIGTERM: systemctl stop, a unit's timeout)"),
    (
        (PyopsError, click.ClickException, click.Abort, OSError, Exception),
        EXIT_FAILED,
        "the operation failed, or was refused or aborted",
    ),
)


def exit_code(exc: BaseException) -> int:
    for classes, code, _ in EXIT_CODES:
        if isinstance(exc, classes):
            return code
    raise exc


def exit_codes_help() -> str:
    rows = sorted([(0, "success"), *((code, meaning) for _, code, meaning in EXIT_CODES)])
    lines = [f"  {code:<4} {meaning}" for code, meaning in rows]
    return (
        "\b\nExit codes (whatever fails, nothing half-done is left behind):\n"
        + "\n".join(lines)
        + "\n  pyops health, pyops fleet: 0 ok, 1 warning, 2 critical, 3 unknown"
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def setup_logging(verbose: int, quiet: bool, fmt: str) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("pyops: %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if not verbose:
        logging.getLogger("plumbum").setLevel(logging.WARNING)
        for noisy in ("gnupg", "botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs: a timer's `pyops backup`
    should not pay for loading maintenance, health and report code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name].split(":")
        command = getattr(importlib.import_module(f"pyops.commands.{module}"), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=exit_codes_help(),
    invoke_without_command=True,  # for --version, which reads --config wherever it is
    no_args_is_help=True,
    subcommand_metavar="COMMAND [ARGS]...",
)
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="config file (else $PYOPS_CONFIG, ./pyops.toml, /etc/pyops/pyops.toml)",
)
@click.option("-v", "--verbose", count=True, help="debug logging (every command line run)")
@click.option("-q", "--quiet", is_flag=True, help="warnings and errors only")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--version",
    "show_version",
    is_flag=True,
    help="show the version, the config path and the tools found (pg_dump, gpg, ...), and exit",
)
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    verbose: int,
    quiet: bool,
    log_format: str,
    show_version: bool,
) -> None:
    """pyops: backups of PostgreSQL, SQLite and files you can restore at 3 a.m."""
    if show_version:
        from pyops import versions

        click.echo(versions.report(config_path))
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        ctx.fail("Missing command.")
    setup_logging(verbose, quiet, log_format)
    ctx.obj = Ctx(config_path)


COMMANDS = {
    "init": "setup:init",
    "config": "setup:config_group",
    "backup": "data:backup",
    "list": "data:list_",
    "verify": "data:verify",
    "restore": "data:restore",
    "prune": "data:prune",
    "sync": "data:sync",
    "drill": "data:drill",
    "history": "data:history",
    "maintenance": "maintenance:maintenance",
    "health": "health:health",
    "fleet": "fleet:fleet",
    "db": "report:db_group",
    "systemd": "ops:systemd_group",
    "schedule": "ops:schedule_group",
}


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = cli.main(standalone_mode=False)
    except SystemExit:
        raise
    except BaseException as exc:
        if isinstance(exc, click.exceptions.Abort) and isinstance(
            exc.__context__, KeyboardInterrupt
        ):
            exc = exc.__context__  # click's stand-in for Ctrl-C inside a command
        say(exc)
        sys.exit(exit_code(exc))
    sys.exit(code if isinstance(code, int) else 0)


def say(exc: BaseException) -> None:
    """What ended the run, for the operator."""
    if isinstance(exc, click.exceptions.Abort):
        click.echo("pyops: aborted; nothing was changed", err=True)
    elif isinstance(exc, click.ClickException):
        exc.show()
    elif isinstance(exc, PyopsError):
        click.echo(f"pyops: error: {exc}", err=True)
    elif isinstance(exc, OSError):
        click.echo(f"pyops: error: {os_error_message(exc)}", err=True)
    elif isinstance(exc, KeyboardInterrupt):
        click.echo("pyops: interrupted; temp files removed, nothing half-done left", err=True)
    elif isinstance(exc, Terminated):
        click.echo("pyops: terminated; temp files removed, nothing half-done left", err=True)
    else:
        log.debug("unexpected error", exc_info=exc)
        click.echo(f"pyops: unexpected error: {type(exc).__name__}: {exc} (run with -v)", err=True)
