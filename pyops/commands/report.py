"""pyops db report: PostgreSQL insight, read-only."""

from __future__ import annotations

import click

from pyops.actions import report as action
from pyops.commands import FORMAT, Ctx, emit, pass_ctx
from pyops.errors import EXIT_FAILED
from pyops.report import render


@click.group("db")
def db_group() -> None:
    """PostgreSQL insight."""


@db_group.command("report")
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="NAME",
    help="a PostgreSQL target (repeatable); default: every PostgreSQL target",
)
@click.option(
    "--section",
    "sections",
    multiple=True,
    type=click.Choice(action.SECTIONS),
    metavar="S",
    help=f"repeatable; default: all of {' '.join(action.SECTIONS)}",
)
@click.option(
    "--long-running-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="long-running lists statements (and open transactions) running this long; "
    "default: [health] long_running_seconds",
)
@FORMAT
@pass_ctx
def report(
    ctx: Ctx,
    targets: tuple[str, ...],
    sections: tuple[str, ...],
    long_running_seconds: float | None,
    fmt: str,
) -> None:
    """Connections, sizes, index use, slow and N+1 statements, bloat, locks, wraparound,
    integrity, and recommendations with the SQL to apply. Changes nothing.

    Exit 0 with the report; 1 when a target could not be reached or a section could
    not be read (the rest is still printed); 2 for a bad option or a --target that is
    not PostgreSQL."""
    app = ctx.app()
    selected = action.select(app, targets)
    results = action.run(selected, sections, action.options(app, long_running_seconds))
    emit(fmt, render.document(results), lambda: render.text(results))
    if any(r.failed for r in results.values()):
        raise SystemExit(EXIT_FAILED)
