"""The backup's upload overlaps its dump (issue 14), against moto's S3 server on
127.0.0.1, through the installed `pyops`.

The dump is held still for real: tar (the files target's source) is stopped with
SIGSTOP once the artifact has more than one part written, and the test watches the
bucket while it is stopped. Every wait is on a condition with a generous deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import PYOPS, run_pyops, write_config
from fixtures.s3 import S3

from pyops.storage.s3 import MIN_PART

MiB = 1 << 20
DEADLINE = 120.0


def wait_for(cond: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def data_dir(path: Path, megabytes: int) -> Path:
    path.mkdir()
    for i in range(0, megabytes, 8):
        (path / f"blob{i}.bin").write_bytes(os.urandom(min(8, megabytes - i) * MiB))
    return path


def config(tmp_path: Path, s3: S3, data: Path, extra: str = "") -> Path:
    body = (
        '[compression]\nalgorithm = "none"\n\n'  # tar's bytes are the artifact's
        f"{s3.config(extra=extra)}\n"
        f'[[targets]]\nname = "media"\ntype = "files"\npaths = ["{data}"]\n'
    )
    return write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)


def dump_tar(parent: int) -> int | None:
    """The tar writing the archive: a child of the pyops run named tar, not the short
    `tar --version` pyops asks for the manifest."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if name == "tar" and ppid == parent and b"--version" not in argv:
            return int(entry)
    return None


def temp_artifact(repo: Path) -> Path | None:
    found = [p for p in (repo / "media" / "daily").glob("*.tar.tmp-*")] if repo.exists() else []
    return found[0] if found else None


@contextmanager
def dump_held(proc: subprocess.Popen[str], repo: Path, at_least: int) -> Iterator[tuple[int, Path]]:
    """tar stopped (SIGSTOP) with at least `at_least` bytes of the artifact written:
    tar runs in bursts, stopped while the test looks, until enough is there."""
    tar = wait_for(lambda: proc.poll() is None and dump_tar(proc.pid), "tar to start")
    while True:
        os.kill(tar, signal.SIGSTOP)
        temp = temp_artifact(repo)
        if temp is not None and temp.stat().st_size >= at_least:
            break
        os.kill(tar, signal.SIGCONT)  # a moment's run: the next SIGSTOP follows at once
    try:
        yield tar, temp
    finally:
        with suppress(ProcessLookupError):  # killed by the test
            os.kill(tar, signal.SIGCONT)


def open_upload(s3: S3) -> tuple[str, str] | None:
    uploads = s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    artifact = [u for u in uploads if u["Key"].endswith(".tar")]
    return (artifact[0]["Key"], artifact[0]["UploadId"]) if artifact else None


def parts_sent(s3: S3) -> int:
    found = open_upload(s3)
    if found is None:
        return 0
    key, upload_id = found
    return len(s3.client.list_parts(Bucket=s3.bucket, Key=key, UploadId=upload_id).get("Parts", []))


