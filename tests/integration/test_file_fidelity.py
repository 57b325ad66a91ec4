"""Files targets keep what tar can keep, and say what they could not.

Row 2 of issue 10: a file that changed while tar read it is never silent: named in
the backup's result, recorded in the manifest, shown by list, verify and history,
counted by health and in metrics. Row 12: extended attributes, POSIX ACLs and sparse
files come back as they were, and what cannot be restored is said in the result.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

from integration_helpers import Pyops, compression, files_target, output

from pyops import tarsafe

# --- row 2: a file that shrank while tar read it --------------------------------------


def _shrink_when_read(path: Path, proc: subprocess.Popen[str], done: threading.Event) -> None:
    """Truncate `path` while tar (a child of the pyops run) is part-way through it: tar is
    stopped (SIGSTOP) once it has read some of the file, the file truncated, tar resumed.
    Truncating on a byte count alone raced tar on a loaded machine: zstd buffers a whole
    job of input, so tar could read the file to its end before the watcher looked."""
    size = path.stat().st_size
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not done.is_set():
        for tar in _children_named(proc.pid, "tar"):
            if _position(tar, path) <= 0:
                continue
            os.kill(tar, signal.SIGSTOP)
            try:
                if 0 < _position(tar, path) < size:
                    os.truncate(path, 1 << 20 if _position(tar, path) > 1 << 20 else 0)
                    done.set()
                    return
            finally:
                os.kill(tar, signal.SIGCONT)
        time.sleep(0.005)


def _position(pid: int, path: Path) -> int:
    """How far process `pid` has read into `path` (-1: it has no descriptor open on it)."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                return int(next(ln.split()[1] for ln in info.splitlines() if ln.startswith("pos")))
    except (OSError, StopIteration):
        pass
    return -1


