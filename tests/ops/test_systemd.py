"""Rendered units pass systemd-analyze; the shipped systemd/ files are the renderer's."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.cli import PYOPS, run_pyops, write_config

from pyops.calendar import ALL_JOBS
from pyops.commands.ops import shipped

ROOT = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")


def render(tmp_path: Path) -> Path:
    (tmp_path / "app.sqlite3").touch()
    body = f'[[targets]]\nname = "db"\ntype = "sqlite"\npath = "{tmp_path}/app.sqlite3"\n'
    config = write_config(tmp_path / "pyops.toml", tmp_path / "repo", body)
    dest = tmp_path / "units"
    result = run_pyops(config, "systemd", "render", "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    return dest


@needs_analyze
def test_rendered_units_verify(tmp_path: Path) -> None:
    dest = render(tmp_path)
    names = sorted(p.name for p in dest.iterdir())
    assert "pyops-backup@.service" in names and "pyops-backup@auto.timer" in names
    assert {"pyops-maintenance.timer", "pyops-health.timer", "pyops-drill.timer"} <= set(names)
    # instantiate the templates, as systemd would, and verify everything together
    for template, instance in (("pyops-backup@.service", "daily"), ("pyops-failure@.service", "x")):
        text = (dest / template).read_text()
        (dest / template.replace("@.", f"@{instance}.")).write_text(text)
    units = [str(p) for p in dest.iterdir() if "@." not in p.name]
    result = subprocess.run(
        [str(ANALYZE), "verify", *units], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    backup = (dest / "pyops-backup@.service").read_text()
    assert f"ExecStart={PYOPS}" in backup or "ExecStart=/" in backup
    for line in (
        "ProtectSystem=strict",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        "UMask=0077",
        "CapabilityBoundingSet=",
        "IOSchedulingClass=idle",
        "OnFailure=pyops-failure@%n.service",
        "Type=oneshot",
    ):
        assert line in backup
    assert re.search(rf"ReadWritePaths=.*{re.escape(str(tmp_path / 'repo'))}", backup)


@needs_analyze
@pytest.mark.parametrize("job", ALL_JOBS, ids=lambda j: j.name)
def test_every_oncalendar_parses(job: object) -> None:
    spec = job.oncalendar  # type: ignore[attr-defined]
    result = subprocess.run(
        [str(ANALYZE), "calendar", spec], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Next elapse" in result.stdout


def test_timers_are_persistent_and_randomized() -> None:
    for name, text in shipped().items():
        if name.endswith(".timer"):
            assert "Persistent=true" in text
            assert "RandomizedDelaySec=" in text and "AccuracySec=" in text


def test_shipped_units_match_the_renderer() -> None:
    files = {p.name: p.read_text() for p in (ROOT / "systemd").iterdir()}
    assert files == shipped(), "systemd/ is stale: regenerate it (see docs/systemd.md)"
