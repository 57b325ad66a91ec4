"""Pure parts: statuses and score, config validation, the exposition format, RESP."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pyops import config, metrics
from pyops.config_rules import CHECK_NAMES, host_port
from pyops.errors import ConfigError
from pyops.health import registry
from pyops.health.resp import RedisUrl, parse_info
from pyops.health.result import Part, Result, combine, exit_code, order, score


def _r(*statuses: str) -> list[Result]:
    return [Result(f"c{i}", s, "m") for i, s in enumerate(statuses)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("statuses", "code", "points"),
    [
        (("ok", "ok"), 0, 100),
        (("ok", "warning"), 1, 75),
        (("ok", "unknown"), 3, 75),
        (("unknown", "warning"), 1, 50),  # a warning outranks an unknown
        (("ok", "ok", "ok", "critical"), 2, 49),  # 75 capped: a critical never scores 50+
        (("critical", "unknown"), 2, 25),
        ((), 3, 0),
    ],
)
def test_exit_code_and_score(statuses: tuple[str, ...], code: int, points: int) -> None:
    results = _r(*statuses)
    assert exit_code(results) == code
    assert score(results) == points


def test_combine_and_order_put_the_worst_first() -> None:
    result = combine(
        "x",
        [Part("ok", "a fine", {"a.v": 1}), Part("critical", "b bad"), Part("unknown", "c ?")],
    )
    assert result.status == "critical"
    assert result.message == "b bad; c ?; a fine"
    assert result.metrics == {"a.v": 1}
    assert combine("x", []).status == "unknown"
    ordered = [r.status for r in order(_r("ok", "unknown", "critical", "warning"))]
    assert ordered == ["critical", "warning", "unknown", "ok"]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"disk_min_free_percent": 120}, "health.disk_min_free_percent"),
        (
            {"disk_critical_free_percent": 20, "disk_min_free_percent": 10},
            "health.disk_critical_free_percent",
        ),
        ({"tls_critical_days": 30, "tls_warn_days": 21}, "health.tls_critical_days"),
        ({"timeout_seconds": 0}, "health.timeout_seconds"),
        ({"http": ["ftp://x/"]}, "health.http[0]"),
        ({"redis": ["http://x"]}, "health.redis[0]"),
        ({"redis": ["redis://h:99999"]}, "health.redis[0]"),
        ({"smtp": ["mail:x"]}, "health.smtp[0]"),
        ({"tls": ["a:443", "b"]}, "health.tls[1]"),
        ({"checks": ["disk", "nope"]}, "health.checks[1]"),
        ({"redis_queues": [""]}, "health.redis_queues[0]"),
    ],
)
def test_bad_health_config_names_the_key(body: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse({"health": body})
    assert caught.value.key == key


def test_metrics_dir_must_be_absolute() -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse({"metrics": {"textfile_dir": "relative/dir"}})
    assert caught.value.key == "metrics.textfile_dir"


def test_host_port() -> None:
    assert host_port("example.org:443", "k", None) == ("example.org", 443)
    assert host_port("[::1]:8443", "k", None) == ("::1", 8443)
    assert host_port("mail.example.org", "k", 25) == ("mail.example.org", 25)
    with pytest.raises(ConfigError):
        host_port("example.org", "k", None)


def test_render_escapes_and_parses() -> None:
    fam = metrics.Family("pyops_t", 'help with "quotes" \\ and\nnewline')
    fam.add(1.5, check='a"b\\c\nd').add(2, check="plain")
    text = "\n".join(metrics.render([fam, metrics.Family("pyops_empty", "left out")]))
    assert "pyops_empty" not in text
    assert 'pyops_t{check="plain"} 2' in text
    (parsed,) = text_string_to_metric_families(text)
    assert [(s.labels["check"], s.value) for s in parsed.samples] == [
        ('a"b\\c\nd', 1.5),
        ("plain", 2.0),
    ]
    assert metrics.number(float("nan")) == "NaN" and metrics.number(float("inf")) == "+Inf"


def test_registry_knows_every_check_and_selects() -> None:
    assert tuple(registry.CHECKS) == CHECK_NAMES
    plain = config.parse({})
    run, skipped = registry.select(plain, ())
    assert run == ["disk", "paths"]
    assert skipped["redis"] == "health.redis lists nothing"
    assert registry.select(plain, ("redis", "redis"))[0] == ["redis"]
    chosen = config.parse({"health": {"checks": ["paths", "tls"]}})
    assert registry.select(chosen, ()) == (["paths"], {"tls": "health.tls lists nothing"})


def test_redis_url_and_info() -> None:
    url = RedisUrl.parse("rediss://user:p%40ss@cache.internal:6380/2")
    assert (url.host, url.port, url.db, url.username, url.password, url.tls) == (
        "cache.internal",
        6380,
        2,
        "user",
        "p@ss",
        True,
    )
    assert url.redacted() == "rediss://user:***@cache.internal:6380/2"
    assert RedisUrl.parse("redis://127.0.0.1").redacted() == "redis://127.0.0.1:6379/0"
    info = parse_info(
        b"# Memory\r\nused_memory:1024\r\nmaxmemory:0\r\n\r\n# Stats\r\nevicted_keys:3\r\n"
    )
    assert info == {"used_memory": "1024", "maxmemory": "0", "evicted_keys": "3"}