def _children_named(root: int, comm: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if name == comm and ppid == root:
            found.append(int(entry))
    return found


def test_a_file_torn_while_read_is_named_everywhere(pyops: Pyops) -> None:
    media = pyops.root / "media"
    media.mkdir()
    (media / "a-small.txt").write_text("steady\n")
    big = media / "b-big.bin"
    big.write_bytes(os.urandom(48 << 20))  # random: zstd -19 reads it slowly, tar waits
    metrics = pyops.root / "metrics"
    metrics.mkdir()
    pyops.write(
        compression("zstd", 19)
        + "threads = 1\n"
        + f'[metrics]\ntextfile_dir = "{metrics}"\n'
        + files_target("media", [media])
    )

    proc = subprocess.Popen(
        [*_pyops_argv(pyops), "backup", "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    done = threading.Event()
    watcher = threading.Thread(target=_shrink_when_read, args=(big, proc, done))
    watcher.start()
    out, err = proc.communicate(timeout=120)
    watcher.join()
    assert done.is_set(), "the file was never truncated while tar read it"

    assert proc.returncode == 0, f"{out}\n{err}"  # the backup is kept, and it says why not clean
    (result,) = json.loads(out)["backups"]
    assert result["ok"]
    torn = [w for w in result["warnings"] if "b-big.bin" in w]
    assert torn and any("shrank" in w or "changed" in w for w in torn), result
    assert "b-big.bin" in err  # logged as it happened, without -v

    manifest = pyops.manifest(result["id"])
    assert manifest["warnings"] == result["warnings"]

    listed = pyops.ok("list").stdout
    assert "warning(s)" in listed and result["id"] in listed
    verified = pyops.ok("verify", result["id"]).stdout
    assert "warning: tar:" in verified and "b-big.bin" in verified, verified
    history = pyops.ok("history").stdout
    backup_line = next(ln for ln in history.splitlines() if " backup " in ln)
    assert "1 warning(s)" in backup_line, history

    health = pyops.run("health", "--check", "manifests")
    assert health.returncode == 1, output(health)  # WARNING, per Nagios
    assert result["id"] in health.stdout and "b-big.bin" in health.stdout

    prom = (metrics / "pyops_backup.prom").read_text()
    line = next(ln for ln in prom.splitlines() if ln.startswith("pyops_backup_last_warnings{"))
    assert float(line.split()[-1]) >= 1

    # a clean backup afterwards clears the warning about the torn one
    pyops.ok("backup")
    after = pyops.run("health", "--check", "manifests")
    assert "b-big.bin" not in after.stdout and result["id"] not in after.stdout, output(after)


def _pyops_argv(pyops: Pyops) -> list[str]:
    from fixtures.cli import PYOPS

    return [PYOPS, "--config", str(pyops.config)]


# --- row 12: extended attributes, ACLs, sparse files ------------------------------------

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 1, 2, 4, 0x10, 0x20
UNDEFINED = 0xFFFFFFFF


def posix_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """The kernel's system.posix_acl_access value (what setfacl writes)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ACL = posix_acl(
    [
        (ACL_USER_OBJ, 6, UNDEFINED),
        (ACL_USER, 4, 4242),
        (ACL_GROUP_OBJ, 4, UNDEFINED),
        (ACL_MASK, 4, UNDEFINED),
        (ACL_OTHER, 0, UNDEFINED),
    ]
)


def make_tree(top: Path) -> None:
    top.mkdir()
    doc = top / "doc.txt"
    doc.write_text("hello\n")
    os.setxattr(doc, "user.origin", b"scanner-7\x00\xff")
    os.setxattr(doc, "system.posix_acl_access", ACL)
    sub = top / "shared"
    sub.mkdir()
    os.setxattr(sub, "user.project", b"alpha")
    with open(top / "disk.img", "wb") as f:  # 200 MiB apparent, a few KiB used
        f.seek(100 << 20)
        f.write(b"middle")
        f.seek((200 << 20) - 3)
        f.write(b"end")


def check_tree(top: Path) -> None:
    doc = top / "doc.txt"
    assert doc.read_text() == "hello\n"
    assert os.getxattr(doc, "user.origin") == b"scanner-7\x00\xff"
    assert os.getxattr(doc, "system.posix_acl_access") == ACL
    assert os.getxattr(top / "shared", "user.project") == b"alpha"
    img = top / "disk.img"
    st = img.stat()
    assert st.st_size == 200 << 20
    assert st.st_blocks * 512 < 1 << 20, f"sparse file came back using {st.st_blocks * 512} B"
    with open(img, "rb") as f:
        f.seek(100 << 20)
        assert f.read(6) == b"middle"
        f.seek((200 << 20) - 3)
        assert f.read() == b"end"


def test_xattrs_acls_and_holes_survive_backup_and_restore(pyops: Pyops) -> None:
    media = pyops.root / "media"
    make_tree(media)
    pyops.write(compression("zstd") + files_target("media", [media]))
    backup = pyops.backup("media")
    artifact = pyops.artifact(backup)
    assert artifact.stat().st_size < 1 << 20  # the holes were not archived as zeros

    pyops.ok("verify", "--deep", backup)
    into = pyops.root / "restored"
    restored = pyops.ok("restore", backup, "--into", str(into), "--yes")
    assert "WARNING" not in restored.stdout, output(restored)
    check_tree(into / media.relative_to("/"))

    # in place, too: the live tree is replaced by one with the same attributes
    (media / "doc.txt").write_text("changed\n")
    pyops.ok("restore", backup, "--yes", "--no-safety-backup")
    check_tree(media)


def test_what_cannot_be_restored_is_said(tmp_path: Path) -> None:
    """An attribute the file system refuses (here: a namespace Linux does not know) is
    a warning in the result, not a failure and not silence."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("data/file.txt")
        info.size = 3
        info.pax_headers = {"SCHILY.xattr.bogus.attr": "x", "SCHILY.xattr.user.ok": "y"}
        tar.addfile(info, io.BytesIO(b"abc"))
    buf.seek(0)
    dest = tmp_path / "out"
    tally = tarsafe.extract(buf, ["data"], lambda root: dest / root)
    assert (dest / "data" / "file.txt").read_bytes() == b"abc"
    assert os.getxattr(dest / "data" / "file.txt", "user.ok") == b"y"
    (warning,) = tally.warnings
    assert "bogus.attr" in warning and "file.txt" in warning
    # where the file is now, as the operators' guide shows it
    assert warning.startswith(f"{dest / 'data' / 'file.txt'}: extended attribute bogus.attr ")
