"""pyops maintenance: vacuum, analyze, reindex, refresh, clean up and check databases."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import click

from pyops import notify
from pyops.actions import maintenance as action
from pyops.commands import FORMAT, Ctx, emit, pass_ctx, recorded
from pyops.errors import EXIT_FAILED, PyopsError
from pyops.maintenance import ALL_OPERATIONS, POSTGRES_OPERATIONS, SQLITE_OPERATIONS, Step
from pyops.progress import human

log = logging.getLogger(__name__)


def parse_operations(values: Sequence[str]) -> list[str]:
    """--operation may repeat and may hold a comma-separated list."""
    ops = [op.strip() for value in values for op in value.split(",") if op.strip()]
    unknown = [op for op in ops if op not in ALL_OPERATIONS]
    if unknown:
        raise click.BadParameter(
            f"unknown operation {', '.join(map(repr, unknown))} (PostgreSQL: "
            f"{' '.join(POSTGRES_OPERATIONS)}; SQLite: {' '.join(SQLITE_OPERATIONS)})",
            param_hint="'--operation'",
        )
    return list(dict.fromkeys(ops))


@click.command()
@click.option("--target", "targets", multiple=True, metavar="NAME", help="only these targets")
@click.option(
    "--operation",
    "operations",
    multiple=True,
    metavar="OP",
    help=f"repeat or comma-separate; PostgreSQL: {' '.join(POSTGRES_OPERATIONS)}; "
    f"SQLite: {' '.join(SQLITE_OPERATIONS)}",
)
@click.option("--all", "all_", is_flag=True, help="every operation that applies to each target")
@click.option("--dry-run", is_flag=True, help="print the SQL that would run; change nothing")
@FORMAT
@pass_ctx
def maintenance(
    ctx: Ctx,
    targets: tuple[str, ...],
    operations: tuple[str, ...],
    all_: bool,
    dry_run: bool,
    fmt: str,
) -> None:
    """Database maintenance, one object at a time, under a lock timeout.

    Exit 1 if any step failed (an SQL error, corruption found, a database that cannot be
    reached). A step that timed out waiting for a lock is reported (status "timeout")
    and logged as a warning but does not fail the run: the next run retries it.
    Files targets are skipped."""
    ops = parse_operations(operations)
    if bool(ops) == all_:
        raise click.UsageError("give --operation OP... or --all (not both)")
    app = ctx.app()
    selected = app.config.select(targets)
    if not selected:
        raise PyopsError("no targets configured: add [[targets]] to the config")
    names = [t.name for t in selected]
    lock = contextlib.nullcontext() if dry_run else app.lock("maintenance")
    with (
        notify.run(app, "maintenance", names, enabled=not dry_run) as note,
        lock,
        recorded(app, "maintenance", names) as rec,
    ):
        report = action.run(app, selected, None if all_ else ops, dry_run)
        note.outcome = notify.maintenance_outcome(report)
        rec.update(operations="all" if all_ else ops, dry_run=dry_run, summary=report.summary())
        if report.failed:
            rec["result"] = "failed"
            rec["failed"] = [_label(s) for s in report.steps if s.status == "failed"]
    timeouts = [s for s in report.steps if s.status == "timeout"]
    if timeouts:
        log.warning(
            "%d step(s) timed out waiting for a lock (maintenance.lock_timeout_seconds = %s) "
            "and were left for the next run: %s",
            len(timeouts),
            app.config.maintenance.lock_timeout_seconds,
            ", ".join(_label(s) for s in timeouts),
        )
    emit(fmt, report.as_dict(), lambda: dry_run_text(report) if dry_run else text(report))
    if report.failed:
        raise SystemExit(EXIT_FAILED)


def _label(step: Step) -> str:
    return " ".join(p for p in (step.target, step.operation, step.object) if p)


def dry_run_text(report: action.Report) -> str:
    """The SQL, one statement per line, with a comment line where the target changes and
    one per skipped step, so the output can be read, diffed or fed to psql/sqlite3."""
    out: list[str] = []
    current = None
    for statement in report.statements:
        if statement["target"] != current:
            current = statement["target"]
            out.append(f"-- target {current}")
        out.append(statement["sql"])
    for step in report.steps:
        if step.status in ("skipped", "failed", "timeout"):
            why = step.details.get("note") or step.details.get("error") or ""
            out.append(f"-- {step.status}: {_label(step)}: {why}")
    return "\n".join(out)


def _value(key: str, value: Any) -> str:
    if "bytes" in key.split("_"):
        return human(value) if isinstance(value, int | float) else str(value)
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return str(value)


def details_text(details: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={_value(k, v)}" if k not in ("note", "error") else str(v)
        for k, v in details.items()
        if v is not None and k not in ("where",)
    )


def text(report: action.Report) -> str:
    rows = [
        (s.target, s.operation, s.object, s.status, f"{s.duration_s:.2f}s", details_text(s.details))
        for s in report.steps
    ]
    if not rows:
        return "nothing to do"
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:5])) + "  " + r[5] for r in rows
    ]
    summary = report.summary()
    lines.append(", ".join(f"{v} {k}" for k, v in summary.items()))
    return "\n".join(line.rstrip() for line in lines)
