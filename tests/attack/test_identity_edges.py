"""The repository identity where issue 9's rows meet real life: a repository that got
its key after the upgrade, a manifest relabelled as another repository's, a manifest
whose facts have the wrong types. Found by review; each through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fixtures.s3 import S3
from test_untrusted_input import (
    Site,
    get_json,
    make_key,
    notes_db,
    notes_in,
    put_json,
    said,
    sqlite_target,
    wait_past,
    zstd,
)


def test_a_key_added_after_the_upgrade_seals_the_bucket_identity_for_dr(
    tmp_path: Path, s3: S3
) -> None:
    db = notes_db(tmp_path / "app.db", "A")
    site = Site(tmp_path, tmp_path / "repo")
    body = zstd() + s3.config() + sqlite_target("notes", db)
    site.write(body)  # no key yet: as every repository before this change
    first = site.backup("notes")
    identity = next(k for k in bucket_keys(s3) if k.endswith("/repository.json"))
    assert get_json(s3, identity)["mac"] == ""

    key_file = tmp_path / "repository.key"
    site.write(body, key_file=key_file)
    site.ok("init", "--new-key")
    assert get_json(s3, identity)["mac"].startswith("hmac-sha256:")
    local = json.loads((site.repo / "repository.json").read_text())
    assert local["mac"] == get_json(s3, identity)["mac"]

    shutil.rmtree(site.repo)  # the disaster; the key is kept with the gpg key
    out = tmp_path / "restored.db"
    site.ok("restore", "--remote", "--latest", "--target", "notes", "--into", str(out), "--yes")
    assert notes_in(out) == (50, {"A"})
    wait_past(first)
    proc = site.run("backup", "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["backups"][0]["offsite"], said(proc)


def test_a_manifest_relabelled_as_another_repository_is_refused_not_foreign(
    tmp_path: Path, s3: S3
) -> None:
    db = notes_db(tmp_path / "app.db", "A")
    site = Site(tmp_path, tmp_path / "repo")
    site.write(
        zstd() + s3.config() + sqlite_target("notes", db),
        key_file=make_key(tmp_path / "repository.key"),
    )
    older = site.backup("notes")
    wait_past(older)
    newest = site.backup("notes", "--no-prune")
    key = next(k for k in bucket_keys(s3) if k.endswith(f"{newest}.manifest.json"))
    forged = get_json(s3, key)
    forged["repository_id"] = "0" * 32  # no key: the MAC no longer matches
    put_json(s3, key, forged)

    listed = site.listing("--remote")
    assert listed["foreign"] == [], listed
    assert [r["key"] for r in listed["refused"]] == [key.split("/", 2)[2]], listed
    verify = site.run("verify", "--remote")
    assert verify.returncode == 1 and newest in verify.stdout, said(verify)
    assert "MAC does not match" in verify.stdout, said(verify)
    check = site.run("sync", "--check")
    assert check.returncode == 1 and newest in check.stdout, said(check)


def test_a_manifest_with_facts_of_the_wrong_type_is_refused_not_a_crash(tmp_path: Path) -> None:
    db = notes_db(tmp_path / "app.db", "A")
    site = Site(tmp_path, tmp_path / "repo").write(zstd() + sqlite_target("notes", db))
    backup = site.backup("notes")
    path = site.manifest_path(backup)
    data = json.loads(path.read_text())
    data["source"]["path"] = {"x": 1}
    path.write_text(json.dumps(data))

    proc = site.run("restore", backup, "--into", str(tmp_path / "out.db"), "--yes")
    assert proc.returncode == 1, said(proc)
    assert "unexpected error" not in proc.stderr
    assert "source.path must be a string" in proc.stderr, said(proc)
    assert not (tmp_path / "out.db").exists()


def bucket_keys(s3: S3) -> list[str]:
    return s3.object_keys()
