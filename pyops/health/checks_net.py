"""Network checks: TLS certificate expiry, HTTP endpoints, SMTP relays, the S3 bucket.

Every one verifies certificates (against [health] tls_ca_file when set) and gives
up after [health] timeout_seconds.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pyops import __version__
from pyops.config_rules import host_port
from pyops.errors import PyopsError
from pyops.health.context import Context
from pyops.health.result import Part, Result, Status, combine


def cert_days(cert: dict[str, Any], now: float) -> float:
    return (ssl.cert_time_to_seconds(str(cert["notAfter"])) - now) / 86400


def expiry_part(ctx: Context, subject: str, cert: dict[str, Any] | None) -> Part:
    """ok / warning / critical from the days a verified certificate has left."""
    if not cert or "notAfter" not in cert:
        return Part("critical", f"{subject}: no certificate presented")
    days = cert_days(cert, ctx.now.timestamp())
    metrics = {f"{subject}.days_left": round(days, 2)}
    cfg = ctx.cfg
    status: Status = "ok"
    if days < cfg.tls_critical_days:
        status = "critical"
    elif days < cfg.tls_warn_days:
        status = "warning"
    limit = cfg.tls_critical_days if status == "critical" else cfg.tls_warn_days
    note = f" (below {limit:g})" if status != "ok" else ""
    return Part(status, f"{subject}: certificate expires in {days:.1f} days{note}", metrics)


def _tls_error(subject: str, exc: Exception) -> Part:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Part("critical", f"{subject}: certificate invalid: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return Part("critical", f"{subject}: TLS handshake failed: {exc.reason or exc}")
    return Part("critical", f"{subject}: unreachable: {exc}")


def tls(ctx: Context) -> Result:
    parts = []
    for entry in ctx.cfg.tls:
        host, port = host_port(entry, "health.tls", None)
        try:
            with (
                socket.create_connection((host, port), timeout=ctx.cfg.timeout_seconds) as raw,
                ctx.ssl_context().wrap_socket(raw, server_hostname=host) as conn,
            ):
                cert = conn.getpeercert()
        except (OSError, ssl.SSLError) as exc:
            parts.append(_tls_error(entry, exc))
            continue
        parts.append(expiry_part(ctx, entry, cert))
    return combine("tls", parts)


def _request(url: str) -> tuple[urllib.request.Request, str]:
    """(the request, the URL as shown). user:password@ in the URL becomes Basic auth
    (urllib would take it for a port) and is never shown."""
    parts = urlsplit(url)
    headers = {"User-Agent": f"pyops/{__version__}"}
    if parts.username is None and parts.password is None:
        return urllib.request.Request(url, headers=headers), url  # noqa: S310 - http(s) only
    host = parts.hostname or ""
    hostport = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    bare = urlunsplit(parts._replace(netloc=hostport))
    pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    shown = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{hostport}"))
    return urllib.request.Request(bare, headers=headers), shown  # noqa: S310 - http(s) only


def http(ctx: Context) -> Result:
    """Each URL answers 2xx (redirects followed) within the timeout."""
    parts = []
    for raw in ctx.cfg.http:
        request, url = _request(raw)
        context = ctx.ssl_context() if url.startswith("https:") else None
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(  # noqa: S310 - scheme validated in settings
                request, timeout=ctx.cfg.timeout_seconds, context=context
            ) as answer:
                code = int(answer.status)
        except urllib.error.HTTPError as exc:
            code = exc.code
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            parts.append(Part("critical", f"{url}: unreachable: {reason}", {f"{url}.up": 0.0}))
            continue
        ms = (time.monotonic() - t0) * 1000
        metrics = {f"{url}.status_code": float(code), f"{url}.latency_ms": round(ms, 1)}
        if 200 <= code < 300:
            parts.append(Part("ok", f"{url}: {code} in {ms:.0f} ms", {**metrics, f"{url}.up": 1.0}))
        else:
            parts.append(Part("critical", f"{url}: answered {code}", {**metrics, f"{url}.up": 0.0}))
    return combine("http", parts)


def _smtp_one(ctx: Context, entry: str) -> Part:
    """Connect, EHLO, STARTTLS (or implicit TLS on 465) with a verified certificate,
    QUIT. Never sends mail."""
    host, port = host_port(entry, "health.smtp", 25)
    timeout = ctx.cfg.timeout_seconds
    context = ctx.ssl_context()
    client: smtplib.SMTP | None = None
    try:
        if port == 465:
            client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
            client.ehlo()
        else:
            client = smtplib.SMTP(host, port, timeout=timeout)
            client.ehlo()
            if not client.has_extn("starttls"):
                return Part(
                    "warning",
                    f"{entry}: STARTTLS not offered: mail to it travels in clear text",
                    {f"{entry}.up": 1.0},
                )
            client.starttls(context=context)
            client.ehlo()
        sock: Any = client.sock
        cert = sock.getpeercert() if sock is not None else None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        part = _tls_error(entry, exc)
        part.metrics[f"{entry}.up"] = 0.0
        return part
    finally:
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
    part = expiry_part(ctx, entry, cert)
    part.metrics[f"{entry}.up"] = 1.0
    part.text = part.text.replace(": certificate", ": STARTTLS ok, certificate", 1)
    return part


def smtp(ctx: Context) -> Result:
    return combine("smtp", [_smtp_one(ctx, entry) for entry in ctx.cfg.smtp])


def s3(ctx: Context) -> Result:
    """HeadBucket with the credentials backups use: reachable, exists, allowed."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        store = ctx.app.remote_store()
    except PyopsError as exc:
        return Result("s3", "unknown", str(exc))
    t0 = time.monotonic()
    try:
        store.client.head_bucket(Bucket=store.config.bucket)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        return Result(
            "s3",
            "critical",
            f"{store.describe()}: {err.get('Code')}: {err.get('Message') or 'refused'}",
            {"up": 0.0},
        )
    except BotoCoreError as exc:
        return Result("s3", "critical", f"cannot reach {store.describe()}: {exc}", {"up": 0.0})
    ms = (time.monotonic() - t0) * 1000
    return Result(
        "s3", "ok", f"{store.describe()} reachable in {ms:.0f} ms", {"up": 1.0, "latency_ms": ms}
    )
