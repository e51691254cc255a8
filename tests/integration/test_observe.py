"""Seeing and being told, through a real server and daemon: the metrics port scraped and parsed with
prometheus_client's own parser, counters that survive a restart, `dataerai daemon health`'s three
outcomes, the alert hook run as a real script, and the token's expiry announced once; a reload that moves
the metrics port, changes the health verdict, the next alert and the expiry's warnings, without a restart."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from stack import Stack, free_port, make_file, wait_for

from dataeraid.observe import catalogue

HOOK = """#!/bin/sh
# What an operator's hook would do with an alert: here, keep it for the test.
{ cat; echo "env $DATAERAI_ALERT_KIND $DATAERAI_ALERT_SUBJECT"; } >> "$1"
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels; the family names checked against the catalogue."""
    known = {m.name for m in catalogue.METRICS}
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("dataerai_", "process_")):
            assert family.name in known, f"{family.name} is not in the catalogue"
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(port: int) -> str:
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return answer.text


def health(stack: Stack) -> tuple[int, str]:
    done = stack.cli("daemon", "health", check=False, timeout=60)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr
    return done.returncode, lines[0]


def test_metrics_health_alerts_and_expiry(make_stack: Any, tmp_path: Path) -> None:
    port = free_port()
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    alerts = tmp_path / "alerts.txt"
    stack: Stack = make_stack(daemon_config={
        "metrics_listen": f"127.0.0.1:{port}", "alert_command": [str(hook), str(alerts)],
        "health_min_free_bytes": 1})

    # ok: nothing wrong yet.
    assert health(stack) == (0, "ok")

    size = 300_000
    with stack.client() as client:
        client.upload(make_file(tmp_path / "a.bin", size), title="a", owner_type="project",
                      owner_id=stack.project_id)
        failing = client.download("ast_00000000nope", tmp_path / "out", wait=False)
        assert client.wait(failing.job_id, timeout_s=60).state == "failed"

    # degraded: a job failed within the window; the hook was told, once, by a real script.
    status, line = health(stack)
    assert status == 1 and line.startswith("degraded: ") and "1 job failed in the last 24 h" in line, line
    wait_for(lambda: alerts.exists() and "env job.failed" in alerts.read_text(), 30, "the alert hook")
    told = json.loads(alerts.read_text().splitlines()[0])
    assert told["kind"] == "job.failed" and told["subject"] == failing.job_id
    assert f"env job.failed {failing.job_id}" in alerts.read_text()

    before = samples(scrape(port))
    assert before[("dataerai_transfer_bytes_total", (("direction", "upload"),))] >= size
    assert before[("dataerai_transfer_files_total", (("direction", "upload"),))] == 1
    assert before[("dataerai_jobs_finished_total", (("kind", "upload"), ("state", "completed")))] == 1
    assert before[("dataerai_jobs_finished_total", (("kind", "download"), ("state", "failed")))] == 1
    assert before[("dataerai_job_errors_total", (("code", "not_found"),))] == 1
    assert before[("dataerai_jobs", (("state", "completed"),))] == 1
    assert before[("dataerai_jobs", (("state", "queued"),))] == 0
    assert before[("dataerai_alerts_total", (("kind", "job.failed"), ("outcome", "sent")))] == 1
    assert before[("dataerai_health_status", ())] == 1
    assert before[("dataerai_auth_logged_in", ())] == 1
    assert before[("dataerai_bandwidth_limit_bytes_per_second", (("direction", "upload"),))] == 0
    assert before[("process_resident_memory_bytes", ())] > 10 << 20
    assert before[("process_open_fds", ())] > 3
    # The token never expires: +Inf, once the daemon asked the repository.
    wait_for(lambda: samples(scrape(port)).get(("dataerai_auth_expiry_timestamp_seconds", ())) == math.inf, 30,
             "the token's expiry")
    # The same text through the socket.
    cli = samples(stack.cli("metrics").stdout)
    assert cli[("dataerai_transfer_bytes_total", (("direction", "upload"),))] == \
        before[("dataerai_transfer_bytes_total", (("direction", "upload"),))]

    # failing: no daemon (and the check does not start one).
    stack.stop_daemon()
    status, line = health(stack)
    assert status == 2 and line.startswith("failing: the daemon is not running"), line
    assert not stack.socket_path.exists()

    # A token that expires in 3 days, given while the daemon runs: announced once, at 7 days.
    stack.start_daemon()
    stack.login(stack.add_user("bob@example.org", scope="write", expires_in_days=3))
    after = samples(scrape(port))
    for key, value in before.items():  # the counters went on across the restart
        if key[0].endswith("_total") and key[0].startswith("dataerai_"):
            assert after[key] >= value, key
    assert after[("dataerai_transfer_bytes_total", (("direction", "upload"),))] == \
        before[("dataerai_transfer_bytes_total", (("direction", "upload"),))]
    assert after[("dataerai_jobs_finished_total", (("kind", "upload"), ("state", "completed")))] == 1

    def expiring() -> list[Any]:
        with stack.client() as client:
            events: list[Any] = client.list_events(0, types=["auth.expiring"])
            return events

    announced = wait_for(expiring, 30, "auth.expiring")
    assert len(announced) == 1
    event = announced[0]
    assert event.threshold_days == 7.0 and event.days_left is not None and 2.9 < event.days_left <= 3.0, event
    assert event.expires_at is not None and abs(event.expires_at.timestamp() - (time.time() + 3 * 86400)) < 600
    expiry = samples(scrape(port))[("dataerai_auth_expiry_timestamp_seconds", ())]
    assert abs(expiry - (time.time() + 3 * 86400)) < 600
    status, line = health(stack)
    assert status == 1 and "auth expires in 3 days" in line, line
    wait_for(lambda: "env auth.expiring" in alerts.read_text(), 30, "the auth.expiring alert")

    # Restarted, the daemon knows it told already.
    stack.stop_daemon()
    stack.start_daemon()
    wait_for(lambda: samples(scrape(port)).get(("dataerai_auth_expiry_timestamp_seconds", ())), 30, "the expiry")
    assert len(expiring()) == 1

    # A metrics port that is taken stops the start with the reason (exit 78), rather than a daemon
    # that silently serves no metrics.
    stack.stop_daemon()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the scrapes' TIME_WAIT
        taken.bind(("127.0.0.1", port))
        taken.listen()
        try:
            stack.start_daemon(timeout=30)
        except RuntimeError as exc:
            assert "exited with 78" in str(exc)
        else:
            raise AssertionError("the daemon started without its metrics port")
    log = (stack.root / "daemon.log").read_text()
    assert f"metrics_listen = '127.0.0.1:{port}': cannot listen there" in log


def _config(stack: Stack) -> Path:
    return stack.root / "config" / "dataerai" / "config.toml"


def _reload(stack: Stack, **values: Any) -> dict[str, Any]:
    """Write ``values`` as the whole of config.toml and reload it; the answer."""
    _config(stack).write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    answer: dict[str, Any] = json.loads(stack.cli("daemon", "reload", "--json").stdout)
    return answer


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_a_reload_moves_the_metrics_endpoint_and_a_taken_port_refuses_the_whole_reload(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    first, second, taken_port = free_port(), free_port(), free_port()
    assert len({first, second, taken_port}) == 3
    with Stack(tmp_path_factory.mktemp("mv"), daemon_config={"metrics_listen": f"127.0.0.1:{first}"}) as stack:
        daemon = stack.start_daemon()
        assert "dataerai_build_info" in scrape(first)

        assert _reload(stack, metrics_listen=f"127.0.0.1:{second}", max_active_jobs=2) == {
            "changed": ["max_active_jobs", "metrics_listen"], "restart_needed": []}
        assert refused(first)
        assert "dataerai_build_info" in scrape(second)

        # A port that is taken: the reload is refused as a start would be, and nothing of it is in force.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", taken_port))
            taken.listen()
            _config(stack).write_text(f'metrics_listen = "127.0.0.1:{taken_port}"\nmax_active_jobs = 3\n')
            done = stack.cli("daemon", "reload", check=False)
            assert done.returncode == 1
            assert done.stderr == (f"error[io_error]: metrics_listen = '127.0.0.1:{taken_port}': cannot listen "
                                   "there (Address already in use)\n")
        assert "dataerai_build_info" in scrape(second)
        assert _reload(stack, metrics_listen=f"127.0.0.1:{second}", max_active_jobs=3) == {
            "changed": ["max_active_jobs"], "restart_needed": []}  # it was still 2, and the port the same

        # Off, then on again at the first address; written another way, the same address stays as it is.
        assert _reload(stack)["changed"] == ["max_active_jobs", "metrics_listen"]
        assert refused(second)
        _reload(stack, metrics_listen=f"127.0.0.1:{first}")
        assert "dataerai_build_info" in scrape(first)
        _reload(stack, metrics_listen=f"localhost:{first}")
        assert "dataerai_build_info" in scrape(first)
        assert daemon.poll() is None


def test_a_reload_changes_the_health_verdict_the_next_alert_and_the_expiry_warnings(
        make_stack: Any, tmp_path: Path) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    told_first, told_second = tmp_path / "first.txt", tmp_path / "second.txt"
    stack: Stack = make_stack(daemon_config={"auth_warn_days": [7.0]})
    assert health(stack) == (0, "ok")

    # A threshold no disk meets: degraded at the next check, and the disk.low alert goes to the new hook.
    assert _reload(stack, health_min_free_bytes=1 << 60, alert_command=[str(hook), str(told_first)],
                   auth_warn_days=[7.0]) == {"changed": ["health_min_free_bytes", "alert_command"],
                                             "restart_needed": []}
    status, line = health(stack)
    assert status == 1 and line.startswith("degraded: ") and "free on the state directory" in line, line
    wait_for(lambda: told_first.exists() and "env disk.low" in told_first.read_text(), 30, "the disk.low alert")

    # Another hook, and no de-duplication: the next alert (the disks looked at again at once) goes to it.
    _reload(stack, health_min_free_bytes=1 << 60, alert_command=[str(hook), str(told_second)], alert_dedup_s=0,
            auth_warn_days=[7.0])
    wait_for(lambda: told_second.exists() and "env disk.low" in told_second.read_text(), 30, "the new hook")
    assert told_first.read_text().count("env disk.low") == 1

    # A token that expires in 10 days: no warning at 7; one at 14 as soon as a reload adds it, not at the
    # next check of the token, 15 minutes on.
    stack.login(stack.add_user("bob@example.org", scope="write", expires_in_days=10))
    wait_for(lambda: samples(stack.cli("metrics").stdout).get(("dataerai_auth_expiry_timestamp_seconds", ()),
                                                              math.inf) < math.inf, 30, "the token's expiry")
    with stack.client() as client:
        assert client.list_events(0, types=["auth.expiring"]) == []
        assert _reload(stack, auth_warn_days=[14.0, 7.0])["changed"] == ["health_min_free_bytes",
                                                                           "auth_warn_days", "alert_command",
                                                                           "alert_dedup_s"]
        announced = wait_for(lambda: client.list_events(0, types=["auth.expiring"]), 30, "auth.expiring")
    assert [e.threshold_days for e in announced] == [14.0]
    assert health(stack) == (0, "ok")  # the default disk threshold again
