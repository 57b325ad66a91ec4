"""`pyops fleet` through the real CLI against a bucket several hosts wrote to (the
`world` fixture, conftest.py): all four formats, exit codes, a stale host, a
shrinking backup, a host without an index, an altered index, missing keys."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fixtures.cli import run_pyops
from fleet_support import World, chromium, fleet_config, png_pixels, said
from prometheus_client.parser import text_string_to_metric_families


def document(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data = json.loads(proc.stdout)
    assert isinstance(data, dict)
    return data


def by_host(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in doc["hosts"]}


def target(host: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in host["targets"] if t["target"] == name)


def texts(problems: list[dict[str, Any]]) -> str:
    return " | ".join(p["text"] for p in problems)


def test_healthy_hosts_exit_0_with_their_keys(world: World) -> None:
    proc = world.fleet("good")
    assert proc.returncode == 0, said(proc)
    out = proc.stdout
    assert out.startswith(f"pyops fleet s3://{world.bucket}/good/: OK, 2 host(s), 3 target(s)")
    assert re.search(r"^OK +web-1 +\(index authenticated, written ", out, re.M), out
    assert re.search(r"^OK +web-3 +\(from its manifests, 1 target\(s\)\)", out, re.M), out
    assert re.search(r"^OK +media +\S+ KiB +daily 0\.\d h +weekly none .* offsite yes", out, re.M)

    doc = document(world.fleet("good", "--format", "json"))
    assert doc["status"] == "ok" and doc["exit_code"] == 0
    assert [h["host"] for h in doc["hosts"]] == ["web-1", "web-3"]
    web1, web3 = by_host(doc)["web-1"], by_host(doc)["web-3"]
    assert [t["target"] for t in web1["targets"]] == ["media", "notes"]
    notes = target(web1, "notes")
    newest = notes["newest"]
    assert newest["id"].startswith("notes.daily.") and newest["tier"] == "daily"
    assert newest["offsite"] is True and re.fullmatch(r"[0-9a-f]{64}", newest["sha256"])
    assert newest["size"] > 0 and newest["age_hours"] < 1
    assert notes["status"] == "ok" and notes["drill"]["last_ok"] is True
    assert notes["drill"]["rto_s"] > 0 and notes["drill"]["success_age_days"] < 1
    assert notes["tiers"]["daily"]["count"] == 1 and notes["tiers"]["daily"]["offsite_count"] == 1
    # the host without an index: listed from its (authenticated) manifests, drills unknown
    assert (web3["source"], web3["index"], web3["authenticated"]) == ("manifests", "missing", True)
    assert web3["status"] == "ok" and "no index" in texts(web3["problems"])
    assert target(web3, "notes")["drill"]["known"] is False
    assert target(web3, "notes")["newest"]["offsite"] is True


def test_without_keys_every_host_is_unauthenticated(world: World) -> None:
    proc = world.fleet("good", "--format", "json", keys=False)
    assert proc.returncode == 1, said(proc)
    for host in document(proc)["hosts"]:
        assert host["status"] == "warning" and host["authenticated"] is False
        assert "unauthenticated: no key for this host" in texts(host["problems"])
    assert by_host(document(proc))["web-1"]["index"] == "unauthenticated"
    allowed = world.fleet("good", "--allow-unauthenticated", keys=False)
    assert allowed.returncode == 0, said(allowed)
    assert "unauthenticated: no key" in allowed.stdout  # still said, no longer a warning


def test_stale_shrinking_and_altered_hosts_exit_2(world: World) -> None:
    proc = world.fleet("fleet", "--format", "json")
    assert proc.returncode == 2, said(proc)
    doc = document(proc)
    assert doc["status"] == "critical" and doc["summary"]["hosts"] == 3
    hosts = by_host(doc)

    shrinking = target(hosts["web-2"], "media")
    assert hosts["web-2"]["status"] == "warning" and shrinking["status"] == "warning"
    daily = shrinking["tiers"]["daily"]
    assert daily["shrinking"] is True and daily["size_ratio"] < 0.5
    assert daily["count"] == 3 and daily["median_bytes"] > 100_000
    assert "shrinking" in texts(shrinking["problems"])

    stale = hosts["web-4"]
    assert stale["status"] == "critical" and stale["index"] == "authenticated"
    notes = target(stale, "notes")
    assert re.search(
        r"daily: newest backup notes\.\w+\.\d{8}T020000Z is 5\.\d days old \(limit "
        r"26\.0 h\): stale",
        texts(notes["problems"]),
    )
    assert "last successful drill 100 days ago (limit 92" in texts(notes["problems"])

    altered = hosts["web-5"]
    assert altered["status"] == "critical"
    assert (altered["index"], altered["source"]) == ("refused", "manifests")
    assert "its MAC does not match the host's key: forged or altered" in texts(altered["problems"])
    assert target(altered, "notes")["status"] == "ok"  # its manifests are authentic

    text = world.fleet("fleet")
    assert text.returncode == 2
    lines = text.stdout.splitlines()
    assert lines[0].startswith("pyops fleet") and "CRITICAL, 3 host(s)" in lines[0]
    first = [line.split()[1] for line in lines if re.match(r"^(CRITICAL|WARNING|OK) +web-", line)]
    assert first == ["web-4", "web-5", "web-2"]  # the worst first


def test_without_its_key_an_altered_index_cannot_be_told_from_a_true_one(world: World) -> None:
    proc = world.fleet("fleet", "--format", "json", keys=False)
    web5 = by_host(document(proc))["web-5"]
    assert (web5["index"], web5["authenticated"]) == ("unauthenticated", False)
    assert web5["status"] == "warning"


def test_prometheus_one_family_per_fact(world: World) -> None:
    proc = world.fleet("fleet", "--format", "prometheus")
    assert proc.returncode == 2, said(proc)
    families = {f.name: f for f in text_string_to_metric_families(proc.stdout)}
    assert families["pyops_fleet_overall_status"].samples[0].value == 2
    assert families["pyops_fleet_hosts"].samples[0].value == 3
    status = {s.labels["host"]: s.value for s in families["pyops_fleet_host_status"].samples}
    assert status == {"web-2": 1, "web-4": 2, "web-5": 2}
    ages = {
        (s.labels["host"], s.labels["target"], s.labels["tier"]): s.value
        for s in families["pyops_fleet_backup_age_seconds"].samples
    }
    assert ages[("web-4", "notes", "daily")] > 5 * 86400
    sizes = families["pyops_fleet_backup_bytes"].samples
    assert {tuple(sorted(s.labels)) for s in sizes} == {("host", "target", "tier")}
    index = {
        s.labels["host"]: s.labels["state"] for s in families["pyops_fleet_host_index"].samples
    }
    assert index == {"web-2": "authenticated", "web-4": "authenticated", "web-5": "refused"}
    rto = {s.labels["host"]: s.value for s in families["pyops_fleet_drill_rto_seconds"].samples}
    assert rto["web-4"] == 12.5 and rto["web-2"] > 0


def test_output_file_is_written_whole_and_readable(world: World, tmp_path: Path) -> None:
    out = tmp_path / "fleet.prom"
    proc = world.fleet("good", "--format", "prometheus", "--output", str(out))
    assert proc.returncode == 0 and proc.stdout == "", said(proc)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert out.read_text().endswith("\n") and "pyops_fleet_up 1" in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["fleet.prom"]  # no temp left


def test_no_host_under_the_prefix_is_unknown(world: World) -> None:
    proc = world.fleet("nothing-here", "--format", "json")
    assert proc.returncode == 3, said(proc)
    assert document(proc)["hosts"] == [] and document(proc)["status"] == "unknown"
    assert world.fleet("nothing-here").stdout.startswith("pyops fleet s3://")


def test_an_unreachable_bucket_is_unknown(tmp_path: Path) -> None:
    config = fleet_config(tmp_path, "http://127.0.0.1:9", "fleet-none", "pyops")
    proc = run_pyops(config, "fleet", "--format", "json")
    assert proc.returncode == 3, said(proc)
    assert "cannot reach" in document(proc)["error"] and "cannot list the bucket" in proc.stderr


def test_bad_usage_exits_2(world: World, tmp_path: Path) -> None:
    proc = world.fleet("good", "--format", "yaml")
    assert proc.returncode == 2
    proc = run_pyops(world.config("good"), "fleet", "--keys-dir", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "--keys-dir" in proc.stderr
    no_bucket = tmp_path / "nobucket.toml"
    no_bucket.write_text(f'[repository]\npath = "{tmp_path / "r"}"\n')
    no_bucket.chmod(0o600)
    proc = run_pyops(no_bucket, "fleet")
    assert proc.returncode == 2 and "offsite.bucket" in proc.stderr


# --- the page ---------------------------------------------------------------------------


def test_html_page_is_self_contained_and_renders(world: World, tmp_path: Path) -> None:
    page = tmp_path / "fleet.html"
    proc = world.fleet("fleet", "--format", "html", "--output", str(page))
    assert proc.returncode == 2, said(proc)
    html = page.read_text()
    assert (
        html.startswith("<!doctype html>") and html.count("<svg") == 5
    )  # web-5: no drills without its index
    assert not re.search(r"""(src|href)\s*=|https?://|@import|<script|url\(""", html)

    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/install-deps.sh installs it)")
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(
        [*base, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    ).stdout
    for text in (
        "pyops fleet",
        "Needs attention",
        "web-2",
        "web-4",
        "web-5",
        "shrinking",
        "forged or altered",
        "last restore proven",
        "backup size over time",
    ):
        assert text in dom, text
    shot = tmp_path / "fleet.png"
    subprocess.run(
        [*base, "--window-size=1000,700", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        env=env,
        check=True,
    )
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1000, 700)
    colors = set(pixels)
    assert len(colors) > 50  # text, badges and charts, not a blank page
    critical_bg, warning_bg = (0xFD, 0xE3, 0xE1), (0xFF, 0xF1, 0xD6)
    assert critical_bg in colors and warning_bg in colors
