"""[notify] through the real CLI against real receivers on 127.0.0.1: Apprise's json://
scheme (and ntfy://) and healthchecks-style pings land in a recording HTTP server.
Nothing is mocked."""

from __future__ import annotations

import os
import time

from notify_support import HOST, Receiver, Site, notify_table, output, q, refused_port

from pyops.notify import TIMEOUT

ALL_EVENTS = ["start", "success", "warning", "failure"]


def hook(web: Receiver, path: str = "hook") -> str:
    return f"json://127.0.0.1:{web.port}/{path}"


def test_backup_sends_one_message_per_run_with_the_counts(site: Site, web: Receiver) -> None:
    site.write(
        site.sqlite("app")
        + site.sqlite("shop")
        + site.missing_files("media", str(site.root / "gone"))
        + notify_table(urls=[hook(web)], events=ALL_EVENTS)
    )
    proc = site.pyops("backup")
    assert proc.returncode == 1, output(proc)
    start, end = (h.json() for h in web.wait_for(2, lambda h: h.path == "/hook"))
    assert (start["type"], start["title"]) == ("info", f"backup on {HOST}: started")
    assert start["message"] == f"backup on {HOST}: started: app, shop, media"
    assert (end["type"], end["title"]) == ("failure", f"backup on {HOST}: FAILED")
    first, *rest = end["message"].splitlines()
    assert first.startswith(f"backup on {HOST}: 2 of 3 targets ok; media FAILED: target media: ")
    assert "does not exist" in first
    assert any(line.startswith("app: ok app.daily.") for line in rest)
    tail = end["message"].split("last lines of the log:\n", 1)[1]
    assert "ERROR backup media: FAILED" in tail
    assert "INFO backup app.daily." in tail
    assert len(web.under("/hook")) == 2  # the run is over: nothing more comes


def test_ntfy_scheme_reaches_a_loopback_server(site: Site, web: Receiver) -> None:
    site.write(
        site.sqlite("app")
        + notify_table(urls=[f"ntfy://127.0.0.1:{web.port}/backups"], events=["success"])
    )
    proc = site.pyops("backup")
    assert proc.returncode == 0, output(proc)
    (hit,) = web.wait_for(1)
    assert (hit.method, hit.path) == ("POST", "/")
    message = hit.json()
    assert message["topic"] == "backups"
    assert message["title"] == f"backup on {HOST}: ok"
    assert message["message"].startswith(f"backup on {HOST}: 1 of 1 target ok")


def test_events_filter_what_the_urls_hear(site: Site, web: Receiver) -> None:
    body = site.sqlite("app")
    site.write(body + notify_table(urls=[hook(web)]))  # default: failure and warning
    assert site.pyops("backup").returncode == 0
    site.write(body + notify_table(urls=[hook(web)], events=["failure"]))  # failure-only
    assert site.pyops("backup").returncode == 0
    failing = body + site.missing_files("media", "/nonexistent/media")
    site.write(failing + notify_table(urls=[hook(web)], events=["failure"]))
    assert site.pyops("backup").returncode == 1
    (hit,) = web.wait_for(1)
    assert hit.json()["type"] == "failure"
    site.write(failing + notify_table(urls=[hook(web)], events=["start", "success"]))
    assert site.pyops("backup").returncode == 1
    assert [h.json()["type"] for h in web.wait_for(2)] == ["failure", "info"]


def test_commands_filter_which_runs_are_told(site: Site, web: Receiver) -> None:
    site.write(
        site.sqlite("app") + notify_table(urls=[hook(web)], events=["success"], commands=["verify"])
    )
    assert site.pyops("backup").returncode == 0
    proc = site.pyops("verify")
    assert proc.returncode == 0, output(proc)
    (hit,) = web.wait_for(1)
    assert hit.json()["title"] == f"verify on {HOST}: ok"
    assert hit.json()["message"].startswith(f"verify on {HOST}: 1 of 1 backup ok")


def test_every_command_sends_one_message(site: Site, web: Receiver) -> None:
    site.write(site.sqlite("app") + notify_table(urls=[hook(web)], events=ALL_EVENTS[1:]))
    runs = [
        (("backup",), 0, "backup on web-1: 1 of 1 target ok"),
        (("verify", "--deep"), 0, "verify on web-1: 1 of 1 backup ok"),
        (("drill",), 0, "drill on web-1: 1 of 1 target ok"),
        (("maintenance", "--all"), 0, "maintenance on web-1: "),
        (("maintenance", "--all", "--dry-run"), 0, None),  # changes nothing: tells nobody
        (("sync",), 2, "sync on web-1: FAILED: config: offsite.bucket"),  # no bucket
    ]
    expected = 0
    for args, rc, first_line in runs:
        proc = site.pyops(*args)
        assert proc.returncode == rc, output(proc)
        if first_line is None:
            continue
        expected += 1
        message = web.wait_for(expected)[-1].json()["message"]
        assert message.startswith(first_line), message
    assert len(web.hits) == expected


