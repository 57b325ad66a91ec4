"""pyops init and pyops config."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import click

from pyops import config, pgdatabases
from pyops.app import App
from pyops.catalog import Catalog
from pyops.commands import FORMAT, Ctx, emit, pass_ctx
from pyops.errors import ConfigError, PyopsError
from pyops.fsutil import make_private_dir
from pyops.identity import create_key
from pyops.starter import starter_config

# --- init / config ---------------------------------------------------------------


@click.command()
@click.option(
    "--path",
    "repo_path",
    type=click.Path(path_type=Path),
    help="repository directory for a new config (default /var/backups/pyops)",
)
@click.option(
    "--new-key",
    is_flag=True,
    help="create the missing repository.key_file of an existing config, and sign the "
    "repository's older (unauthenticated) manifests after checking their artifacts",
)
@pass_ctx
def init(ctx: Ctx, repo_path: Path | None, new_key: bool) -> None:
    """Write a commented starter config (0600), create the repository (0700), its
    key (0600) and its identity."""
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
        key = path.absolute().parent / "repository.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(starter_config(repo, key))
        click.echo(f"wrote {path} (0600): add your targets, then `pyops config check`")
        cfg = config.load(path)
        new_key = True
    make_private_dir(cfg.repository.path)
    os.chmod(cfg.repository.path, 0o700)
    key_file = cfg.repository.key_file
    if key_file is None:
        click.echo(
            "warning: no repository.key_file: manifests are unauthenticated. Add "
            'key_file = "/etc/pyops/repository.key" to [repository], then run '
            "`pyops init --new-key`",
            err=True,
        )
    elif not key_file.exists():
        if not new_key:
            raise ConfigError(
                "repository.key_file",
                f"{key_file} does not exist. Restore it from your key custody (a new key "
                "cannot authenticate existing backups); if this repository never had a key, "
                "run `pyops init --new-key`",
            )
        create_key(key_file)
        click.echo(f"created repository key {key_file} (0600): keep a copy with the gpg key")
    app = ctx.app()
    with app.lock("init"):
        if new_key and app.key:
            seal_identity(app, app.key)
        identity = app.identity(create=True)
        assert identity is not None
        if new_key and app.key:
            signed = adopt_unauthenticated(app)
            if signed:
                click.echo(f"signed {signed} older manifests whose artifacts check out")
            if cfg.offsite.bucket:
                # the bucket's copy of the identity and of each manifest, sealed too: a
                # disaster-recovery host with the key trusts nothing else
                from pyops.actions import sync as sync_action

                try:
                    names = [t.name for t in cfg.targets]
                    stored = pgdatabases.stored_names(cfg, app.local(), names)
                    result = sync_action.sync(app, stored)
                except PyopsError as exc:
                    result = None
                    click.echo(f"warning: the bucket was not updated: {exc}", err=True)
                if result is not None:
                    click.echo(
                        f"bucket: {len(result.uploaded)} backups or manifests updated, "
                        f"{len(result.present)} already there, {len(result.failed)} failed"
                        + ("; run `pyops sync`" if result.failed else "")
                    )
    click.echo(f"repository {cfg.repository.path} ready (0700), id {identity.repository_id}")


def seal_identity(app: App, key: bytes) -> None:
    """An identity written before the repository had a key gets its MAC now."""
    from pyops.identity import IDENTITY_KEY, Identity
    from pyops.storage import NotFound, read_small

    store = app.local_store()
    try:
        found = Identity.parse(read_small(store, IDENTITY_KEY, 1 << 16), IDENTITY_KEY)
    except NotFound:
        return
    if not found.mac:
        store.put_bytes(IDENTITY_KEY, found.sealed(key).to_json())


def adopt_unauthenticated(app: App) -> int:
    """Seal each manifest the repository held before it had a key (no MAC) whose
    artifact still has the manifest's sha256. Whoever runs this with the key vouches
    for the repository as it is now."""
    identity = app.identity()
    store = app.local_store()
    lenient = Catalog(
        store,
        repository_id=identity.repository_id if identity else None,
        key=app.key,
        allow_unauthenticated=True,
    )
    signed = 0
    for backup in lenient.backups():
        if backup.authenticated or backup.manifest.mac:
            continue
        digest = hashlib.sha256()
        try:
            for chunk in lenient.chunks(backup):
                digest.update(chunk)
        except PyopsError as exc:
            click.echo(f"not signed: {backup.id}: {exc}", err=True)
            continue
        if digest.hexdigest() != backup.manifest.sha256:
            click.echo(f"not signed: {backup.id}: its artifact does not match", err=True)
            continue
        lenient.write_manifest(backup.manifest)
        signed += 1
    return signed


@click.group("config")
def config_group() -> None:
    """Validate or show the configuration."""


@config_group.command("check")
@pass_ctx
def config_check(ctx: Ctx) -> None:
    """Validate the config; exit 2 naming the first bad key."""
    from pyops import config_rules, hooks, permissions

    app = ctx.app()
    hooks.check_programs(app.config)  # a hook's program missing: exit 2, naming its key
    config_rules.check_notify_urls(app.config)  # each notify URL one Apprise can send to
    for problem in permissions.unsafe_paths(app.config):
        click.echo(f"warning: unsafe permissions: {problem}", err=True)
    if app.config.repository.key_file is None:
        click.echo(
            "warning: manifests are unauthenticated: set repository.key_file and run "
            "`pyops init --new-key`",
            err=True,
        )
    else:
        app.key  # noqa: B018 - a missing or malformed key file is exit 2, naming it
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
