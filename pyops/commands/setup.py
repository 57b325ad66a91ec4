"""pyops init and pyops config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from pyops import catalog, config
from pyops.commands import FORMAT, Ctx, emit, pass_ctx
from pyops.errors import PyopsError
from pyops.starter import starter_config

# --- init / config ---------------------------------------------------------------


@click.command()
@click.option(
    "--path",
    "repo_path",
    type=click.Path(path_type=Path),
    help="repository directory for a new config (default /var/backups/pyops)",
)
@pass_ctx
def init(ctx: Ctx, repo_path: Path | None) -> None:
    """Write a commented starter config (0600) and create the repository (0700)."""
    path = ctx.path
    if path.exists():
        cfg = config.load(path)
        if repo_path and repo_path != cfg.repository.path:
            raise PyopsError(
                f"{path} exists with repository.path = {cfg.repository.path}; edit it instead"
            )
        click.echo(f"{path} exists; left as it is")
    else:
        repo = (repo_path or Path("/var/backups/pyops")).absolute()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(starter_config(repo))
        click.echo(f"wrote {path} (0600): add your targets, then `pyops config check`")
        cfg = config.load(path)
    catalog.make_private_dir(cfg.repository.path)
    os.chmod(cfg.repository.path, 0o700)
    click.echo(f"repository {cfg.repository.path} ready (0700)")


@click.group("config")
def config_group() -> None:
    """Validate or show the configuration."""


@config_group.command("check")
@pass_ctx
def config_check(ctx: Ctx) -> None:
    """Validate the config; exit 2 naming the first bad key."""
    app = ctx.app()
    click.echo(f"{ctx.path}: ok ({len(app.config.targets)} targets)")


@config_group.command("show")
@FORMAT
@pass_ctx
def config_show(ctx: Ctx, fmt: str) -> None:
    """The effective config with defaults filled in (it holds no secrets)."""
    data = config.as_data(ctx.app().config)
    if fmt == "json":
        emit(fmt, data, str)
        return
    click.echo(f"# effective configuration from {ctx.path}")
    click.echo(_toml(data))


def _toml(data: dict[str, Any]) -> str:
    lines: list[str] = []

    def value(v: Any) -> str:
        if v is None:
            return '""  # unset'
        return json.dumps(v)

    for section, body in data.items():
        if section == "targets":
            continue
        if section == "maintenance":
            for rule in body.get("cleanup", []):
                lines.append("\n[[maintenance.cleanup]]")
                lines += [f"{k} = {value(v)}" for k, v in rule.items()]
            body = {k: v for k, v in body.items() if k != "cleanup"}
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in body.items()]
    for t in data.get("targets", []):
        lines.append("\n[[targets]]")
        lines += [f"{k} = {value(v)}" for k, v in t.items()]
    return "\n".join(lines).lstrip("\n")
