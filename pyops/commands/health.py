"""pyops health: the one command whose exit code follows Nagios, not the usual table."""

from __future__ import annotations

import click

from pyops import notify
from pyops.actions import health as health_action
from pyops.commands import Ctx, pass_ctx
from pyops.health import render


@click.command("health")
@click.option(
    "--check",
    "checks",
    multiple=True,
    metavar="NAME",
    type=click.Choice(health_action.NAMES),
    help="run only this check (repeatable); default: every check whose inputs are configured",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "prometheus"]),
    default="text",
    show_default=True,
    help="text for people, json for scripts, prometheus for node_exporter's textfile format",
)
@pass_ctx
def health(ctx: Ctx, checks: tuple[str, ...], fmt: str) -> None:
    """Check backups, databases, keys and services; exit per Nagios.

    Exit codes: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; the worst status wins
    (critical > warning > unknown > ok). A broken config still exits 2.
    """
    app = ctx.app()
    # a manual --check spot test is not the host's health: nobody is told of it
    with notify.run(app, "health", enabled=not checks) as note:
        report = health_action.run(app, checks)
        note.outcome = notify.health_outcome(report)
    if fmt == "json":
        click.echo(render.as_json(report))
    elif fmt == "prometheus":
        click.echo(render.prometheus(report))
    else:
        click.echo(render.text(report))
    raise SystemExit(report.exit_code)
