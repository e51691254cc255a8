"""Seeing and being told: what an operator who never visits the machine learns from the daemon.

    settings.py   the keys' defaults and bounds (read by ``dataeraid.config``), the alert kinds
    catalogue.py  every metric: name, type, labels, help (docs/operations.md is checked against it)
    tally.py      the counters that survive restarts, kept in the queue's ``counters`` table
    metrics.py    one scrape: a snapshot of current state, rendered by prometheus_client
    http.py       the opt-in loopback ``/metrics`` endpoint: h11 on Trio, no threads
    expiry.py     the token's expiry, learnt from the repository; ``auth.expiring`` events
    health.py     ok, degraded or failing, with reasons: pure rules over gathered facts
    alerts.py     the hook command and desktop notifications, de-duplicated and rate-limited
    desktop.py    desktop notifications over D-Bus (jeepney, an optional extra)
    service.py    ``Observer``: owns all of the above, started in the daemon's root nursery

Data flows one way, as everywhere in the daemon: the engines and the job table feed
the tally; the store, the watches, the scheduler and the expiry monitor are read at a
scrape or a health check; the event bus feeds the alerts. Nothing here changes a job.
"""
