"""``dataerai metrics`` and ``dataerai daemon health``: what an operator, cron or Nagios asks.

Neither starts a daemon: a health check that started the daemon it checks would
always find it running.
"""

from __future__ import annotations

import click
from dataerai import ConnectionError as DaemonConnectionError
from dataerai import DaemonError, DaemonTimeoutError

from ._context import open_client, settings
from ._output import as_dict, json_option, print_json

#: `dataerai daemon health`'s exit status for each status (dataeraid/observe/health.py has the rules).
HEALTH_EXIT = {"ok": 0, "degraded": 1, "failing": 2}
HEALTH_TIMEOUT_S = 30.0


@click.command("metrics")
@json_option
@click.pass_context
def metrics(ctx: click.Context, as_json: bool) -> None:
    """Print the daemon's metrics in Prometheus' text format.

    The same text as the `metrics_listen` endpoint's /metrics; for node_exporter's
    textfile collector, write it to a file from cron (docs/operations.md). Does not
    start a daemon: when none listens it exits 3. With --json: {"content_type", "text"}.
    """
    with open_client(ctx, auto_start=False) as client:
        answer = as_dict(client.call("daemon.metrics"))
    if as_json:
        print_json(answer)
        return
    click.echo(str(answer.get("text", "")), nl=False)


@click.command("health")
@json_option
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """Say whether the daemon is ok (exit 0), degraded (1) or failing (2), in one line.

    For cron, Nagios and systemd timers: e.g. "degraded: watch wat_… lag 3 h; 2 files
    quarantined". The rules and their thresholds (`health_*` in config.toml) are in
    docs/operations.md. A daemon that is not running, or does not answer within 30 s,
    is failing; this command never starts one.
    """
    socket = settings(ctx).paths.socket
    try:
        with open_client(ctx, auto_start=False) as client:
            answer = as_dict(client.call("daemon.health", timeout=HEALTH_TIMEOUT_S))
    except DaemonTimeoutError:
        answer = {"status": "failing", "summary": f"failing: the daemon at {socket} did not answer within "
                                                  f"{HEALTH_TIMEOUT_S:.0f} s", "reasons": []}
    except DaemonConnectionError:
        answer = {"status": "failing", "summary": f"failing: the daemon is not running (no answer at {socket}); "
                                                  "start it with `systemctl --user start dataerai-transfer.socket`",
                  "reasons": []}
    except DaemonError as exc:
        answer = {"status": "failing", "summary": f"failing: the daemon answered {exc.code}: {exc.message}",
                  "reasons": []}
    status = str(answer.get("status", "failing"))
    if as_json:
        print_json({**answer, "exit_status": HEALTH_EXIT.get(status, 2)})
    else:
        click.echo(str(answer.get("summary", status)))
    ctx.exit(HEALTH_EXIT.get(status, 2))
