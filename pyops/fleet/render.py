"""The faces of a fleet view: aligned text, one JSON document, Prometheus exposition
(one metric family per fact, labels host/target/tier). The HTML page is in html.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from pyops import metrics
from pyops.fleet.view import (
    STATUSES,
    FleetView,
    HostView,
    TargetView,
    age_text,
    seconds_text,
)
from pyops.health.result import RANK
from pyops.metrics import HEALTH_CODES, Family
from pyops.progress import human


class JsonWriter:
    """The JSON document written a host at a time, one host a line, the fleet's status
    and summary after the hosts: a fleet of hundreds is never one document in memory.
    Nothing is written before the first host (an error then leaves no half document)."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self.write = write
        self.count = 0

    def _head(self) -> str:
        return '{\n "hosts": [' if self.count == 0 else ","

    def host(self, host: HostView) -> None:
        self.write(self._head() + "\n  " + json.dumps(host.as_dict(), separators=(",", ":")))
        self.count += 1

    def end(self, view: FleetView) -> None:
        rest = json.dumps(view.as_dict(hosts=False), indent=1)  # "{\n ...\n}"
        self.write(("" if self.count else '{\n "hosts": [') + "\n ],\n" + rest[2:] + "\n")


def json_chunks(view: FleetView) -> list[str]:
    out: list[str] = []
    writer = JsonWriter(out.append)
    for host in view.hosts:
        writer.host(host)
    writer.end(view)
    return out


def as_json(view: FleetView) -> str:
    return "".join(json_chunks(view))


def _summary(view: FleetView) -> str:
    counts = view.counts()
    parts = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
    where = f"s3://{view.bucket}/{view.prefix}{'/' if view.prefix else ''}"
    return (
        f"pyops fleet {where}: {view.status.upper()}, {counts['hosts']} host(s), "
        f"{counts['targets']} target(s){': ' + parts if parts else ''}"
    )


def _tier_cell(target: TargetView, tier: str) -> str:
    t = next(t for t in target.tiers if t.tier == tier)
    if not t.judged and t.age_hours is None:
        return f"{tier} -"
    age = age_text(t.age_hours) if t.age_hours is not None else "none"
    mark = "" if t.status == "ok" else "!"
    return f"{tier} {age}{mark}"


def _target_line(target: TargetView) -> str:
    n = target.newest
    newest = f"{human(n['size'])}" if n else "no backup"
    trend = ""
    tier = target.newest_tier()
    if tier is not None and tier.ratio is not None:
        trend = f" x{tier.ratio:.2f} of median" + ("!" if tier.shrinking else "")
    offsite = {True: "yes", False: "NO", None: "?"}[n.get("offsite") if n else None]
    d = target.drill
    if not d["known"]:
        drill = "drill ?"
    elif d["last_time"] is None:
        drill = "never drilled"
    else:
        ok = "ok" if d["last_ok"] else "FAILED"
        since = f"{d['success_age_days']:.0f} d ago" if d["success_age_days"] is not None else ""
        drill = f"drill {ok} {since} RTO {seconds_text(d['rto_s'])}".replace("  ", " ")
    tiers = "  ".join(_tier_cell(target, tier) for tier in ("daily", "weekly", "monthly"))
    return f"{newest}{trend}  {tiers}  offsite {offsite}  {drill}"


def text(view: FleetView) -> str:
    lines = [_summary(view)]
    if view.error:
        lines.append(f"UNKNOWN   cannot list the bucket: {view.error}")
    hosts = sorted(view.hosts, key=lambda h: (-RANK[h.status], h.host))
    width = max((len(h.host) for h in hosts), default=4)
    twidth = max((len(t.target) for h in hosts for t in h.targets), default=6)
    for host in hosts:
        lines.append("")
        lines.append(f"{host.status.upper():<8}  {host.host:<{width}}  {_host_facts(host)}")
        lines += [f"{'':<10}{'':<{width}}  - {p.text}" for p in host.problems]
        for t in host.targets:
            lines.append(
                f"{t.status.upper():<8}  {'':<{width}}  {t.target:<{twidth}}  {_target_line(t)}"
            )
            lines += [
                f"{'':<10}{'':<{width}}  {'':<{twidth}}  - {p.text}"
                for p in t.problems
                if p.status != "ok"
            ]
    return "\n".join(lines)


def _host_facts(host: HostView) -> str:
    source = {
        "index": f"index {host.index}",
        "manifests": "from its manifests",
        "none": "unreadable",
    }[host.source]
    written = f", written {host.written_at[:19]}" if host.written_at else ""
    return f"({source}{written}, {len(host.targets)} target(s))"


