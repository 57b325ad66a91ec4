"""What every command shares: the context object, --format, output, the run log."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from pyops import config, runlog, secrets
from pyops.app import App
from pyops.errors import EXIT_FAILED

log = logging.getLogger("pyops")
FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json (one document on stdout) for scripts",
)


class Ctx:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._app: App | None = None

    @property
    def path(self) -> Path:
        return config.find_config(self.config_path)

    def app(self, allow_unauthenticated: bool = False) -> App:
        if self._app is None:
            from pyops import permissions

            loaded = config.load(self.path)
            permissions.enforce(loaded)
            # the pyops process (not in-process use): no child inherits a password
            # variable or the AWS keys; the one that needs a password gets PGPASSWORD
            secrets.withhold(secrets.names(loaded))
            self._app = App(loaded, allow_unauthenticated=allow_unauthenticated)
        return self._app


pass_ctx = click.make_pass_decorator(Ctx)
ALLOW_UNAUTHENTICATED = click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="use manifests the repository key cannot authenticate (the key is lost): loudly",
)


def emit(fmt: str, data: Any, text: Callable[[], str]) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        out = text()
        if out:
            click.echo(out)


def emit_results(
    fmt: str,
    key: str,
    results: Sequence[Any],
    ok_line: Callable[[Any], str],
    failed_line: Callable[[Any], str],
) -> None:
    """Per-item results (each with .ok and .as_dict()); exit 1 if any failed."""
    emit(
        fmt,
        {key: [r.as_dict() for r in results]},
        lambda: "\n".join(ok_line(r) if r.ok else failed_line(r) for r in results),
    )
    if not all(r.ok for r in results):
        raise SystemExit(EXIT_FAILED)


@contextmanager
def recorded(app: App, command: str, targets: list[str]) -> Iterator[dict[str, Any]]:
    """Append one line to the run log however the command ends."""
    record: dict[str, Any] = {
        "command": command,
        "targets": targets,
        "started_at": datetime.now(UTC).isoformat(),
        "pid": os.getpid(),
    }
    t0 = time.monotonic()
    try:
        yield record
        record.setdefault("result", "ok")
    except BaseException as exc:
        record["result"] = "failed"
        record["error"] = str(exc) or type(exc).__name__
        raise
    finally:
        record["duration_s"] = round(time.monotonic() - t0, 3)
        try:
            runlog.append(app.state, record)
        except OSError as exc:
            log.warning("could not write the run log: %s", exc)
