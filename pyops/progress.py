"""Progress on a TTY (bytes, rate, percent of an estimate); nothing under systemd,
where each step ends with one plain log line instead."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType


def proc_io(pid: int, field: str) -> int | None:
    """Bytes a process has read (rchar) or written (wchar) so far; Linux only."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Redraws one status line on stderr twice a second while a stream runs."""

    def __init__(
        self, label: str, measure: Callable[[], int | None], estimate: int | None, enabled: bool
    ) -> None:
        self.label = label
        self.measure = measure
        self.estimate = estimate
        self.enabled = enabled
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def line(self) -> str:
        done = self.measure() or 0
        elapsed = max(time.monotonic() - self.started, 1e-6)
        text = f"{self.label}: {human(done)} at {human(done / elapsed)}/s"
        if self.estimate:
            text += f", ~{min(99, int(100 * done / self.estimate))}%"
        return text

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            sys.stderr.write("\r\x1b[K" + self.line())
            sys.stderr.flush()
