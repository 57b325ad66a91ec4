"""The fleet as one self-contained HTML page: no script, no external asset, inline CSS,
charts drawn here as inline SVG. For the person who asks "when did we last prove a
restore?": what needs attention first, then a row per host and target with a
freshness grid, the last drill, backup size over time and RTO over time.

Every text that came from the bucket (names, warnings, errors) is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from html import escape

from pyops.fleet.view import (
    STATUSES,
    FleetView,
    HostView,
    TargetView,
    TierView,
    age_text,
    seconds_text,
)
from pyops.health.result import RANK, Status
from pyops.progress import human

CSS = """
:root { --ok:#1b7a35; --ok-bg:#e3f4e7; --warning:#9a5b00; --warning-bg:#fff1d6;
  --critical:#b3261e; --critical-bg:#fde3e1; --unknown:#5f6368; --unknown-bg:#ececec;
  --na-bg:#f7f7f7; --line:#d0d4d9; --ink:#1d232a; --muted:#5f6b76; }
* { box-sizing:border-box; }
body { font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink);
  margin:0; padding:20px 28px; background:#fff; }
h1 { font-size:22px; margin:0 0 2px; } h2 { font-size:17px; margin:26px 0 8px; }
.where { color:var(--muted); margin:0 0 12px; }
.badge { display:inline-block; padding:2px 9px; border-radius:10px; font-weight:600;
  font-size:12px; letter-spacing:.02em; text-transform:uppercase; }
.summary .badge { font-size:13px; margin-right:6px; }
.ok { color:var(--ok); background:var(--ok-bg); }
.warning { color:var(--warning); background:var(--warning-bg); }
.critical { color:var(--critical); background:var(--critical-bg); }
.unknown { color:var(--unknown); background:var(--unknown-bg); }
.na { color:var(--muted); background:var(--na-bg); }
ul.attention { padding-left:0; list-style:none; margin:0; }
ul.attention li { margin:3px 0; }
table { border-collapse:collapse; width:100%; }
th, td { border-bottom:1px solid var(--line); padding:5px 8px; text-align:left;
  vertical-align:middle; }
th { font-size:12px; color:var(--muted); font-weight:600; background:#fafbfc;
  position:sticky; top:0; }
td.host { font-weight:600; border-right:1px solid var(--line); }
td.cell { text-align:center; white-space:nowrap; font-variant-numeric:tabular-nums; }
td.num { text-align:right; white-space:nowrap; font-variant-numeric:tabular-nums; }
.sub { display:block; color:var(--muted); font-size:11px; }
svg.chart text { font-size:10px; fill:var(--muted); }
.problems { margin:2px 0 0; padding-left:16px; color:var(--muted); font-size:12px;
  font-weight:400; }
footer { margin-top:22px; color:var(--muted); font-size:12px; }
"""


def _badge(status: str, label: str | None = None) -> str:
    return f'<span class="badge {status}">{escape(label or status)}</span>'


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def chart(
    points: Sequence[Sequence[float]],
    fmt: Callable[[float], str],
    color: str,
    label: str,
    bad: Callable[[Sequence[float]], bool] = lambda p: False,
) -> str:
    """A small line chart over time: [epoch, value, ...] points, zero at the bottom,
    the first and last dates and the last and largest values written on it."""
    if not points:
        return '<span class="sub">no data</span>'
    w, h, left, right, top, bottom = 220, 58, 4, 58, 6, 14
    t0, t1 = points[0][0], points[-1][0]
    vmax = max(p[1] for p in points) or 1.0
    span = (t1 - t0) or 1.0

    def xy(p: Sequence[float]) -> tuple[float, float]:
        x = left + (p[0] - t0) / span * (w - left - right) if t1 > t0 else (w - right) / 2
        y = top + (1 - p[1] / vmax) * (h - top - bottom)
        return round(x, 1), round(y, 1)

    coords = [xy(p) for p in points]
    line = " ".join(f"{x},{y}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x}" cy="{y}" r="{3 if bad(p) else 2}" '
        f'fill="{"#b3261e" if bad(p) else color}"/>'
        for (x, y), p in zip(coords, points, strict=True)
        if bad(p) or len(points) <= 40 or p is points[-1]
    )
    last = points[-1][1]
    summary = (
        f"{label}: {len(points)} point(s) from {_when(t0)} to {_when(t1)}; "
        f"last {fmt(last)}, largest {fmt(vmax)}"
    )
    base = h - bottom
    labels = f'<text x="{w - right + 4}" y="{coords[-1][1] + 3}">{escape(fmt(last))}</text>'
    if coords[-1][1] - top > 12:  # the largest value, where it does not cover the last
        labels += f'<text x="{w - right + 4}" y="{top + 4}">{escape(fmt(vmax))}</text>'
    labels += f'<text x="{left}" y="{h - 2}">{_when(t0)}</text>'
    if _when(t1) != _when(t0):
        labels += f'<text x="{w - right}" y="{h - 2}" text-anchor="end">{_when(t1)}</text>'
    return (
        f'<svg class="chart" role="img" aria-label="{escape(summary)}" width="{w}" '
        f'height="{h}" viewBox="0 0 {w} {h}"><title>{escape(summary)}</title>'
        f'<line x1="{left}" y1="{base}" x2="{w - right}" y2="{base}" stroke="#d0d4d9"/>'
        f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.6"/>{dots}'
        f"{labels}</svg>"
    )


def _tier_cell(t: TierView) -> str:
    if not t.judged and t.age_hours is None:
        return '<td class="cell na">&ndash;</td>'
    if t.age_hours is None:
        empty = "na" if t.status == "ok" else t.status
        return f'<td class="cell {empty}">none yet</td>'
    tip = f"{t.tier}: {age_text(t.age_hours)} old, limit {age_text(t.limit_hours)}"
    if t.newest:
        tip += f"; newest {t.newest['id']}, {human(t.newest['size'])}; {t.count} kept"
    cls: str = t.status if t.judged else "na"
    return (
        f'<td class="cell {cls}" title="{escape(tip)}">{escape(age_text(t.age_hours))}'
        f'<span class="sub">{t.count} kept</span></td>'
    )


def _trend_cell(target: TargetView) -> str:
    tier = target.newest_tier()
    if target.newest is None:
        return '<td class="cell na">&ndash;</td>'
    size = human(target.newest["size"])
    if tier is None or tier.ratio is None or tier.median is None:
        return f'<td class="num">{escape(size)}</td>'
    cls = "warning" if tier.shrinking else ""
    return (
        f'<td class="num {cls}">{escape(size)}<span class="sub">{tier.ratio:.2f} &times; median '
        f"{escape(human(tier.median))}</span></td>"
    )


def _offsite_cell(target: TargetView) -> str:
    where = target.newest.get("offsite") if target.newest else None
    if where is None:
        return '<td class="cell na">?</td>'
    return '<td class="cell ok">yes</td>' if where else '<td class="cell warning">no</td>'


def _drill_cell(target: TargetView) -> str:
    d = target.drill
    if not d["known"]:
        return '<td class="cell na">unknown<span class="sub">no index</span></td>'
    if d["last_time"] is None:
        return '<td class="cell warning">never</td>'
    cls = d["status"]
    if d["last_success"] is None:
        return f'<td class="cell {cls}">never proven<span class="sub">last failed</span></td>'
    ago = age_text(d["success_age_days"] * 24)
    rto = f"RTO {seconds_text(d['rto_s'])}" + ("" if d["last_ok"] else ", last FAILED")
    tip = f"last drill {d['last_time'][:19]} of {d['backup']}" + (
        f": {d['error']}" if d["error"] else ""
    )
    return (
        f'<td class="cell {cls}" title="{escape(tip)}">{escape(ago)} ago'
        f'<span class="sub">{escape(rto)}</span></td>'
    )


def _rows(host: HostView) -> str:
    out = []
    span = max(1, len(host.targets))
    notes = "".join(f"<li>{escape(p.text)}</li>" for p in host.problems)
    facts = {"index": f"index {host.index}", "manifests": "from manifests", "none": "unreadable"}
    head = (
        f'<td class="host" rowspan="{span}">{escape(host.host)} {_badge(host.status)}'
        f'<span class="sub">{escape(facts[host.source])}'
        f"{'' if host.authenticated else ', unauthenticated'}</span>"
        f"{f'<ul class=problems>{notes}</ul>' if notes else ''}</td>"
    )
    if not host.targets:
        return f'<tr>{head}<td colspan="10" class="na">no targets</td></tr>'
    for i, t in enumerate(host.targets):
        problems = "".join(f"<li>{escape(p.text)}</li>" for p in t.problems if p.status != "ok")
        cells = [
            f'<td>{escape(t.target)} <span class="sub">{escape(t.type)}</span>'
            f"{f'<ul class=problems>{problems}</ul>' if problems else ''}</td>",
            f'<td class="cell">{_badge(t.status)}</td>',
            *(_tier_cell(tier) for tier in t.tiers),
            _trend_cell(t),
            _offsite_cell(t),
            _drill_cell(t),
            "<td>" + chart(t.sizes, human, "#2f5f9e", "backup size", lambda p: False) + "</td>",
            "<td>"
            + chart(t.rto, seconds_text, "#6a3d9a", "RTO", lambda p: len(p) > 2 and not p[2])
            + "</td>",
        ]
        out.append(f"<tr>{head if i == 0 else ''}{''.join(cells)}</tr>")
    return "\n".join(out)


def _attention(view: FleetView) -> str:
    items: list[tuple[Status, str]] = []
    for host in sorted(view.hosts, key=lambda h: (-RANK[h.status], h.host)):
        for p in host.problems:
            if p.status != "ok":
                items.append((p.status, f"{host.host}: {p.text}"))
        for t in host.targets:
            items += [(p.status, f"{host.host} / {t.target}: {p.text}") for p in t.problems]
    items = [i for i in items if i[0] != "ok"]
    items.sort(key=lambda i: -RANK[i[0]])
    if view.error:
        items.insert(0, ("unknown", f"cannot list the bucket: {view.error}"))
    if not items:
        return "<p>Nothing needs attention.</p>"
    lis = "".join(f"<li>{_badge(s)} {escape(text)}</li>" for s, text in items)
    return f'<ul class="attention">{lis}</ul>'


def chunks(view: FleetView) -> Iterator[str]:
    """The page, a host's rows at a time."""
    counts = view.counts()
    where = f"s3://{view.bucket}/{view.prefix}{'/' if view.prefix else ''}"
    summary = " ".join(_badge(s, f"{counts[s]} {s}") for s in STATUSES if counts[s])
    header = (
        "<tr><th>host</th><th>target</th><th>status</th><th>daily</th><th>weekly</th>"
        "<th>monthly</th><th>newest size</th><th>offsite</th><th>last restore proven</th>"
        "<th>backup size over time</th><th>RTO over time</th></tr>"
    )
    generated = view.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    yield f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pyops fleet: {view.status.upper()}</title><style>{CSS}</style></head>
<body>
<h1>pyops fleet {_badge(view.status)}</h1>
<p class="where">{escape(where)} · {counts["hosts"]} host(s), {counts["targets"]} target(s)
 · generated {generated}</p>
<div class="summary">{summary}</div>
<h2>Needs attention</h2>
{_attention(view)}
<h2>Hosts and targets</h2>
<table class="grid"><thead>{header}</thead>
<tbody>
"""
    for host in sorted(view.hosts, key=lambda h: h.host):
        yield _rows(host) + "\n"
    yield """</tbody></table>
<footer>Freshness: the age of the newest backup of the tier or a longer one, against
[health] limits. Newest size: its ratio to the median of the backups before it.
Last restore proven: the last successful <code>pyops drill</code>, and the time to
recover the last drill measured. Red dots: failed drills. Exit code and rules as
<code>pyops health</code>.</footer>
</body></html>
"""


def page(view: FleetView) -> str:
    return "".join(chunks(view))
