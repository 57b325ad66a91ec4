"""What the bench scripts share: pyops run as an install runs it, and one process's
own peak RSS."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

PYOPS_TREE = Path(__file__).resolve().parent.parent.parent / "pyops"


def installed_env(env: dict[str, str]) -> dict[str, str]:
    """An install has its bytecode cached (pip compiles it): a harness's
    PYTHONDONTWRITEBYTECODE would make every start recompile pyops."""
    return {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}


def as_installed(env: dict[str, str]) -> dict[str, str]:
    """Compile the development tree once, as pip would, and that environment."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(PYOPS_TREE)], check=True)
    return installed_env(env)


def run_watched(
    argv: list[str], env: dict[str, str], stdout: int = subprocess.DEVNULL
) -> tuple[float, int, int, bytes, bytes]:
    """Run argv: (seconds, its own VmHWM in KiB, children excluded, exit code, stdout,
    stderr)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE)
    peak = [0]

    def watch() -> None:
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except (OSError, ValueError):
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.monotonic() - t0
    watcher.join()
    return seconds, peak[0], proc.returncode, out or b"", err
