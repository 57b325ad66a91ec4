"""s3 and offsite_freshness against a real S3 protocol server (moto on 127.0.0.1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from fixtures.s3 import S3
from health_support import Env, one


def test_bucket_reachable_and_offsite_fresh_then_stale(env: Env, s3: S3) -> None:
    env.write(env.sqlite() + s3.config())
    rc, out, err = env.pyops("backup", "--format", "json")
    assert rc == 0, err
    backup = json.loads(out)["backups"][0]
    assert backup["offsite"], backup

    result = one(env.config, "s3")
    assert result.status == "ok" and result.metrics["up"] == 1, result.message
    fresh = one(env.config, "offsite_freshness")
    assert fresh.status == "ok", fresh.message
    assert fresh.metrics["app.daily.age_hours"] < 0.1

    (key,) = [k for k in s3.object_keys() if k.endswith(".manifest.json")]
    manifest = json.loads(s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    manifest["started_at"] = (datetime.now(UTC) - timedelta(hours=40)).isoformat()
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=json.dumps(manifest).encode())
    stale = one(env.config, "offsite_freshness")
    assert stale.status == "critical"
    assert f"newest offsite daily backup {backup['id']} is 40.0 h old" in stale.message
    # the local copy is still fresh: backup_freshness reads local manifests only
    assert one(env.config, "backup_freshness").status == "ok"


def test_missing_bucket_is_critical(env: Env, s3: S3) -> None:
    env.write(env.sqlite() + s3.config().replace(s3.bucket, "no-such-bucket-here"))
    rc, out, _ = env.pyops("health", "--check", "s3", "--check", "offsite_freshness")
    assert rc == 2, out
    lines = out.splitlines()
    assert lines[0].startswith("CRITICAL  s3  ") and "404" in lines[0]
    assert lines[1].startswith("UNKNOWN   offsite_freshness  cannot list the bucket")
