"""Run notifications, healthchecks.io style: GET a URL when a run starts or succeeds,
POST a short text body to another when it fails.

A notification never decides a run: an unreachable or refusing URL is logged as a
warning and the run goes on. URLs carry secrets (the check's UUID), so logs show
only the scheme and host.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pyops import __version__

if TYPE_CHECKING:
    from pyops.app import App

log = logging.getLogger(__name__)
Event = Literal["start", "success", "failure"]
TIMEOUT = 10.0
MAX_BODY = 10_000


def redact(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/..."


def notify(app: App, event: Event, summary: str) -> bool:
    """Call the URL configured for `event`, if any. True when it answered 2xx."""
    url = {
        "start": app.config.notify.on_start,
        "success": app.config.notify.on_success,
        "failure": app.config.notify.on_failure,
    }.get(event, "")
    if not url:
        return False
    if urlsplit(url).scheme not in ("http", "https"):
        log.warning("notify %s: not an http(s) URL; skipped", event)
        return False
    headers = {"User-Agent": f"pyops/{__version__}"}
    data = None
    if event == "failure":
        body = summary if len(summary) <= MAX_BODY else summary[: MAX_BODY - 3] + "..."
        data = body.encode("utf-8", "replace")
        headers["Content-Type"] = "text/plain; charset=utf-8"
    method = "POST" if data is not None else "GET"
    request = urllib.request.Request(url, data, headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310 - http(s) only
            answer.read(1024)
            code = int(answer.status)
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        log.warning("notify %s: %s unreachable: %s", event, redact(url), reason)
        return False
    if not 200 <= code < 300:
        log.warning("notify %s: %s answered %d", event, redact(url), code)
        return False
    log.debug("notify %s: %s answered %d", event, redact(url), code)
    return True
