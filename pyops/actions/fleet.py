"""pyops fleet: read every host under a bucket prefix, then judge (pyops/fleet/rules.py).

Read-only, and cheap: one delimiter listing finds the hosts (`<prefix>/<host>/`), then
one GET per host reads its index (`index.json`, pyops/fleetindex.py). A host without
a usable index (none yet, refused, a newer format) is listed from its manifests
through the catalog, which validates them like any other read. Hosts are read a few
at a time in threads; what is kept of each is its judged summary, so memory grows
with the number of hosts, not with their history.

Keys: an index (and a manifest) is authenticated with its host's repository key.
The fleet machine holds the keys of the hosts it checks as `<keys_dir>/<host>.key`
(the same hex format as `[repository] key_file`), and its own host's key is its own
key_file. A host whose key it does not hold is read, shown, and reported
unauthenticated; with a key, a forged or altered index is refused.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from pyops import fleetindex
from pyops.app import App
from pyops.catalog import Catalog
from pyops.errors import ConfigError, PyopsError
from pyops.fleet import rules
from pyops.fleet.view import FleetView, HostRead, HostView
from pyops.identity import IDENTITY_KEY, load_key
from pyops.storage import NotFound, Store, StoreError, check_key
from pyops.storage.s3 import S3Store

log = logging.getLogger(__name__)
T = TypeVar("T")
WORKERS = 8  # botocore keeps 10 connections per client


class Keys:
    """The repository keys the fleet machine holds, by host."""

    def __init__(self, directory: Path | None, own_host: str, own_key: Path | None) -> None:
        self.directory = directory
        self.own_host = own_host
        self.own_key = own_key

    def path(self, host: str) -> Path | None:
        if self.directory is not None:
            candidate = self.directory / f"{check_key(host)}.key"
            if candidate.exists():
                return candidate
        if host == self.own_host and self.own_key is not None and self.own_key.exists():
            return self.own_key
        return None

    def get(self, host: str) -> bytes | None:
        path = self.path(host)
        if path is None:
            return None
        try:
            return load_key(path)
        except PyopsError as exc:
            log.warning("fleet: %s: key not used: %s", host, exc)
            return None


def read_host(store: Store, host: str, key: bytes | None) -> HostRead | None:
    """What `store` (the host's `<prefix>/<host>/`) says about it, authenticated with
    `key` where there is one; None when nothing there is pyops'."""
    read = HostRead(host)
    try:
        try:
            data: bytes | None = store.read_range(fleetindex.INDEX_KEY, 0, fleetindex.LIMIT + 1)
        except NotFound:
            data = None
        if data is not None:
            got = fleetindex.read(data, host, key)
            read.index, read.reason = got.state, got.reason
            if got.doc is not None:
                doc = got.doc
                read.authenticated = got.state == "authenticated"
                read.written_at, read.event = doc["written_at"], doc["event"]
                read.retention, read.targets = doc["retention"], doc["targets"]
                return read
            log.warning("fleet: %s: index not used: %s", host, got.reason)
        listing = Catalog(store, repository_id=None, key=key).scan()
        nothing = data is None and not listing.backups and not listing.refused
        if nothing and store.stat(IDENTITY_KEY) is None:
            return None  # not a pyops host: no index, no manifest, no identity
        read.source = "manifests"
        read.authenticated = key is not None
        read.targets = fleetindex.targets_from_listing(listing)
        if key is None:  # every one is: the host's own warning says so, once
            for entry in read.targets.values():
                entry["unauthenticated"] = 0
    except StoreError as exc:
        read.source, read.error = "none", str(exc)
    return read


def _in_order(pool: Executor, fn: Callable[[str], T], items: Iterable[str]) -> Iterator[T]:
    """fn(item) for each item, in order, WORKERS at work and at most 2 x WORKERS done
    ahead of the consumer: memory does not grow with the number of hosts."""
    pending: deque[Future[T]] = deque()
    todo = iter(items)
    for item in itertools.islice(todo, 2 * WORKERS):
        pending.append(pool.submit(fn, item))
    while pending:
        done = pending.popleft().result()
        for item in itertools.islice(todo, 1):
            pending.append(pool.submit(fn, item))
        yield done


def run(
    app: App,
    prefix: str | None,
    keys_dir: Path | None,
    allow_unauthenticated: bool = False,
    series: bool = False,
    stream: Callable[[HostView], None] | None = None,
) -> FleetView:
    """Every host under the prefix, judged, in the order of their names. `series`:
    keep the size and RTO series (the HTML page draws them). `stream`: each host is
    handed to it as soon as it is judged, and not kept (the view keeps the tally)."""
    cfg = app.config.offsite
    if not cfg.bucket:
        raise ConfigError(
            "offsite.bucket", "pyops fleet reads the bucket: set [offsite] bucket (and endpoint)"
        )
    if keys_dir is not None and not keys_dir.is_dir():
        raise ConfigError("--keys-dir", f"{keys_dir} is not a directory")
    prefix = (cfg.prefix if prefix is None else prefix).strip("/")
    top = S3Store(cfg, f"{prefix}/" if prefix else "")
    keys = Keys(keys_dir, app.config.host, app.config.repository.key_file)
    lim = rules.limits(app.config.health, allow_unauthenticated)
    now = app.clock()
    view = FleetView(cfg.bucket, prefix, now)
    try:
        hosts = list(top.children())
    except StoreError as exc:
        view.error = str(exc)
        return view

    def judged(host: str) -> HostView | None:
        try:
            check_key(host)
        except StoreError:
            log.warning("fleet: %r under %s is not a host name pyops writes: skipped", host, prefix)
            return None
        store = S3Store(cfg, f"{top.root}{host}/", client=top.client)
        read = read_host(store, host, keys.get(host))
        return None if read is None else rules.judge_host(read, now, lim, series)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for host in _in_order(pool, judged, hosts):
            if host is not None:
                view.add(host, keep=stream is None)
                if stream is not None:
                    stream(host)
    return view
