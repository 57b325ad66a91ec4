"""The artifact's upload running beside its backup ("overlap").

While the backup writes its artifact, a thread sends what is written to the bucket
(Store.put_growing: the parts of the growing temp file, read from disk). The object
is completed only after the local artifact is committed and only when the bytes sent
have the sha256 the backup computed; the attachments and the manifest follow later,
through the catalog's ordinary copy (manifest last). A backup that fails takes the
upload down with it: the multipart upload is aborted, or an object already completed
is deleted, so nothing of it is left in the bucket.
"""

from __future__ import annotations

import logging
import threading

from pyops.catalog import Catalog
from pyops.errors import PyopsError
from pyops.growing import GrowingFile, WriterFailed
from pyops.storage import ChecksumMismatch, StoreError

log = logging.getLogger(__name__)


class Overlap:
    """Where a backup uploads its artifact while writing it: `start` once the temp file
    exists; `upload` is then the one running."""

    def __init__(self, remote: Catalog) -> None:
        self.remote = remote
        self.upload: EarlyUpload | None = None

    def start(self, key: str, source: GrowingFile) -> EarlyUpload:
        self.upload = EarlyUpload(self.remote, key, source)
        return self.upload


class EarlyUpload:
    """One artifact's upload, started as soon as its temp file exists."""

    def __init__(self, remote: Catalog, key: str, source: GrowingFile) -> None:
        self.remote = remote
        self.key = key
        self.source = source
        self.error: BaseException | None = None
        self.stored = False
        self.thread = threading.Thread(target=self._run, name=f"upload {key}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.remote.store.put_growing(self.key, self.source)
            self.stored = True
        except BaseException as exc:  # reported by wait(), in the backup's own thread
            self.error = exc
        finally:
            self.source.close()

    def wait(self) -> None:
        """After the backup is complete: the artifact is in the bucket, whole and with
        the backup's sha256, or this raises why not (PyopsError). Interrupted while
        waiting (Ctrl-C, SIGTERM): the upload is stopped and aborted first."""
        try:
            self.thread.join()
        except BaseException:
            self.source.fail("the run was interrupted", even_if_finished=True)
            self.thread.join()
            raise
        exc = self.error
        if exc is None:
            return
        where = self.remote.describe()
        if isinstance(exc, ChecksumMismatch):
            raise PyopsError(f"upload to {where} failed: {exc}") from None
        if isinstance(exc, StoreError):
            raise PyopsError(f"upload of {self.key} to {where} failed: {exc}") from None
        if isinstance(exc, PyopsError):
            raise exc
        raise PyopsError(f"upload of {self.key} to {where} failed: {exc!r}") from None

    def discard(self, why: str) -> None:
        """The backup failed: stop the upload and leave nothing of it in the bucket."""
        self.source.fail(why)
        self.thread.join()
        where = self.remote.describe()
        if self.stored:  # completed before the backup failed after its artifact
            try:
                self.remote.store.delete(self.key)
                self.stored = False
            except StoreError as exc:
                log.warning("could not delete %s from %s: %s", self.key, where, exc)
        elif self.error is not None and not isinstance(self.error, WriterFailed):
            log.warning("upload of %s to %s: %s", self.key, where, self.error)