def test_failure_body_has_the_log_tail_but_never_a_secret(site: Site, web: Receiver) -> None:
    secret = "planted-S3cret-7f1b"
    site.write(
        '[[targets]]\nname = "app-db"\ntype = "postgres"\n'
        'dsn = "postgresql://app@127.0.0.1:1/app"\npassword_env = "PYOPS_TEST_NOTIFY_PW"\n'
        + site.missing_files("media", f"/nonexistent/{secret}/data")
        + notify_table(urls=[hook(web)], ping_url=f"{web.url}/ping/check-uuid")
    )
    proc = site.pyops("backup", "--target", "media", env={"PYOPS_TEST_NOTIFY_PW": secret})
    assert proc.returncode == 1, output(proc)
    message = web.wait_for(1, lambda h: h.path == "/hook")[0].json()["message"]
    (fail,) = web.wait_for(1, lambda h: h.path.endswith("/fail"))
    for body in (message, fail.text):
        assert "media FAILED" in body
        assert "last lines of the log:\nINFO backup media.daily." in body
        assert "/nonexistent/<redacted>/data" in body
        assert secret not in body
        assert "check-uuid" not in body


def test_ping_url_start_success_fail(site: Site, web: Receiver) -> None:
    ping = f"{web.url}/ping/check-uuid"
    site.write(site.sqlite("app") + notify_table(ping_url=ping))
    assert site.pyops("backup").returncode == 0
    start, done = web.wait_for(2)
    assert (start.method, start.path, start.body) == ("GET", "/ping/check-uuid/start", b"")
    assert (done.method, done.path) == ("POST", "/ping/check-uuid")
    assert done.text.startswith(f"backup on {HOST}: 1 of 1 target ok")
    assert start.query == done.query and start.query.startswith("rid=")  # one run id

    site.write(
        site.sqlite("app")
        + site.missing_files("media", "/nonexistent/m")
        + f"\n[notify]\nping_url = {q(ping)}\n"
    )
    assert site.pyops("backup").returncode == 1
    start2, fail = web.wait_for(4)[2:]
    assert start2.path == "/ping/check-uuid/start" and start2.query != start.query
    assert (fail.method, fail.path, fail.query) == ("POST", "/ping/check-uuid/fail", start2.query)
    assert fail.text.startswith(f"backup on {HOST}: 1 of 2 targets ok; media FAILED")
    assert "last lines of the log:" in fail.text


def test_ping_url_is_for_backups_unless_it_names_the_command(site: Site, web: Receiver) -> None:
    disk_ok = (
        '[health]\nchecks = ["disk"]\n'
        "disk_min_free_percent = 0.002\ndisk_critical_free_percent = 0.001\n"
    )
    (site.root / "repo").mkdir(mode=0o700)
    site.write(disk_ok + notify_table(ping_url=f"{web.url}/ping/check-uuid"))
    assert site.pyops("health").returncode == 0
    site.write(disk_ok + notify_table(ping_url=f"{web.url}/ping/key/pyops-{{command}}?create=1"))
    assert site.pyops("health").returncode == 0
    start, done = web.wait_for(2)
    assert [start.path, done.path] == ["/ping/key/pyops-health/start", "/ping/key/pyops-health"]
    assert done.query.startswith("create=1&rid=")
    assert done.text == f"health on {HOST}: OK (1 checks)"


def test_legacy_on_urls_still_work(site: Site, web: Receiver) -> None:
    legacy = notify_table(
        on_start=f"{web.url}/legacy/start",
        on_success=f"{web.url}/legacy/ok",
        on_failure=f"{web.url}/legacy/fail",
        commands=["verify"],  # the legacy keys belong to backups, whatever commands says
    )
    site.write(site.sqlite("app") + legacy)
    assert site.pyops("backup").returncode == 0
    assert site.pyops("verify").returncode == 0
    assert [(h.method, h.path) for h in web.wait_for(2)] == [
        ("GET", "/legacy/start"),
        ("GET", "/legacy/ok"),
    ]
    site.write(site.sqlite("app") + site.missing_files("media", "/nonexistent/m") + legacy)
    assert site.pyops("backup").returncode == 1
    start, fail = web.wait_for(4)[2:]
    assert (start.method, start.path) == ("GET", "/legacy/start")
    assert (fail.method, fail.path) == ("POST", "/legacy/fail")
    assert "media FAILED" in fail.text


