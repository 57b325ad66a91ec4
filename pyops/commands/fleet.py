"""pyops fleet: every host under the bucket prefix; exit codes per Nagios, like health."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from pyops.actions import fleet as fleet_action
from pyops.commands import Ctx, pass_ctx
from pyops.errors import PyopsError
from pyops.fleet import html, render
from pyops.fsutil import temp_name


@contextlib.contextmanager
def output_to(path: Path | None) -> Iterator[Callable[[str], object]]:
    """A writer to standard output, or to `path`: atomically, 0644 (a web server or
    node_exporter reads it), all or nothing."""
    if path is None:
        yield sys.stdout.write
        sys.stdout.flush()
        return
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f.write
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PyopsError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@click.command("fleet")
@click.option(
    "--prefix",
    metavar="P",
    help="the bucket prefix the hosts write under (<P>/<host>/); default: [offsite] prefix",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "prometheus", "html"]),
    default="text",
    show_default=True,
    help="text for people, json for scripts (one host a line), prometheus for "
    "node_exporter's textfile collector, html for one self-contained page",
)
@click.option(
    "--output",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write to FILE (atomically, 0644) instead of standard output",
)
@click.option(
    "--keys-dir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="the hosts' repository keys as DIR/<host>.key: their indexes are authenticated",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="a host whose key is not in --keys-dir is no warning (still shown unauthenticated)",
)
@pass_ctx
def fleet(
    ctx: Ctx,
    prefix: str | None,
    fmt: str,
    output: Path | None,
    keys_dir: Path | None,
    allow_unauthenticated: bool,
) -> None:
    """Every host and target under the bucket prefix, read from the bucket alone:
    freshness per tier against [health], size trend, offsite copy, last drill and RTO,
    and anything stale, shrinking, refused or unauthenticated. Needs read access only.

    Exit codes as `pyops health`: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the bucket
    could not be listed, or holds no host); the worst host wins. A broken config or
    option exits 2."""
    app = ctx.app()
    with output_to(output) as write:
        if fmt == "json":  # streamed a host at a time: flat memory however many hosts
            writer = render.JsonWriter(write)
            view = fleet_action.run(
                app, prefix, keys_dir, allow_unauthenticated, stream=writer.host
            )
            writer.end(view)
        else:
            view = fleet_action.run(
                app, prefix, keys_dir, allow_unauthenticated, series=fmt == "html"
            )
            if fmt == "html":
                for chunk in html.chunks(view):
                    write(chunk)
            else:
                write(
                    (render.prometheus(view) if fmt == "prometheus" else render.text(view)) + "\n"
                )
    if view.error:
        click.echo(f"pyops: fleet: cannot list the bucket: {view.error}", err=True)
    raise SystemExit(view.exit_code)
