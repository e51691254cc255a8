"""The health rules, one by one, on facts made by hand."""

from __future__ import annotations

import math
from dataclasses import replace

from dataeraid.config import Settings
from dataeraid.observe.health import Facts, WatchFacts, duration, judge

NOW = 1_800_000_000.0
FINE = Facts(now=NOW, logged_in=True, auth_rejected=None, auth_expires_at=math.inf, waiting_for_auth=0,
             waiting_for_network=0, failed_recently=0, unreachable_since=None,
             watches=(WatchFacts("wat_aaaaaaaa", "/data/a", "active", None, 0),),
             disks=(("the state directory", "/state", 50 << 30),), queue_filesystem="ext4")
SETTINGS = Settings()


def test_nothing_wrong_is_ok() -> None:
    health = judge(FINE, SETTINGS)
    assert (health.status, health.exit_status, health.line()) == ("ok", 0, "ok")


def test_the_issue_example_is_degraded_in_one_line() -> None:
    facts = replace(FINE, auth_expires_at=NOW + 5 * 86400 + 60,
                    watches=(WatchFacts("wat_aaaaaaaa", "/data/a", "active", 3 * 3600.0, 2),))
    health = judge(facts, SETTINGS)
    assert health.exit_status == 1
    assert health.line() == "degraded: auth expires in 5 days; watch wat_aaaaaaaa lag 3 h; 2 files quarantined"


def test_failing_outranks_degraded_and_comes_first() -> None:
    facts = replace(FINE, failed_recently=1,
                    watches=(WatchFacts("wat_aaaaaaaa", "/data/a", "active", 2 * 86400.0, 0),))
    health = judge(facts, SETTINGS)
    assert health.status == "failing" and health.exit_status == 2
    assert health.line() == "failing: watch wat_aaaaaaaa lag 2 days; 1 job failed in the last 24 h"


def test_each_failing_rule() -> None:
    cases = {
        "auth_required": replace(FINE, logged_in=False),
        "auth_expired": replace(FINE, auth_expires_at=NOW - 1),
        "auth_revoked": replace(FINE, auth_rejected="auth_revoked"),
        "waiting_for_auth": replace(FINE, waiting_for_auth=3),
    }
    for code, facts in cases.items():
        health = judge(facts, SETTINGS)
        assert health.status == "failing", code
        assert [r.code for r in health.reasons] == [code]


def test_each_degraded_rule_and_its_threshold() -> None:
    cases = {
        "watch_unavailable": replace(FINE, watches=(WatchFacts("wat_aaaaaaaa", "/data/a", "unavailable", None, 0),)),
        "jobs_failed": replace(FINE, failed_recently=1),
        "unreachable": replace(FINE, unreachable_since=NOW - 2 * 3600, waiting_for_network=4),
        "disk_low": replace(FINE, disks=(("watched folder", "/data/a", 100 << 20),)),
        "queue_on_network_fs": replace(FINE, queue_filesystem="nfs4"),
    }
    for code, facts in cases.items():
        health = judge(facts, SETTINGS)
        assert (health.status, [r.code for r in health.reasons]) == ("degraded", [code]), code
    assert "4 jobs waiting" in judge(cases["unreachable"], SETTINGS).line()
    # Thresholds are the settings': raised, or 0 for the count rules, they let the same facts pass.
    relaxed = Settings(health_failed_jobs=0, health_unreachable_s=3 * 3600, health_min_free_bytes=0)
    for code in ("jobs_failed", "unreachable", "disk_low"):
        assert judge(cases[code], relaxed).status == "ok", code
    assert judge(replace(FINE, auth_expires_at=NOW + 10 * 86400), SETTINGS).status == "ok"
    assert judge(replace(FINE, auth_expires_at=NOW + 10 * 86400), Settings(health_auth_expiry_days=14)).status \
        == "degraded"


def test_durations_read_as_a_person_would_say_them() -> None:
    assert [duration(s) for s in (30, 600, 3 * 3600, 5 * 86400)] == ["30 s", "10 min", "3 h", "5 days"]