def popen_backup(cfg: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYOPS, "--config", str(cfg), "backup", "--format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def artifact_keys(s3: S3) -> list[str]:
    return [k for k in s3.object_keys() if k.endswith(".tar")]


def test_parts_go_up_while_the_dump_runs_and_the_object_matches(tmp_path: Path, s3: S3) -> None:
    data = data_dir(tmp_path / "media", 48)
    cfg = config(tmp_path, s3, data)
    repo = tmp_path / "repo"
    proc = popen_backup(cfg)
    with dump_held(proc, repo, 2 * MIN_PART + MiB) as (tar, _temp):
        sent = wait_for(lambda: parts_sent(s3) >= 2, "parts uploaded while tar is stopped")
        assert sent
        assert Path(f"/proc/{tar}").exists() and proc.poll() is None  # the dump is not done
        assert list(repo.rglob("*.manifest.json")) == []  # nor is the backup
        assert artifact_keys(s3) == []  # nothing completed in the bucket yet
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    result = json.loads(out)["backups"][0]
    assert result["ok"] and result["offsite"], result

    manifest = json.loads(next(repo.rglob("*.manifest.json")).read_text())
    local = next(repo.rglob("*.tar"))
    [key] = artifact_keys(s3)
    obj = s3.client.get_object(Bucket=s3.bucket, Key=key)
    assert obj["Body"].read() == local.read_bytes()  # byte-identical
    tags = s3.client.get_object_tagging(Bucket=s3.bucket, Key=key)["TagSet"]
    assert tags == [{"Key": "sha256", "Value": manifest["artifact"]["sha256"]}]
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    versions = s3.client.list_object_versions(Bucket=s3.bucket, Prefix=key)
    assert len(versions.get("Versions", [])) == 1  # one version: a tag makes no new one
    # authenticated: the remote catalog lists it (unauthenticated manifests are refused)
    listed = run_pyops(cfg, "list", "--remote", "--format", "json")
    assert [b["id"] for b in json.loads(listed.stdout)["backups"]] == [manifest["id"]]
    verified = run_pyops(cfg, "verify", "--remote", manifest["id"])
    assert verified.returncode == 0, verified.stderr
    again = json.loads(run_pyops(cfg, "sync", "--format", "json").stdout)
    assert again["uploaded"] == [] and again["present"] == [manifest["id"]]  # the tag counts
    checked = run_pyops(cfg, "sync", "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr  # no drift either


def test_a_backup_failing_mid_dump_leaves_nothing_in_the_bucket(tmp_path: Path, s3: S3) -> None:
    data = data_dir(tmp_path / "media", 48)
    cfg = config(tmp_path, s3, data)
    repo = tmp_path / "repo"
    proc = popen_backup(cfg)
    with dump_held(proc, repo, MIN_PART + MiB) as (tar, _temp):
        wait_for(lambda: parts_sent(s3) >= 1, "a part uploaded while tar is stopped")
        os.kill(tar, signal.SIGKILL)  # the source dies mid-stream
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1, err
    assert json.loads(out)["backups"][0]["ok"] is False
    assert artifact_keys(s3) == []
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert not [k for k in s3.object_keys() if k.endswith(".manifest.json")]
    assert [p for p in repo.rglob("*") if p.is_file() and "media" in p.parts] == []


def test_bytes_changed_under_the_upload_fail_it_and_keep_the_local_backup(
    tmp_path: Path, s3: S3
) -> None:
    data = data_dir(tmp_path / "media", 48)
    cfg = config(tmp_path, s3, data, extra="")
    cfg.write_text(cfg.read_text() + "\n[retention]\ndaily = 1\n")
    repo = tmp_path / "repo"
    first = run_pyops(cfg, "backup", "--format", "json")
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["backups"][0]["id"]

    proc = popen_backup(cfg)
    with dump_held(proc, repo, MIN_PART + MiB) as (_tar, temp):
        # the last byte written sits in a part not yet whole, so not yet read: change it
        size = temp.stat().st_size
        fd = os.open(temp, os.O_RDWR)
        try:
            byte = os.pread(fd, 1, size - 1)
            os.pwrite(fd, bytes([byte[0] ^ 0xFF]), size - 1)
        finally:
            os.close(fd)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1, err
    result = json.loads(out)["backups"][0]
    assert result["ok"] is False
    assert (
        "sha256" in result["error"]
        and f"the local backup {result['id']} is kept" in (result["error"])
    ), result["error"]
    listed = json.loads(run_pyops(cfg, "list", "--format", "json").stdout)["backups"]
    assert [b["id"] for b in listed] == [result["id"], first_id]  # kept, and not pruned
    assert [b["offsite"] for b in listed] == [False, True]
    remote = json.loads(run_pyops(cfg, "list", "--remote", "--format", "json").stdout)
    assert [b["id"] for b in remote["backups"]] == [first_id]  # not pruned remotely either
    assert len(artifact_keys(s3)) == 1
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_no_offsite_uploads_nothing_early(tmp_path: Path, s3: S3) -> None:
    data = data_dir(tmp_path / "media", 2)
    cfg = config(tmp_path, s3, data)
    done = run_pyops(cfg, "backup", "--no-offsite")
    assert done.returncode == 0, done.stderr
    assert s3.object_keys() == []
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_sync_keeps_to_max_upload_rate(tmp_path: Path, s3: S3) -> None:
    """A lower bound only (a loaded machine is slower, never faster): 12 MiB at 4 MiB/s
    with one second of burst takes at least 2 s."""
    data = data_dir(tmp_path / "media", 12)
    cfg = config(tmp_path, s3, data, extra=f"max_upload_rate = {4 * MiB}")
    done = run_pyops(cfg, "backup", "--no-offsite")
    assert done.returncode == 0, done.stderr
    t0 = time.monotonic()
    synced = run_pyops(cfg, "sync", "--format", "json")
    elapsed = time.monotonic() - t0
    assert synced.returncode == 0, synced.stderr
    assert len(json.loads(synced.stdout)["uploaded"]) == 1
    assert elapsed >= 2.0, elapsed


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("-1", "must not be negative"), ("1.5", "expected integer"), ('"10M"', "expected integer")],
)
def test_max_upload_rate_is_checked(tmp_path: Path, s3: S3, value: str, fragment: str) -> None:
    cfg = config(tmp_path, s3, tmp_path, extra=f"max_upload_rate = {value}")
    checked = run_pyops(cfg, "config", "check")
    assert checked.returncode == 2
    assert "offsite.max_upload_rate" in checked.stderr and fragment in checked.stderr


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_a_stalled_uplink_does_not_hold_the_dump_back(tmp_path: Path) -> None:
    """The S3 server (a process of its own here) is frozen with SIGSTOP: the upload
    stalls, and the dump still runs to its end, the local backup complete, pyops' own
    memory flat. Thawed, the upload completes and the backup is offsite."""
    import socket
    import sys

    import boto3
    from fixtures.s3 import CREDS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
        )

        def up() -> bool:
            from botocore.exceptions import EndpointConnectionError

            try:
                client.create_bucket(Bucket="stall")
            except EndpointConnectionError:  # not listening yet
                return False
            return True

        wait_for(up, "the S3 server to listen")
        own = S3(None, url, "stall", client)  # type: ignore[arg-type]
        data = data_dir(tmp_path / "media", 96)
        cfg = config(tmp_path, own, data)
        repo = tmp_path / "repo"
        proc = subprocess.Popen(
            [PYOPS, "--config", str(cfg), "backup", "--format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **CREDS},
        )
        wait_for(lambda: parts_sent(own) >= 1, "the first part in the bucket")
        os.kill(server.pid, signal.SIGSTOP)  # the uplink stops dead
        try:
            manifest = wait_for(
                lambda: next(repo.rglob("*.manifest.json"), None), "the local backup to complete"
            )
            assert proc.poll() is None  # still uploading
            assert vm_hwm_kib(proc.pid) < 100 * 1024  # nothing queued in memory
            size = json.loads(manifest.read_text())["artifact"]["bytes"]
            assert size >= 96 * MiB
        finally:
            os.kill(server.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err
        assert json.loads(out)["backups"][0]["offsite"] is True
        [key] = artifact_keys(own)
        assert client.head_object(Bucket="stall", Key=key)["ContentLength"] == size
    finally:
        server.kill()
        server.wait()
