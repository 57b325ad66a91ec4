"""What sessions are doing now: who blocks whom, and what has run too long.

Both look at every database of the server: a lock queue in another database of
the same cluster still holds connections and transaction ids. The facts are
pgfacts.server's and the critical thresholds [health]'s, as `pyops health` has them.

Blocked sessions form chains (C waits for B, which waits for A): the one action per
chain ends its head, A, which waits for nobody. A session waiting in a chain gets no
action of its own, here or under long-running, and a head gets only the chain's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyops.pgfacts import server
from pyops.report.context import Probe
from pyops.report.model import Advice, Column, Section, Severity, Table


def _ends_transaction(state: str | None) -> bool:
    """Is terminating the only way to release its locks? An active statement releases
    them when cancelled (its transaction aborts); a session idle (in a transaction, or
    holding a session-level advisory lock) has nothing running to cancel."""
    return state != "active"


def _stop(pid: int, state: str | None) -> str:
    """Cancel a running statement; an idle transaction has nothing to cancel."""
    if _ends_transaction(state):
        return f"pg_terminate_backend({int(pid)})"
    return f"pg_cancel_backend({int(pid)})"


@dataclass
class Chain:
    """Sessions that wait, directly or through each other, for the locks of `heads`:
    the sessions among them that wait for nobody. Ending the heads frees the chain;
    ending a waiting session frees nothing."""

    heads: dict[int, dict[str, Any]] = field(default_factory=dict)  # pid -> its pair row
    waiting: set[int] = field(default_factory=set)
    longest_s: float = 0.0

    @property
    def pids(self) -> set[int]:
        return self.waiting | set(self.heads)

    def action(self) -> str:
        """One statement that ends every head (usually one) of the chain."""
        stops = [_stop(pid, head["blocking_state"]) for pid, head in sorted(self.heads.items())]
        return f"SELECT {', '.join(stops)};"


def chains(pairs: list[dict[str, Any]]) -> list[Chain]:
    """The pairs (blocked_pid waits for blocking_pid) grouped into chains: the sessions
    connected by waiting, longest wait first. A chain whose every session waits (a
    deadlock not yet detected) has no head."""
    parent: dict[int, int] = {}

    def root(pid: int) -> int:
        while parent.setdefault(pid, pid) != pid:
            parent[pid] = parent[parent[pid]]
            pid = parent[pid]
        return pid

    for p in pairs:
        parent[root(int(p["blocked_pid"]))] = root(int(p["blocking_pid"]))
    waiting = {int(p["blocked_pid"]) for p in pairs}
    found: dict[int, Chain] = {}
    for p in pairs:
        chain = found.setdefault(root(int(p["blocked_pid"])), Chain())
        chain.waiting.add(int(p["blocked_pid"]))
        chain.longest_s = max(chain.longest_s, float(p["waiting_s"] or 0.0))
        if int(p["blocking_pid"]) not in waiting:
            chain.heads.setdefault(int(p["blocking_pid"]), p)
    return sorted(found.values(), key=lambda c: (-c.longest_s, min(c.pids)))


def blocking(probe: Probe) -> Section:
    rows = server.blocked(probe)
    found = chains(rows)
    section = Section(
        "blocking",
        "Blocking",
        facts={"blocked_sessions": len({r["blocked_pid"] for r in rows}), "chains": len(found)},
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
            ),
            Table(
                "chains",
                "blocking chains: the head (waiting for nobody) and every session behind it",
                (
                    Column("head", "head pid"),
                    Column("head_state", "its state"),
                    Column("waiting", "sessions waiting"),
                    Column("longest_s", "longest wait", "seconds"),
                    Column("action", "action"),
                ),
                [
                    {
                        "head": ", ".join(str(pid) for pid in sorted(c.heads)) or None,
                        "head_state": ", ".join(
                            str(h["blocking_state"]) for _, h in sorted(c.heads.items())
                        )
                        or None,
                        "waiting": sorted(c.waiting),
                        "longest_s": c.longest_s,
                        "action": c.action() if c.heads else None,
                    }
                    for c in found
                ],
                empty="no blocking chain",
            ),
        ],
    )
    critical = probe.options.thresholds.blocking_critical_seconds
    for chain in found:
        behind = ", ".join(str(pid) for pid in sorted(chain.waiting))
        if not chain.heads:
            section.notes.append(
                f"sessions {behind} wait for each other (a lock cycle): the deadlock detector "
                "ends one of them after deadlock_timeout"
            )
            continue
        heads = [
            f"pid {pid} ({h['blocking_user']}, {h['blocking_state']})"
            for pid, h in sorted(chain.heads.items())
        ]
        finding = (
            f"{' and '.join(heads)} {'blocks' if len(heads) == 1 else 'block'} "
            f"{len(chain.waiting)} session(s) ({behind}), the longest waiting "
            f"{chain.longest_s:.0f} s: end {'it' if len(heads) == 1 else 'them'}, not the "
            "sessions waiting (ending those frees nothing)"
        )
        if any(_ends_transaction(h["blocking_state"]) for h in chain.heads.values()):
            finding += (
                "; a session idle in its transaction has nothing to cancel, so it is "
                "terminated (its transaction rolls back); idle_in_transaction_session_timeout "
                "ends such sessions by itself"
            )
        severity: Severity = "critical" if chain.longest_s >= critical else "warning"
        section.advice.append(
            Advice(
                severity,
                finding,
                chain.action(),
                object=",".join(str(pid) for pid in sorted(chain.heads)),
            )
        )
    return section


def _in_chains(probe: Probe) -> dict[int, str]:
    """pid -> how it takes part in a blocking chain, from the blocking section (so both
    sections judge the same snapshot of the lock queues)."""
    section = probe.section("blocking")
    if section.error is not None:
        return {}
    out: dict[int, str] = {}
    for chain in chains(section.table("pairs").rows):
        heads = ", ".join(str(pid) for pid in sorted(chain.heads)) or "nobody (a lock cycle)"
        for pid in chain.waiting:
            out[pid] = f"waits in the blocking chain headed by {heads}: ending it frees nothing"
        for pid in chain.heads:
            out[pid] = "heads a blocking chain: its one action is under blocking"
    return out


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
    chained = _in_chains(probe)
    for r in rows:
        pid = int(r["pid"])
        running = float(r["running_s"] or 0.0)
        if pid in chained or r["wait_event_type"] == "Lock":
            # a waiting session: stopping it frees nothing; a chain's head: `blocking`
            # has the one action for it
            what = chained.get(pid, "waits for a lock: ending it frees nothing")
            section.notes.append(f"pid {pid} {what} (see blocking)")
            continue
        severity: Severity = "critical" if running >= critical else "warning"
        section.advice.append(
            Advice(
                severity,
                f"pid {pid} ({r['user']}@{r['database']}, {r['state']}) has run {running:.0f} s",
                f"SELECT {_stop(pid, r['state'])};",
                object=str(pid),
            )
        )
    return section