# --- Prometheus ------------------------------------------------------------------------


def _ts(when: str) -> float:
    return datetime.fromisoformat(when).timestamp()


def families(view: FleetView) -> list[Family]:
    p = "pyops_fleet"
    f = {
        name: Family(f"{p}_{name}", text)
        for name, text in (
            ("up", "1 when the bucket could be listed."),
            ("hosts", "Hosts found under the prefix."),
            (
                "overall_status",
                "Worst status, as the exit code: 0 ok, 1 warning, 2 critical, 3 unknown.",
            ),
            ("host_status", "A host's worst status: 0 ok, 1 warning, 2 critical, 3 unknown."),
            ("host_authenticated", "1 when what the host shows was authenticated with its key."),
            ("host_index", "1 for the state of the host's index (label state)."),
            ("host_index_written_timestamp_seconds", "When the host last wrote its index."),
            ("target_status", "A target's worst status: 0 ok, 1 warning, 2 critical, 3 unknown."),
            ("tier_status", "A tier's status: 0 ok, 1 warning, 2 critical, 3 unknown."),
            ("backup_age_seconds", "Age of the newest backup of the tier or a longer one."),
            ("backup_max_age_seconds", "The tier's freshness limit ([health])."),
            ("backup_timestamp_seconds", "When the tier's newest backup started."),
            ("backup_bytes", "Size of the tier's newest backup."),
            ("backup_median_bytes", "Median size of the backups before the newest."),
            ("backup_count", "Complete backups of the tier on the host."),
            ("backup_offsite_count", "Backups of the tier in the bucket."),
            ("backup_offsite", "1 when the tier's newest backup is in the bucket."),
            ("drill_last_ok", "1 when the target's last drill succeeded."),
            ("drill_rto_seconds", "Time to recover measured by the target's last drill."),
            ("drill_last_timestamp_seconds", "When the target was last drilled."),
            ("drill_last_success_timestamp_seconds", "When a drill of the target last succeeded."),
            ("refused_manifests", "Manifests of the target refused (forged, altered, malformed)."),
            ("unauthenticated_backups", "Backups of the target used without a MAC."),
        )
    }
    f["up"].add(0 if view.error else 1)
    f["hosts"].add(len(view.hosts))
    f["overall_status"].add(view.exit_code)
    for h in view.hosts:
        f["host_status"].add(HEALTH_CODES[h.status], host=h.host)
        f["host_authenticated"].add(int(h.authenticated), host=h.host)
        f["host_index"].add(1, host=h.host, state=h.index)
        if h.written_at:
            f["host_index_written_timestamp_seconds"].add(_ts(h.written_at), host=h.host)
        for t in h.targets:
            _target_samples(f, h.host, t)
    return list(f.values())


def _target_samples(f: dict[str, Family], host: str, t: TargetView) -> None:
    labels = {"host": host, "target": t.target}
    f["target_status"].add(HEALTH_CODES[t.status], **labels)
    for tier in t.tiers:
        if not tier.judged and tier.newest is None:
            continue
        tl = {**labels, "tier": tier.tier}
        f["tier_status"].add(HEALTH_CODES[tier.status], **tl)
        f["backup_max_age_seconds"].add(tier.limit_hours * 3600, **tl)
        if tier.age_hours is not None:
            f["backup_age_seconds"].add(round(tier.age_hours * 3600, 3), **tl)
        f["backup_count"].add(tier.count, **tl)
        if tier.offsite_count is not None:
            f["backup_offsite_count"].add(tier.offsite_count, **tl)
        if tier.median is not None:
            f["backup_median_bytes"].add(tier.median, **tl)
        if tier.newest:
            f["backup_timestamp_seconds"].add(_ts(tier.newest["time"]), **tl)
            f["backup_bytes"].add(tier.newest["size"], **tl)
            if tier.newest.get("offsite") is not None:
                f["backup_offsite"].add(int(tier.newest["offsite"]), **tl)
    d = t.drill
    if d["last_time"] is not None:
        f["drill_last_ok"].add(int(bool(d["last_ok"])), **labels)
        f["drill_rto_seconds"].add(float(d["rto_s"]), **labels)
        f["drill_last_timestamp_seconds"].add(_ts(d["last_time"]), **labels)
    if d["last_success"]:
        f["drill_last_success_timestamp_seconds"].add(_ts(d["last_success"]), **labels)
    f["refused_manifests"].add(t.refused, **labels)
    f["unauthenticated_backups"].add(t.unauthenticated, **labels)


def prometheus(view: FleetView) -> str:
    return "\n".join(metrics.render(families(view)))
