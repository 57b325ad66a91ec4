"""The App handed to every action: config, clock, repository paths, output mode, and
the catalogs of the repository and the bucket."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pyops.catalog import Catalog
from pyops.codec import Codec
from pyops.config import Config
from pyops.errors import PyopsError
from pyops.fsutil import make_private_dir
from pyops.identity import IDENTITY_KEY, Identity, load_key, new_identity
from pyops.lock import repository_lock
from pyops.storage import NotFound, Store, StoreError, read_small
from pyops.storage.local import LocalStore

if TYPE_CHECKING:
    from pyops.storage.s3 import S3Store

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    config: Config
    clock: Callable[[], datetime] = utcnow
    interactive: bool = field(default_factory=lambda: sys.stderr.isatty())
    allow_unauthenticated: bool = False
    _key: bytes | None = field(default=None, repr=False)
    _key_loaded: bool = field(default=False, repr=False)
    _identity: Identity | None = field(default=None, repr=False)
    _identity_stored: bool = field(default=False, repr=False)
    _remote: S3Store | None = field(default=None, repr=False)
    _remote_checked: set[bool] = field(default_factory=set, repr=False)

    @property
    def repo(self) -> Path:
        return self.config.repository.path

    @property
    def state(self) -> Path:
        return self.config.repository.state

    @property
    def codec(self) -> Codec:
        return Codec(self.config.compression, self.config.encryption)

    @contextlib.contextmanager
    def lock(self, what: str) -> Iterator[None]:
        """The repository lock (in the repository itself, whatever the state dir).
        Holding it, any scratch left in the state dir belongs to a run that died
        (possibly plaintext): it is removed first."""
        with repository_lock(self.repo, self.config.repository.lock_wait_seconds, what):
            stale = self.state / "scratch"
            if stale.is_dir():
                for leftover in stale.iterdir():
                    log.warning("removing scratch of an interrupted run: %s", leftover)
                    shutil.rmtree(leftover, ignore_errors=True)
            yield

    @contextlib.contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A private (0700) scratch dir inside the repository, removed afterwards."""
        base = make_private_dir(self.state / "scratch")
        path = base / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    # --- key, identity, catalogs ------------------------------------------------------

    @property
    def key(self) -> bytes | None:
        """The repository key, or None when none is configured. A configured key that is
        missing stops every command, unless the operator said --allow-unauthenticated."""
        if not self._key_loaded:
            path = self.config.repository.key_file
            if path is not None:
                try:
                    self._key = load_key(path)
                except PyopsError:
                    if not self.allow_unauthenticated:
                        raise
                    log.warning(
                        "REPOSITORY KEY %s IS MISSING: manifests are NOT authenticated in this "
                        "run (--allow-unauthenticated); the artifact's sha256 is still checked",
                        path,
                    )
            self._key_loaded = True
        return self._key

    def local_store(self) -> LocalStore:
        return LocalStore(self.repo)

    def remote_store(self) -> S3Store:
        if self._remote is None:
            from pyops.storage.s3 import S3Store

            prefix = self.config.offsite.prefix.strip("/")
            host = self.config.host
            root = f"{prefix}/{host}/" if prefix else f"{host}/"
            self._remote = S3Store(self.config.offsite, root)
        return self._remote

    def _read_identity(self, store: Store) -> Identity | None:
        try:
            data = read_small(store, IDENTITY_KEY, 1 << 16)
        except NotFound:
            return None
        return Identity.parse(data, f"{store.describe()} {IDENTITY_KEY}")

    def identity(self, create: bool = False) -> Identity | None:
        """This repository's identity. An empty repository on a new host adopts the one
        it finds in the bucket when it first reads from it (the disaster-recovery case:
        `restore --remote` records it). `create` (under the lock, by commands that
        write): the identity is recorded, and a repository without one gets a new one,
        never another's: a second repository under a used prefix (a second config on
        the same machine, even one sharing the key file) is then refused. A writing
        command cannot tell a replacement host from such a neighbour; a read can."""
        if self._identity is None:
            key = self.key
            found = self._read_identity(self.local_store())
            if found is not None and key and not found.authentic(key):
                raise PyopsError(
                    f"{self.repo}/{IDENTITY_KEY} is not authenticated by the repository key: "
                    + (
                        "it was written before the key existed; run `pyops init --new-key` "
                        "to seal it (and older manifests)"
                        if not found.mac
                        else "it was altered, or repository.key_file belongs to another repository"
                    )
                )
            self._identity_stored = found is not None
            if found is None and not create:
                found = self._adoptable()
                if found is not None:
                    log.info("adopting repository %s from the bucket", found.repository_id)
            self._identity = found
        if create and not self._identity_stored:
            self._identity = self._identity or new_identity(self.config.host, self.key)
            make_private_dir(self.repo)
            self.local_store().put_bytes(IDENTITY_KEY, self._identity.to_json())
            self._identity_stored = True
        return self._identity

    def _adoptable(self) -> Identity | None:
        """The bucket's identity, when this repository holds no backups yet and the
        repository key (if any) authenticates it."""
        if not self.config.offsite.bucket or any(self.local_store().list()):
            return None
        try:
            found = self._read_identity(self.remote_store())
        except StoreError as exc:
            log.warning("could not read the repository identity in the bucket: %s", exc)
            return None
        key = self.key
        if found is not None and key is not None and not found.authentic(key):
            log.warning(
                "the repository identity in %s is not authenticated by repository.key_file: "
                "not adopted (altered, another repository's, or the wrong key)",
                self.remote_store().describe(),
            )
            return None
        return found

    def _catalog(self, store: Store, identity: Identity | None) -> Catalog:
        return Catalog(
            store,
            repository_id=identity.repository_id if identity else None,
            key=self.key,
            allow_unauthenticated=self.allow_unauthenticated,
        )

    def local(self, write: bool = False) -> Catalog:
        """The repository's catalog. `write`: the caller holds the lock and writes."""
        return self._catalog(self.local_store(), self.identity(create=write))

    def remote(self, write: bool = False) -> Catalog:
        """The bucket's catalog for this host. Before the first write under a prefix the
        repository's identity is put beside the backups; a prefix that holds another
        repository's identity is refused for writing."""
        store = self.remote_store()
        ours = self.identity(create=write)
        if write in self._remote_checked or True in self._remote_checked:
            return self._catalog(store, ours)  # this run already checked (and wrote) it
        theirs = self._read_identity(store)
        key = self.key
        if theirs is None:
            if write and ours is not None:
                store.put_bytes(IDENTITY_KEY, ours.to_json())
        elif (
            key is not None
            and theirs.mac
            and not theirs.authentic(key)
            and ours is not None
            and theirs.repository_id == ours.repository_id
        ):
            message = (
                f"the repository identity in {store.describe()} carries this repository's id "
                "but is not authenticated by repository.key_file: it was altered"
            )
            if write:
                raise PyopsError(
                    f"{message}. Nothing was uploaded; put {self.repo}/{IDENTITY_KEY} back "
                    f"as {IDENTITY_KEY} under that prefix"
                )
            log.warning("%s", message)
        elif ours is None or theirs.repository_id != ours.repository_id:
            message = (
                f"{store.describe()} holds the backups of another repository "
                f"({theirs.repository_id}, created on {theirs.host} at {theirs.created_at[:19]})"
                + (f"; this one is {ours.repository_id}" if ours else "")
            )
            if write:
                raise PyopsError(
                    f"{message}. Two repositories must not share a prefix: set [repository] "
                    "host (or [offsite] prefix) to one of this repository's own. (A host "
                    "replacing a lost one adopts the bucket's identity when its empty "
                    "repository first restores from the bucket: if this host replaces the "
                    f"lost one and backed up first, remove {self.repo}/{IDENTITY_KEY} and "
                    "the backups taken here, then restore; docs/disaster-recovery.md)"
                )
            log.warning("%s: its backups are listed as foreign and not touched", message)
        elif write and key is not None and not theirs.mac and ours is not None and ours.mac:
            # written before the repository had a key: seal it, so a DR host can adopt it
            store.put_bytes(IDENTITY_KEY, ours.to_json())
        self._remote_checked.add(write)
        return self._catalog(store, ours)
