"""Redis: a real round trip (PING, SET/GET/DEL of a scratch key), memory against
maxmemory, evictions since the last run, and the length of configured queues
(e.g. a Celery backlog)."""

from __future__ import annotations

import secrets
import time

from pyops.health.context import Context
from pyops.health.resp import Connection, RedisUrl, RespError, parse_info
from pyops.health.result import Part, Result, Status, combine, worst


def _probe(ctx: Context, raw_url: str) -> Part:
    url = RedisUrl.parse(raw_url)
    name = url.redacted()
    cfg = ctx.cfg
    context = ctx.ssl_context() if url.tls else None
    t0 = time.monotonic()
    try:
        with Connection(url, cfg.timeout_seconds, context) as conn:
            if conn.call("PING") != "PONG":
                raise RespError("PING did not answer PONG")
            key = f"pyops:health:{secrets.token_hex(8)}"
            token = secrets.token_hex(8).encode()
            conn.call("SET", key, token, "EX", "60")
            got = conn.call("GET", key)
            conn.call("DEL", key)
            if got != token:
                raise RespError("GET returned something else than was SET")
            rtt_ms = (time.monotonic() - t0) * 1000
            info = parse_info(conn.call("INFO"))
            queues = {q: int(conn.call("LLEN", q)) for q in cfg.redis_queues}
    except (OSError, RespError) as exc:
        return Part("critical", f"{name}: {exc}", {f"{name}.up": 0.0})
    statuses: list[Status] = ["ok"]
    notes = [f"{name}: PING/SET/GET/DEL ok in {rtt_ms:.0f} ms"]
    metrics = {f"{name}.up": 1.0, f"{name}.roundtrip_ms": round(rtt_ms, 2)}

    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    metrics[f"{name}.used_memory_bytes"] = float(used)
    if limit:
        percent = 100.0 * used / limit
        metrics[f"{name}.memory_percent"] = round(percent, 2)
        if percent > cfg.redis_memory_warn_percent:
            statuses.append("warning")
            notes.append(f"memory {percent:.0f}% of maxmemory")
    evicted = float(info.get("evicted_keys", 0))
    metrics[f"{name}.evicted_keys_total"] = evicted
    before = ctx.remember(f"redis:{name}", {"evicted_keys": evicted})
    if before is not None and evicted > float(before.get("evicted_keys", 0)):
        statuses.append("warning")
        notes.append(
            f"{evicted - float(before.get('evicted_keys', 0)):.0f} keys evicted since the last "
            f"run (policy {info.get('maxmemory_policy', '?')}): raise maxmemory"
        )
    for queue, length in queues.items():
        metrics[f"{name}/{queue}.queue_length"] = float(length)
        if length > cfg.redis_queue_warn:
            statuses.append("warning")
            notes.append(f"queue {queue} holds {length} (over {cfg.redis_queue_warn})")
        else:
            notes.append(f"queue {queue} {length}")
    return Part(worst(statuses), ", ".join(notes), metrics)


def redis(ctx: Context) -> Result:
    return combine("redis", [_probe(ctx, url) for url in ctx.cfg.redis])
