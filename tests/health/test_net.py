"""tls, http, smtp and redis against real servers on 127.0.0.1."""

from __future__ import annotations

import base64

import pytest
from health_support import (
    CA,
    Env,
    HttpServer,
    SmtpServer,
    TlsServer,
    one,
    q,
    refused_port,
    server_context,
)

from pyops.health.resp import Connection, RedisUrl, RespError


def _trusting(ca: CA, extra: str = "") -> str:
    return f"[health]\ntls_ca_file = {q(ca.path)}\ntimeout_seconds = 5\n{extra}"


@pytest.mark.parametrize(
    ("days", "status", "text"),
    [
        (5, "critical", "expires in 4.9 days (below 7)"),
        (15, "warning", "expires in 14.9 days (below 21)"),
        (60, "ok", "expires in 59.9 days"),
    ],
)
def test_tls_days_to_expiry(env: Env, ca: CA, days: int, status: str, text: str) -> None:
    cert, key = ca.issue(f"tls{days}", days - 0.05)
    with TlsServer(server_context(cert, key)) as server:
        entry = f"127.0.0.1:{server.port}"
        env.write(_trusting(ca, f"tls = [{q(entry)}]\n"))
        result = one(env.config, "tls")
    assert result.status == status, result.message
    assert result.message == f"{entry}: certificate {text}"
    assert days - 0.2 < result.metrics[f"{entry}.days_left"] < days


def test_tls_untrusted_or_refused_is_critical(env: Env, ca: CA) -> None:
    cert, key = ca.issue("untrusted", 60)
    with TlsServer(server_context(cert, key)) as server, refused_port() as dead:
        entries = [f"127.0.0.1:{server.port}", f"127.0.0.1:{dead}"]
        env.write(f"[health]\ntls = [{q(entries[0])}, {q(entries[1])}]\n")  # system CAs only
        result = one(env.config, "tls")
    assert result.status == "critical"
    assert f"{entries[0]}: certificate invalid: unable to get local issuer" in result.message
    assert f"{entries[1]}: unreachable" in result.message


def test_http_500_is_critical_and_200_ok(env: Env) -> None:
    with HttpServer() as web:
        env.write(f"[health]\nhttp = [{q(web.url + '/200/health')}, {q(web.url + '/500/x')}]\n")
        result = one(env.config, "http")
        assert result.status == "critical"
        first, second = result.message.split("; ")
        assert first == f"{web.url}/500/x: answered 500"
        assert second.startswith(f"{web.url}/200/health: 200 in ")
        assert result.metrics[f"{web.url}/500/x.status_code"] == 500
        env.write(f"[health]\nhttp = [{q(web.url + '/204/')}]\n")
        assert one(env.config, "http").status == "ok"
    assert [h.path for h in web.hits] == ["/200/health", "/500/x", "/204/"]


def test_http_credentials_become_basic_auth_and_stay_hidden(env: Env) -> None:
    with HttpServer() as web:
        url = web.url.replace("http://", "http://ops:s3cr%40t@") + "/200/status"
        env.write(f"[health]\nhttp = [{q(url)}]\n")
        result = one(env.config, "http")
    assert result.status == "ok", result.message
    assert "s3cr" not in result.message + repr(result.metrics)
    assert result.message.startswith(web.url.replace("http://", "http://ops:***@") + "/200/status")
    assert web.hits[0].auth == "Basic " + base64.b64encode(b"ops:s3cr@t").decode()


def test_smtp_starttls_verified_and_never_sends(env: Env, ca: CA) -> None:
    cert, key = ca.issue("smtp", 90)
    with SmtpServer(server_context(cert, key)) as server:
        env.write(_trusting(ca, f"smtp = [{q(f'127.0.0.1:{server.port}')}]\n"))
        result = one(env.config, "smtp")
    assert result.status == "ok", result.message
    assert "STARTTLS ok, certificate expires in 90.0 days" in result.message
    assert server.commands == ["EHLO", "STARTTLS", "EHLO", "QUIT"]

    with SmtpServer(None) as plain:
        env.write(_trusting(ca, f"smtp = [{q(f'127.0.0.1:{plain.port}')}]\n"))
        result = one(env.config, "smtp")
    assert result.status == "warning" and "STARTTLS not offered" in result.message


def test_redis_refused_is_critical(env: Env) -> None:
    with refused_port() as port:
        env.write(f'[health]\nredis = ["redis://127.0.0.1:{port}/0"]\n')
        code, out, _ = env.pyops("health", "--check", "redis")
    assert code == 2
    assert f"CRITICAL  redis  redis://127.0.0.1:{port}/0: [Errno 111] Connection refused" in out


def test_redis_round_trip_and_queue_backlog(env: Env, redis_port: int) -> None:
    url = f"redis://127.0.0.1:{redis_port}/3"
    with Connection(RedisUrl.parse(url), 5) as conn:
        conn.call("DEL", "celery", "empty")
        conn.call("RPUSH", "celery", *[f"job{i}" for i in range(5)])
    env.write(f'[health]\nredis = ["{url}"]\nredis_queues = ["celery", "empty"]\n')
    result = one(env.config, "redis")
    assert result.status == "ok", result.message
    assert result.metrics[f"{url}/celery.queue_length"] == 5
    assert result.metrics[f"{url}/empty.queue_length"] == 0
    assert result.metrics[f"{url}.used_memory_bytes"] > 0
    assert "PING/SET/GET/DEL ok" in result.message

    env.write(f'[health]\nredis = ["{url}"]\nredis_queues = ["celery"]\nredis_queue_warn = 3\n')
    result = one(env.config, "redis")
    assert result.status == "warning"
    assert "queue celery holds 5 (over 3)" in result.message
    with Connection(RedisUrl.parse(url), 5) as conn:
        assert conn.call("DBSIZE") == 1  # the scratch key is gone, the queue stays


def test_redis_auth_refused_is_critical_and_redacted(env: Env, redis_port: int) -> None:
    env.write(f'[health]\nredis = ["redis://:nope@127.0.0.1:{redis_port}/0"]\n')
    result = one(env.config, "redis")
    assert result.status == "critical"
    assert "nope" not in result.message  # the password never reaches output
    assert f"redis://:***@127.0.0.1:{redis_port}/0:" in result.message


def test_resp_speaks_to_a_non_redis_server_with_an_error() -> None:
    with HttpServer() as web:
        port = int(web.url.rsplit(":", 1)[1])
        with pytest.raises(RespError, match=r"^not a Redis reply: b'<!DOCTYPE HTML"):
            Connection(RedisUrl.parse(f"redis://127.0.0.1:{port}/0"), 5).call("PING")
