"""pyops db report: connect to each PostgreSQL target, build the asked sections,
close. Read-only (the session is default_transaction_read_only), so no repository
lock and no run-log entry: like `health`, it may run at any time, during a backup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pyops.app import App
from pyops.config import PostgresTarget
from pyops.errors import ConfigError, PyopsError, UsageError
from pyops.pgfacts import Thresholds
from pyops.report import context, registry
from pyops.report.model import Section
from pyops.sources import postgres

SECTIONS = registry.SECTIONS


@dataclass
class TargetReport:
    name: str
    where: str = ""
    server_version: str = ""
    sections: dict[str, Section] = field(default_factory=dict)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or any(s.error for s in self.sections.values())


def select(app: App, names: Sequence[str]) -> list[PostgresTarget]:
    """The named targets, each of which must be PostgreSQL; by default every one."""
    if not names:
        chosen = [t for t in app.config.targets if isinstance(t, PostgresTarget)]
        if not chosen:
            raise ConfigError(
                "targets", 'no PostgreSQL target configured: db report needs type = "postgres"'
            )
        return chosen
    out = []
    for name in dict.fromkeys(names):
        target = app.config.target(name)
        if not isinstance(target, PostgresTarget):
            raise UsageError(
                f"--target: target {name!r} is a {target.type} target: db report reads "
                "PostgreSQL targets only",
                "--target",
            )
        out.append(target)
    return out


def options(app: App, long_running_seconds: float | None) -> context.Options:
    """Thresholds from [health] (pgfacts.Thresholds), as `pyops health` reads them."""
    return context.Options(
        thresholds=Thresholds.from_health(app.config.health),
        listed_long_running_seconds=long_running_seconds,
    )


def run(
    targets: Sequence[PostgresTarget], sections: Sequence[str], opts: context.Options
) -> dict[str, TargetReport]:
    results = {}
    for target in targets:
        report = TargetReport(target.name, where=postgres.where(target))
        try:
            conn = context.connect(target)
        except PyopsError as exc:
            report.error = str(exc)
            results[target.name] = report
            continue
        try:
            probe = context.start(target, conn, opts, registry.BUILDERS)
            report.server_version = probe.server_version
            report.sections = registry.build(probe, list(sections))
        finally:
            conn.close()
        results[target.name] = report
    return results