def test_dead_receiver_changes_nothing_and_is_counted(site: Site) -> None:
    with refused_port() as port:
        site.write(
            site.sqlite("app")
            + notify_table(
                urls=[f"json://127.0.0.1:{port}/token-in-path"],
                events=ALL_EVENTS,
                ping_url=f"http://127.0.0.1:{port}/ping-uuid-secret",
            )
        )
        proc = site.pyops("backup", "--format", "json")
    assert proc.returncode == 0, output(proc)
    assert '"ok": true' in proc.stdout
    assert "no answer within" not in proc.stderr  # refused at once: no deadline waited for
    warnings = [line for line in proc.stderr.splitlines() if "notify backup" in line]
    assert len(warnings) == 4, proc.stderr  # start and success, each to both receivers
    assert any("JSON (json://127.0.0.1:" in w and "Connection error" in w for w in warnings)
    assert "notify backup start: ping http://127.0.0.1/...: unreachable:" in proc.stderr
    assert "notify backup success: ping http://127.0.0.1/...: unreachable:" in proc.stderr
    assert "token-in-path" not in proc.stderr and "ping-uuid-secret" not in proc.stderr
    assert site.failed_notifications() == {"backup": 4}
    proc = site.pyops("backup")
    assert proc.returncode == 0
    assert site.failed_notifications() == {"backup": 8}  # a counter


def test_delivered_notifications_count_zero(site: Site, web: Receiver) -> None:
    site.write(site.sqlite("app") + notify_table(urls=[hook(web)], events=["success"]))
    assert site.pyops("backup").returncode == 0
    web.wait_for(1)
    assert site.failed_notifications() == {"backup": 0}  # the series exists before a failure


def test_slow_receiver_is_cut_off_at_the_deadline(site: Site, web: Receiver) -> None:
    site.write(site.sqlite("app") + notify_table(urls=[hook(web, "slow/hook")], events=["success"]))
    t0 = time.monotonic()
    proc = site.pyops("backup")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, output(proc)
    web.wait_for(1, lambda h: h.path == "/slow/hook")
    assert TIMEOUT <= elapsed < TIMEOUT + 30, elapsed  # the receiver would take 2 minutes
    assert f"no answer within {TIMEOUT:g} s" in proc.stderr
    assert site.failed_notifications() == {"backup": 1}


def test_health_tells_people_of_changes_only(site: Site, web: Receiver) -> None:
    (site.root / "repo").mkdir(mode=0o700)

    def health(warn: float, critical: float, events: list[str]) -> int:
        site.write(
            f'[health]\nchecks = ["disk"]\ndisk_min_free_percent = {warn}\n'
            f"disk_critical_free_percent = {critical}\n"
            + notify_table(urls=[hook(web)], events=events)
        )
        return site.pyops("health").returncode

    everything = ["start", "success", "warning", "failure"]
    assert health(99.99, 0.001, everything) == 1
    (warned,) = web.wait_for(1)
    assert warned.json()["type"] == "warning"  # and no start message: health has none
    assert warned.json()["message"].startswith(f"health on {HOST}: WARNING: disk warning\n")
    assert health(99.99, 0.001, everything) == 1  # still the same warning: quiet
    assert health(0.002, 0.001, everything) == 0
    assert web.wait_for(2)[-1].json()["message"] == f"health on {HOST}: OK (1 checks)"
    assert health(0.002, 0.001, everything) == 0
    assert health(99.99, 0.001, ["failure"]) == 1  # failure-only: a warning tells nobody
    assert health(99.99, 99.98, ["failure"]) == 2
    critical = web.wait_for(3)[-1].json()
    assert (critical["type"], critical["title"]) == ("failure", f"health on {HOST}: FAILED")
    assert len(web.hits) == 3
    assert site.pyops("health", "--check", "disk").returncode == 2  # a spot check: nobody told
    assert len(web.hits) == 3


