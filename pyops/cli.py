"""The command line: parsing, output, and the one place errors become exit codes.

Exit codes: 0 success; 1 the operation failed or was aborted (nothing half-done is
left); 2 usage or configuration error, naming the option or key.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import sys
from datetime import UTC, datetime

import click

from pyops import __version__
from pyops.commands import Ctx
from pyops.errors import EXIT_FAILED, EXIT_USAGE, PyopsError, Terminated, os_error_message

log = logging.getLogger("pyops")


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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="config file (else $PYOPS_CONFIG, ./pyops.toml, /etc/pyops/pyops.toml)",
)
@click.option("-v", "--verbose", count=True, help="debug logging (every command line run)")
@click.option("-q", "--quiet", is_flag=True, help="warnings and errors only")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.version_option(__version__, prog_name="pyops")
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, verbose: int, quiet: bool, log_format: str
) -> None:
    """pyops: backups of PostgreSQL, SQLite and files you can restore at 3 a.m.

    Exit codes: 0 success, 1 failed or aborted (nothing half-done left behind),
    2 usage or configuration error (the message names the option or key).
    """
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
    "db": "report:db_group",
    "systemd": "ops:systemd_group",
    "schedule": "ops:schedule_group",
}


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("pyops: aborted; nothing was changed", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except PyopsError as exc:
        click.echo(f"pyops: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        click.echo(f"pyops: error: {os_error_message(exc)}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("pyops: interrupted; temp files removed, nothing half-done left", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("pyops: terminated; temp files removed, nothing half-done left", err=True)
        sys.exit(143)
    except SystemExit:
        raise
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        click.echo(f"pyops: unexpected error: {type(exc).__name__}: {exc} (run with -v)", err=True)
        sys.exit(EXIT_FAILED)
