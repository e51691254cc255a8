"""Alerts: de-duplication, the hourly budget and its summary, on Trio's fake clock; the desktop
notifier through a fake D-Bus call."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import trio
import trio.testing

from dataeraid.config import LiveSettings, Settings
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


class Bus:
    """A bus whose subscriptions are memory channels: ``publish`` feeds the open ones."""

    def __init__(self) -> None:
        self.subscribed = 0
        self.open: list[Any] = []

    async def subscribe(self, **_: Any) -> Any:
        send, receive = trio.open_memory_channel[dict[str, Any]](16)
        bus = self

        class Subscription:
            def __aiter__(self) -> Any:
                return receive

            def close(self) -> None:
                bus.open.remove(send)

        self.subscribed += 1
        self.open.append(send)
        return Subscription()

    def publish(self, event: dict[str, Any]) -> None:
        for send in self.open:
            send.send_nowait(event)


def failed(job_id: str) -> dict[str, Any]:
    return {"type": "job.state", "job_id": job_id, "state": "failed", "job": {"kind": "upload"}}


async def test_a_reload_applies_to_the_next_alert(autojump_clock: trio.testing.MockClock) -> None:
    sent: list[tuple[tuple[str, ...], str, float]] = []
    delivered = trio.Condition()

    async def runner(command: tuple[str, ...], alert: Alert, timeout_s: float) -> bool:
        sent.append((command, alert.subject if alert.kind != "alerts.suppressed" else alert.summary, timeout_s))
        async with delivered:
            delivered.notify_all()
        return True

    async def until(n: int) -> None:
        async with delivered:
            while len(sent) < n:
                await delivered.wait()

    tally = Tally()
    live = LiveSettings(Settings(alert_command=("/bin/a",), alert_max_per_hour=3, alert_timeout_s=5))
    alerter = Alerter(live, tally, runner=runner)
    async with trio.open_nursery() as nursery:
        await nursery.start(alerter.serve, Bus())
        alerter.submit(alert(subject="job_0"))
        await until(1)
        # A new command and timeout: the next alert runs them.
        live.replace(replace(live.current, alert_command=("/bin/b", "--x"), alert_timeout_s=7))
        alerter.submit(alert(subject="job_1"))
        await until(2)
        assert sent == [(("/bin/a",), "job_0", 5.0), (("/bin/b", "--x"), "job_1", 7.0)]
        # The budget lowered below what the hour sent: the hour's sends still count, the next is held back.
        live.replace(replace(live.current, alert_max_per_hour=2))
        alerter.submit(alert(subject="job_2"))
        alerter.submit(alert(subject="job_3"))
        await trio.sleep(60)
        assert len(sent) == 2
        # Raised: the summary of what was held back goes at once, not when the hour is over.
        start = trio.current_time()
        live.replace(replace(live.current, alert_max_per_hour=10))
        await until(3)
        assert trio.current_time() - start < 1
        assert sent[2][1].startswith("2 more alerts held back in the last hour (2 job.failed)")
        # The same kind and subject again: quiet for alert_dedup_s after its send, as the reload sets it.
        alerter.submit(alert(subject="job_0"))
        await trio.sleep(60)
        assert len(sent) == 3
        live.replace(replace(live.current, alert_dedup_s=30))
        alerter.submit(alert(subject="job_0"))
        await until(4)
        assert sent[3][1] == "job_0"
        # Its kind taken out of alert_on: not sent.
        live.replace(replace(live.current, alert_on=("disk.low",)))
        alerter.submit(alert(subject="job_9"))
        alerter.submit(alert("disk.low", "/data"))
        await until(5)
        assert sent[4][1] == "/data"
        nursery.cancel_scope.cancel()
    counts = dict(tally.values(catalogue.ALERTS))
    assert counts[("job.failed", "suppressed")] == 2 and counts[("job.failed", "deduplicated")] == 1


async def test_alerts_turned_on_by_a_reload_follow_the_events_from_then_on(
        autojump_clock: trio.testing.MockClock) -> None:
    sent: list[str] = []
    notified: list[str] = []

    async def runner(command: tuple[str, ...], alert: Alert, timeout_s: float) -> bool:
        sent.append(alert.subject)
        return True

    async def send(message: Any) -> None:
        notified.append(message.body[4])

    bus = Bus()
    live = LiveSettings(Settings())  # no command, no desktop: off, and not subscribed
    alerter = Alerter(live, Tally(), runner=runner, desktop=Desktop(send))
    async with trio.open_nursery() as nursery:
        await nursery.start(alerter.serve, bus)
        await trio.testing.wait_all_tasks_blocked()
        assert (bus.subscribed, alerter.enabled) == (0, False)
        alerter.submit(alert(subject="job_0"))  # off: dropped
        live.replace(replace(live.current, alert_command=("/bin/hook",)))
        await trio.testing.wait_all_tasks_blocked()
        assert bus.subscribed == 1
        bus.publish(failed("job_1"))
        await trio.testing.wait_all_tasks_blocked()
        assert sent == ["job_1"] and notified == []
        # Desktop notifications too, then the hook off: the desktop alone.
        live.replace(replace(live.current, desktop_notifications=True))
        bus.publish(failed("job_2"))
        await trio.testing.wait_all_tasks_blocked()
        live.replace(replace(live.current, alert_command=()))
        bus.publish(failed("job_3"))
        await trio.testing.wait_all_tasks_blocked()
        assert sent == ["job_1", "job_2"] and len(notified) == 2 and "job_3" in notified[1]
        assert bus.subscribed == 1  # still on: the same subscription
        # All off: the subscription is closed; on again: a new one.
        live.replace(replace(live.current, desktop_notifications=False))
        await trio.testing.wait_all_tasks_blocked()
        assert bus.open == []
        bus.publish(failed("job_4"))
        live.replace(replace(live.current, alert_command=("/bin/hook",)))
        await trio.testing.wait_all_tasks_blocked()
        bus.publish(failed("job_5"))
        await trio.testing.wait_all_tasks_blocked()
        assert (bus.subscribed, sent) == (2, ["job_1", "job_2", "job_5"])
        nursery.cancel_scope.cancel()
