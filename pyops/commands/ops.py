"""pyops systemd and pyops schedule: running pyops unattended."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from pyops import notify
from pyops import systemd as units
from pyops.calendar import DEFAULT_JOBS
from pyops.commands import Ctx, pass_ctx
from pyops.errors import PyopsError
from pyops.scheduler import Scheduler, run_as_child

log = logging.getLogger(__name__)


def _pyops_path() -> str:
    found = shutil.which("pyops", path=str(Path(sys.executable).parent)) or shutil.which("pyops")
    if not found:
        raise PyopsError("cannot find the pyops executable to put in ExecStart=")
    return str(Path(found).absolute())


def _settings(ctx: Ctx, user: str, user_units: bool) -> units.Settings:
    app = ctx.app()
    return units.Settings.from_config(
        app.config,
        _pyops_path(),
        ctx.path.absolute(),
        user=user,
        user_units=user_units,
    )


def shipped() -> dict[str, str]:
    """The units in the repository's systemd/ directory: the defaults of scripts/install.sh."""
    root = Path("/var/backups/pyops")
    return units.render(
        units.Settings(
            "/opt/pyops/bin/pyops",
            Path("/etc/pyops/pyops.toml"),
            writable=(str(root), str(root / ".pyops"), "/etc/pyops/gnupg"),
        )
    )


def _write(dest: Path, rendered: dict[str, str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(rendered.items()):
        path = dest / name
        path.write_text(text)
        os.chmod(path, 0o644)
        written.append(path)
    return written


def _credentials(settings: units.Settings, create: bool) -> None:
    """Say where each LoadCredential= reads from, and which are still missing; `create`:
    make the credential store (0700) if there is none."""
    for name, path in settings.credentials:
        if create and not os.path.lexists(path.parent):
            path.parent.mkdir(mode=0o700, parents=True)
            click.echo(f"created {path.parent} (0700)")
        if os.path.exists(path):  # False, too, where we may not look (/etc/credstore)
            click.echo(f"credential {name}: {path}")
        else:
            click.echo(
                f"credential {name}: put the secret in {path} (one line, mode 0600): until "
                "then the units fail to start (status 243/CREDENTIALS)"
            )


@click.group("systemd")
def systemd_group() -> None:
    """Write or install the systemd units (timers for backup, maintenance, health, drill)."""


@systemd_group.command("render")
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    default=Path("pyops-units"),
    show_default=True,
    help="directory to write the unit files into",
)
@click.option("--service-user", default="pyops", show_default=True, help="User=/Group=")
@click.option("--user", "user_units", is_flag=True, help="units for systemctl --user")
@pass_ctx
def render(ctx: Ctx, dest: Path, service_user: str, user_units: bool) -> None:
    """Render the units with this config's paths filled in."""
    settings = _settings(ctx, service_user, user_units)
    for path in _write(dest, units.render(settings)):
        click.echo(str(path))
    _credentials(settings, create=False)


@systemd_group.command("install")
@click.option("--user", "user_units", is_flag=True, help="install for systemctl --user")
@click.option("--enable", is_flag=True, help="enable and start the default timers")
@click.option("--service-user", default="pyops", show_default=True, help="User=/Group=")
@pass_ctx
def install(ctx: Ctx, user_units: bool, enable: bool, service_user: str) -> None:
    """Install the units (system: /etc/systemd/system; --user: ~/.config/systemd/user)."""
    dest = Path.home() / ".config/systemd/user" if user_units else Path("/etc/systemd/system")
    settings = _settings(ctx, service_user, user_units)
    for path in _write(dest, units.render(settings)):
        click.echo(f"installed {path}")
    _credentials(settings, create=True)
    systemctl = ["systemctl", *(["--user"] if user_units else [])]
    if shutil.which("systemctl") is None:
        raise PyopsError("systemctl not found: units written, but systemd is not running here")
    subprocess.run([*systemctl, "daemon-reload"], check=True)
    if enable:
        timers = units.default_timers()
        subprocess.run([*systemctl, "enable", "--now", *timers], check=True)
        click.echo(f"enabled {', '.join(timers)}")


@systemd_group.command("on-failure", hidden=True)
@click.argument("unit")
@pass_ctx
def on_failure(ctx: Ctx, unit: str) -> None:
    """Called by pyops-failure@.service when a pyops unit fails."""
    log.error("systemd unit %s failed; see journalctl -u %s", unit, unit)
    notify.unit_failed(ctx.app(), unit)


@click.group("schedule")
def schedule_group() -> None:
    """A foreground scheduler with the timers' calendar, for hosts without systemd."""


@schedule_group.command("run")
@pass_ctx
def run(ctx: Ctx) -> None:
    """Run backups, maintenance, health and drills on the calendar until SIGTERM."""
    app = ctx.app()
    runner = run_as_child(ctx.path.absolute(), app.config)
    scheduler = Scheduler(DEFAULT_JOBS, runner, app.state)
    log.info("schedule: %s", "; ".join(f"{j.name} at {j.oncalendar}" for j in DEFAULT_JOBS))
    scheduler.loop()
