"""Offsite faults during the upload itself: the store vanishing while a multipart
upload is in flight, and a store answering 500. Real moto servers over HTTP,
real boto3 inside the real CLI."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from fault_support import Repo, files_target, incompressible_dir, said, wait_for, zstd
from fixtures.s3 import CREDS
from moto.server import ThreadedMotoServer

TARGET = "media"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def offsite(bucket: str, url: str) -> str:
    return (
        f'[offsite]\nbucket = "{bucket}"\nendpoint_url = "{url}"\nregion = "us-east-1"\n'
        'prefix = "pyops"\nstorage_class = "STANDARD"\nsse = "none"\n'
    )


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def own_server(creds: None) -> Iterator[tuple[list[ThreadedMotoServer], int]]:
    """A moto server of this test's own, on a fixed port it can be restarted on."""
    port = free_port()
    servers = [ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)]
    servers[0].start()
    try:
        yield servers, port
    finally:
        for s in servers:
            with contextlib.suppress(Exception):  # already stopped by the test
                s.stop()


def test_store_stops_during_multipart_then_sync_recovers(
    repo: Repo, tmp_path: Path, own_server: tuple[list[ThreadedMotoServer], int]
) -> None:
    servers, port = own_server
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    bucket = f"fault-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    data = incompressible_dir(tmp_path / "data", 64)
    repo.write(files_target(TARGET, [data]) + zstd() + offsite(bucket, url))

    proc = repo.popen("backup", "--target", TARGET, "--no-prune", "--format", "json")

    def uploading() -> bool:
        assert proc.poll() is None, proc.communicate()
        return bool(client.list_multipart_uploads(Bucket=bucket).get("Uploads"))

    wait_for(uploading, 60, "a multipart upload in progress", step=0.002)
    servers[0].stop()
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 1, f"{out}\n{err}"
    assert "cannot reach" in err and "kept" in err, err
    listed = repo.listed()
    assert len(listed) == 1, listed
    assert repo.temp_files() == []
    assert json.loads(out)["backups"][0]["offsite"] is False

    servers.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
    servers[-1].start()
    dangling = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert dangling, "no dangling upload left: the stop did not hit mid-upload"

    synced = repo.run("sync", "--format", "json")

    assert synced.returncode == 0, said(synced)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert json.loads(synced.stdout)["aborted_uploads"] >= 1, synced.stdout
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.endswith(f"{listed[0]}.manifest.json") for k in keys), keys
    verified = repo.run("verify", listed[0], "--remote")
    assert verified.returncode == 0, said(verified)


class Always500(BaseHTTPRequestHandler):
    def _fail(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"<Error><Code>InternalError</Code><Message>boom</Message></Error>"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _fail

    def log_message(self, *args: object) -> None:
        pass


def test_store_answering_500_keeps_local(repo: Repo, tmp_path: Path, creds: None) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Always500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        data = incompressible_dir(tmp_path / "data", 1)
        repo.write(files_target(TARGET, [data]) + zstd() + offsite("broken", url))
        t0 = time.monotonic()
        proc = repo.run("backup", "--target", TARGET, "--no-prune", timeout=120)
        took = time.monotonic() - t0
    finally:
        server.shutdown()
        server.server_close()

    assert proc.returncode == 1, said(proc)
    assert "InternalError" in proc.stderr or "500" in proc.stderr, said(proc)
    assert "kept" in proc.stderr, said(proc)
    listed = repo.listed()
    assert len(listed) == 1, listed
    assert repo.temp_files() == []
    repo.verify_all()
    assert took < 60, f"gave up only after {took:.0f}s"
