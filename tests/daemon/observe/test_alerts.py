"""Alerts: de-duplication, the hourly budget and its summary, on Trio's fake clock; the desktop
notifier through a fake D-Bus call."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from dataeraid.config import Settings
from dataeraid.observe import catalogue
from dataeraid.observe.alerts import Alert, Alerter, Gate, from_event
from dataeraid.observe.desktop import Desktop
from dataeraid.observe.tally import Tally


def alert(kind: str = "job.failed", subject: str = "job_1") -> Alert:
    return Alert(kind, subject, f"{kind} {subject}")


def test_gate_deduplicates_the_same_kind_and_subject() -> None:
    gate = Gate(dedup_s=600, max_per_hour=100)
    assert gate.admit(alert(), 0) == "send"
    assert gate.admit(alert(), 599) == "deduplicated"
    assert gate.admit(alert(subject="job_2"), 599) == "send"
    assert gate.admit(alert(kind="disk.low"), 599) == "send"
    assert gate.admit(alert(), 600) == "send"


def test_gate_budget_then_one_summary_when_the_hour_allows() -> None:
    gate = Gate(dedup_s=0, max_per_hour=3)
    assert [gate.admit(alert(subject=f"job_{i}"), i) for i in range(5)] == ["send"] * 3 + ["suppressed"] * 2
    assert gate.admit(alert("disk.low", "/data"), 10) == "suppressed"
    assert gate.summary_at() == 3600.0  # the first send leaves the window
    assert gate.summary(3599.0) is None
    summary = gate.summary(3600.0)
    assert summary is not None and summary.kind == "alerts.suppressed"
    assert summary.summary.startswith("3 more alerts held back in the last hour (1 disk.low, 2 job.failed)")
    assert gate.summary_at() is None and gate.summary(3601.0) is None


def test_events_become_alerts() -> None:
    failed = from_event({"type": "job.state", "job_id": "job_1", "state": "failed",
                         "job": {"kind": "upload", "error": {"code": "not_found", "message": "gone"}}})
    assert failed is not None and (failed.kind, failed.subject) == ("job.failed", "job_1")
    assert "[not_found] gone" in failed.summary
    quarantined = from_event({"type": "watch.file", "watch_id": "wat_1", "path": "a/b.tif", "state": "quarantined",
                              "file": {"error": {"code": "permission_denied", "message": "no"}}})
    assert quarantined is not None and quarantined.subject == "wat_1:a/b.tif"
    unavailable = from_event({"type": "watch.state", "watch_id": "wat_1", "state": "unavailable", "watch": {}})
    assert unavailable is not None and unavailable.kind == "watch.unavailable"
    assert from_event({"type": "job.state", "job_id": "job_1", "state": "completed"}) is None
    assert from_event({"type": "watch.state", "watch_id": "wat_1", "state": "active"}) is None


async def test_alerter_sends_in_budget_then_a_summary_an_hour_later(autojump_clock: trio.testing.MockClock) -> None:
    sent: list[Alert] = []

    async def runner(command: tuple[str, ...], alert: Alert, timeout_s: float) -> bool:
        assert command == ("/bin/hook",) and timeout_s == 5.0
        sent.append(alert)
        return alert.subject != "job_1"  # the hook fails once

    tally = Tally()
    settings = Settings(alert_command=("/bin/hook",), alert_max_per_hour=2, alert_dedup_s=60, alert_timeout_s=5,
                        alert_on=("job.failed",))
    alerter = Alerter(settings, tally, runner=runner)

    class NoBus:
        async def subscribe(self, **_: Any) -> Any:
            class Nothing:
                def __aiter__(self) -> Any:
                    return self

                async def __anext__(self) -> Any:
                    await trio.sleep_forever()

                def close(self) -> None:
                    pass

            return Nothing()

    async with trio.open_nursery() as nursery:
        await nursery.start(alerter.serve, NoBus())
        for i in range(4):
            alerter.submit(alert(subject=f"job_{i}"))
        alerter.submit(alert(subject="job_0"))  # the same again: deduplicated
        alerter.submit(alert("disk.low", "/data"))  # not in alert_on
        await trio.sleep(10)
        assert [a.subject for a in sent] == ["job_0", "job_1"]
        await trio.sleep(3600)
        assert [a.kind for a in sent] == ["job.failed", "job.failed", "alerts.suppressed"]
        assert "2 more alerts" in sent[-1].summary
        nursery.cancel_scope.cancel()
    counts = dict(tally.values(catalogue.ALERTS))
    assert counts[("job.failed", "sent")] == 1 and counts[("job.failed", "failed")] == 1
    assert counts[("job.failed", "suppressed")] == 2 and counts[("job.failed", "deduplicated")] == 1


async def test_desktop_notifier_sends_a_notify_call_and_gives_up_quietly() -> None:
    calls: list[Any] = []

    async def send(message: Any) -> None:
        calls.append(message)
        if len(calls) == 2:
            raise ConnectionRefusedError("no session bus")

    desktop = Desktop(send)
    assert await desktop.notify("Dataerai: job.failed", "upload job_1 failed", "critical")
    message = calls[0]
    assert message.header.fields[3] == "Notify"  # HeaderFields.member
    assert message.body[3:5] == ("Dataerai: job.failed", "upload job_1 failed")
    assert message.body[6] == {"urgency": ("y", 2)}
    assert not await desktop.notify("t", "b")  # the bus went away: off, and said once
    assert not await desktop.notify("t", "b")
    assert len(calls) == 2
