"""What sessions are doing now: who blocks whom, and what has run too long.

Both look at every database of the server: a lock queue in another database of
the same cluster still holds connections and transaction ids. The facts are
pgfacts.server's and the critical thresholds [health]'s, as `pyops health` has them.
"""

from __future__ import annotations

from typing import Any

from pyops.pgfacts import server
from pyops.report.context import Probe
from pyops.report.model import Advice, Column, Section, Severity, Table


def _stop(pid: int, state: str | None) -> str:
    """Cancel a running statement; an idle transaction has nothing to cancel."""
    if state and state.startswith("idle in transaction"):
        return f"SELECT pg_terminate_backend({int(pid)});"
    return f"SELECT pg_cancel_backend({int(pid)});"


def blocking(probe: Probe) -> Section:
    rows = server.blocked(probe)
    blocked = {r["blocked_pid"] for r in rows}
    section = Section(
        "blocking",
        "Blocking",
        facts={"blocked_sessions": len(blocked)},
        tables=[
            Table(
                "pairs",
                "sessions waiting for a lock, and the session holding it (pg_blocking_pids)",
                (
                    Column("blocked_pid", "blocked pid", "int"),
                    Column("waiting_s", "waiting", "seconds"),
                    Column("database", "database"),
                    Column("blocked_query", "blocked query", "query"),
                    Column("blocking_pid", "blocking pid", "int"),
                    Column("blocking_state", "its state"),
                    Column("blocking_query", "its last query", "query"),
                ),
                rows,
                empty="no session is waiting for another",
            )
        ],
    )
    # advise on the head of each queue: a blocker that is not itself waiting
    heads: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["blocking_pid"] in blocked:
            continue
        head = heads.setdefault(r["blocking_pid"], {**r, "victims": 0})
        head["victims"] += 1
        head["waiting_s"] = max(head["waiting_s"] or 0.0, r["waiting_s"] or 0.0)
    for pid, head in heads.items():
        waited = float(head["waiting_s"] or 0.0)
        critical = probe.options.thresholds.blocking_critical_seconds
        severity: Severity = "critical" if waited >= critical else "warning"
        state = head["blocking_state"]
        finding = (
            f"pid {pid} ({head['blocking_user']}, {state}) blocks {head['victims']} "
            f"session(s), the longest waiting {waited:.0f} s"
        )
        if state and state.startswith("idle in transaction"):
            finding += (
                ": an open transaction doing nothing; set idle_in_transaction_session_timeout "
                "so this ends by itself"
            )
        section.advice.append(Advice(severity, finding, _stop(pid, state), object=str(pid)))
    return section


def long_running(probe: Probe) -> Section:
    seconds = probe.options.long_running_seconds
    rows = server.long_running(probe, seconds)
    critical = probe.options.thresholds.long_running_critical_seconds
    section = Section(
        "long-running",
        "Long-running queries",
        facts={"threshold_seconds": seconds},
        tables=[
            Table(
                "sessions",
                f"statements running (or transactions open) for {seconds:g} s or more",
                (
                    Column("pid", "pid", "int"),
                    Column("running_s", "running", "seconds"),
                    Column("database", "database"),
                    Column("user", "user"),
                    Column("state", "state"),
                    Column("wait_event", "waiting on"),
                    Column("query", "query", "query"),
                ),
                rows,
                empty=f"nothing over {seconds:g} s",
            )
        ],
    )
    for r in rows:
        running = float(r["running_s"] or 0.0)
        severity: Severity = "critical" if running >= critical else "warning"
        section.advice.append(
            Advice(
                severity,
                f"pid {r['pid']} ({r['user']}@{r['database']}, {r['state']}) has run "
                f"{running:.0f} s",
                _stop(int(r["pid"]), r["state"]),
                object=str(r["pid"]),
            )
        )
    return section