def test_urls_file_and_systemd_credential(site: Site, web: Receiver) -> None:
    urls = site.root / "notify-urls"
    urls.write_text(f"# tokens live here\n\n{hook(web, 'from-file')}\n")
    urls.chmod(0o600)
    site.write(site.sqlite("app") + notify_table(urls_file=urls, events=["success"]))
    assert site.pyops("backup").returncode == 0
    assert web.wait_for(1)[0].path == "/from-file"

    creds = site.root / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "notify-urls").write_text(hook(web, "from-credential") + "\n")
    (creds / "notify-urls").chmod(0o600)  # as systemd leaves a credential
    site.write(site.sqlite("app") + notify_table(urls_file="%d/notify-urls", events=["success"]))
    proc = site.pyops("backup", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert proc.returncode == 0, output(proc)
    assert web.wait_for(2)[1].path == "/from-credential"

    site.write(site.sqlite("app") + notify_table(urls_file=site.root / "gone", events=["success"]))
    proc = site.pyops("backup")
    assert proc.returncode == 0, output(proc)  # an unreadable file is a failed notification
    assert "notify.urls_file" in proc.stderr and "No such file" in proc.stderr
    assert site.failed_notifications()["backup"] == 1


def test_config_check_names_the_bad_key(site: Site) -> None:
    site.write(notify_table(urls=["nosuchscheme://user:tok3n@host/x"]))
    proc = site.pyops("config", "check")
    assert proc.returncode == 2 and "notify.urls[0]" in proc.stderr, output(proc)
    assert "tok3n" not in proc.stderr + proc.stdout
    site.write(notify_table(ping_url="ftp://hc.example/uuid"))
    proc = site.pyops("config", "check")
    assert proc.returncode == 2 and "notify.ping_url" in proc.stderr, output(proc)
    site.write(notify_table(urls_file="relative/urls"))
    proc = site.pyops("config", "check")
    assert proc.returncode == 2 and "notify.urls_file" in proc.stderr, output(proc)
    site.write(notify_table(urls=["ntfy://127.0.0.1:8080/backups", "mailto://u:p@example.org"]))
    proc = site.pyops("config", "check")
    assert proc.returncode == 0, output(proc)


def test_systemd_failure_hook_tells_people_what_pyops_could_not(site: Site, web: Receiver) -> None:
    site.write(
        notify_table(
            urls=[hook(web)],
            on_failure=f"{web.url}/legacy/fail",
            ping_url=f"{web.url}/ping/check-uuid",
            events=["failure"],
        )
    )
    unit = "pyops-backup@daily.service"
    env = {**os.environ, "MONITOR_SERVICE_RESULT": "exit-code"}
    assert site.pyops("systemd", "on-failure", unit, env=env).returncode == 0
    (legacy,) = web.wait_for(1)
    assert legacy.path == "/legacy/fail"  # pyops exited by itself and reported itself
    env["MONITOR_SERVICE_RESULT"] = "timeout"
    assert site.pyops("systemd", "on-failure", unit, env=env).returncode == 0
    hits = web.wait_for(4)
    (told,) = [h.json() for h in hits if h.path == "/hook"]
    assert told["type"] == "failure"
    first_line = f"backup on {HOST}: systemd unit {unit} failed (timeout) before pyops could report"
    assert told["message"].startswith(first_line)
    (fail,) = [h for h in hits if h.path == "/ping/check-uuid/fail"]
    assert fail.text.startswith(first_line)
    assert sorted(h.path for h in hits).count("/legacy/fail") == 2


def test_no_receivers_no_threads_no_metrics(site: Site) -> None:
    site.write(site.sqlite("app"))
    proc = site.pyops("backup")
    assert proc.returncode == 0, output(proc)
    assert "notify" not in proc.stderr
    assert not (site.textfiles / "pyops_notify.prom").exists()


def test_config_show_masks_the_tokens_in_notify_urls(site: Site) -> None:
    site.write(
        notify_table(
            urls=["slack://TA0000/BB0000/CCCCtoken/#ops", "tgram://123456:ABCDEFtoken/789"],
            ping_url="https://hc-ping.com/1111-2222-uuid",
            on_failure="https://user:pw@hc.example/fail-uuid",
        )
    )
    proc = site.pyops("config", "show", "--format", "json")
    assert proc.returncode == 0, output(proc)
    for secret in ("CCCCtoken", "ABCDEFtoken", "1111-2222-uuid", "fail-uuid", "pw@"):
        assert secret not in proc.stdout
    assert '"ping_url": "https://hc-ping.com/<redacted>"' in proc.stdout
    assert '"slack://T...0/B...0/C...n/' in proc.stdout
