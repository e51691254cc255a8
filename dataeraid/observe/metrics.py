"""One scrape: a snapshot of the daemon's state, rendered in Prometheus' text format.

No metric is updated as things happen (but the persisted counters, ``tally``): a
scrape reads the current state (the job table's counts, each watch's lag and
quarantined files, the bandwidth limit in force, the token's expiry, the health
rules) into a :class:`Snapshot`, then a custom collector hands prometheus_client
the families of :mod:`catalogue`. So a gauge cannot drift from what it measures.
The ``process_*`` families are prometheus_client's ``ProcessCollector`` (``/proc/self``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from dataerai.contract import WATCH_STATES
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dataeraid import __version__
from dataeraid.observe import catalogue
from dataeraid.observe.health import EXIT_STATUS, Health
from dataeraid.observe.tally import Tally

#: The exposition's content type (text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class WatchSample:
    watch_id: str
    state: str
    lag_s: float | None
    quarantined: int


@dataclass(frozen=True)
class Snapshot:
    """The state one scrape reports (gathered by ``service.Observer.snapshot``)."""

    jobs: dict[str, int]
    watches: tuple[WatchSample, ...]
    bandwidth_limit_bps: dict[str, int]  # by direction: upload, download
    logged_in: bool
    auth_expires_at: float | None
    reachable: bool | None
    health: Health
    counters: dict[str, list[tuple[tuple[str, ...], float]]] = field(default_factory=dict)

    @classmethod
    def counters_of(cls, tally: Tally) -> dict[str, list[tuple[tuple[str, ...], float]]]:
        return {m.name: list(tally.values(m)) for m in catalogue.COUNTERS}


def _family(metric: catalogue.Metric) -> CounterMetricFamily | GaugeMetricFamily:
    if metric.kind == "counter":
        return CounterMetricFamily(metric.name, metric.help, labels=list(metric.labels))
    return GaugeMetricFamily(metric.name, metric.help, labels=list(metric.labels))


class SnapshotCollector(Collector):
    """The ``dataerai_*`` families of one snapshot."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._s = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._s
        for metric in catalogue.COUNTERS:
            family = _family(metric)
            for labels, value in s.counters.get(metric.name, []):
                family.add_metric(list(labels), value)
            yield family

        jobs = _family(catalogue.JOBS)
        for state, n in s.jobs.items():
            jobs.add_metric([state], n)
        yield jobs

        lag = _family(catalogue.WATCH_LAG)
        quarantined = _family(catalogue.WATCH_QUARANTINED)
        watch_state = _family(catalogue.WATCH_STATE)
        for w in s.watches:
            lag.add_metric([w.watch_id], w.lag_s or 0.0)
            quarantined.add_metric([w.watch_id], w.quarantined)
            for name in WATCH_STATES:
                watch_state.add_metric([w.watch_id, name], 1.0 if w.state == name else 0.0)
        yield from (lag, quarantined, watch_state)

        bandwidth = _family(catalogue.BANDWIDTH_LIMIT)
        for direction, rate in s.bandwidth_limit_bps.items():
            bandwidth.add_metric([direction], rate)
        yield bandwidth

        expiry = _family(catalogue.AUTH_EXPIRY)
        if s.logged_in and s.auth_expires_at is not None:
            expiry.add_metric([], s.auth_expires_at if not math.isinf(s.auth_expires_at) else math.inf)
        yield expiry
        logged_in = _family(catalogue.AUTH_LOGGED_IN)
        logged_in.add_metric([], 1.0 if s.logged_in else 0.0)
        yield logged_in
        reachable = _family(catalogue.REPOSITORY_UP)
        if s.reachable is not None:
            reachable.add_metric([], 1.0 if s.reachable else 0.0)
        yield reachable

        health = _family(catalogue.HEALTH)
        health.add_metric([], EXIT_STATUS[s.health.status])
        yield health
        build = _family(catalogue.BUILD_INFO)
        build.add_metric([__version__], 1.0)
        yield build


def render(snapshot: Snapshot) -> str:
    """The exposition text of ``snapshot`` and of this process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    ProcessCollector(registry=registry)
    return generate_latest(registry).decode("utf-8")
