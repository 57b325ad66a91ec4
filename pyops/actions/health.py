"""pyops health: run the selected checks, keep the counters for the next run, write
the textfile metrics (runs without --check only). Read-only otherwise: no lock, so
it runs during a backup."""

from __future__ import annotations

import logging

from pyops import metrics
from pyops.app import App
from pyops.config_rules import CHECK_NAMES
from pyops.errors import PyopsError
from pyops.health import registry, render
from pyops.health.context import Context
from pyops.health.render import Report

log = logging.getLogger(__name__)
NAMES = CHECK_NAMES


def run(app: App, names: tuple[str, ...] = ()) -> Report:
    selected, skipped = registry.select(app.config, names)
    ctx = Context(app)
    try:
        results = registry.run(ctx, selected)
    finally:
        ctx.close()
    ctx.save_counters()
    report = Report(results, skipped, ctx.now.timestamp())
    if not names:  # a manual --check spot test must not replace the full picture
        try:
            metrics.write_textfile(app, "health", render.prometheus(report).splitlines())
        except PyopsError as exc:
            log.warning("health metrics not written: %s", exc)
    return report
