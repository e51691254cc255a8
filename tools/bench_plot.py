"""`make bench --plot`: one picture of a run, the daemon over its best peer on every row.

A panel per section. Each bar is a row of the section's table (tools/bench_s3.py ``summary``;
for the loopback section, the daemon against ``curl`` and the disk), as the ratio the table
prints: for rates, the daemon over the fastest peer (right of 1 is ahead); for CPU and memory,
over the leanest (left of 1 is leaner). Where issue 14 set a target for a row, a tick marks it,
so that a glance shows which rows meet theirs. Ratios only: absolute figures on two shared
cores are noise, ratios from one run are not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Issue 14's targets, by section and row (the ratio the table prints).
TARGETS: dict[str, dict[str, float]] = {
    "s3": {"upload MB/s": 1.1, "download + fsync MB/s": 1.1, "download MB/s": 0.9},
    "small-files": {"upload files/s": 4.0, "download files/s": 4.0, "download + fsync files/s": 4.0},
    "loopback": {"upload vs curl -T": 1.0, "download vs curl + fsync": 1.0},
}


def _loopback_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"row": "upload vs curl -T", "daemon_vs_best": report["upload_ratio_vs_curl"], "better": "higher",
         "best_peer": "curl"},
        {"row": "download vs curl", "daemon_vs_best": report["download_ratio_vs_curl"], "better": "higher",
         "best_peer": "curl"},
        {"row": "download vs curl + fsync", "daemon_vs_best": report["download_ratio_vs_curl_fsync"],
         "better": "higher", "best_peer": "curl"},
        {"row": "download vs the disk", "daemon_vs_best": report["download_ratio_vs_disk"], "better": "higher",
         "best_peer": "disk"},
    ]


def plot(reports: dict[str, Any], path: Path, title: str) -> Path | None:
    """Write the PNG; None (and nothing written) without matplotlib, the ``bench`` extra's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sections = [s for s in ("s3", "small-files", "loopback") if s in reports]
    if not sections:
        return None
    rows_of = {s: _loopback_rows(reports[s]) if s == "loopback" else reports[s]["table"] for s in sections}
    heights = [max(len(rows_of[s]), 2) for s in sections]
    fig, axes = plt.subplots(len(sections), 1, figsize=(9, 0.45 * sum(heights) + 1.2 * len(sections)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, section in zip(axes[:, 0], sections, strict=True):
        rows = rows_of[section]
        labels = [f"{r['row']} ({r['best_peer']})" for r in rows]
        measured = [r["daemon_vs_best"] == r["daemon_vs_best"] for r in rows]  # NaN: a peer had no figure
        ratios = [r["daemon_vs_best"] if ok else 0.0 for r, ok in zip(rows, measured, strict=True)]
        targets = [TARGETS.get(section, {}).get(r["row"]) for r in rows]
        # Green: the row meets its target, or, with none, the daemon is ahead of its best peer.
        good = [(x >= (t or 1.0)) if r["better"] == "higher" else (x <= 1.0)
                for x, t, r in zip(ratios, targets, rows, strict=True)]
        ys = range(len(rows))
        ax.barh(list(ys), ratios, color=["tab:green" if g else "tab:orange" for g in good])
        ax.axvline(1.0, color="black", linewidth=0.8)
        for y, x, ok, target in zip(ys, ratios, measured, targets, strict=True):
            ax.text(x, y, f" {x:.2f}" if ok else " n/a", va="center", fontsize=8)
            if target is not None:
                ax.plot([target, target], [y - 0.4, y + 0.4], color="tab:red", linewidth=2)
        ax.set_yticks(list(ys), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(section, fontsize=10, loc="left")
        ax.set_xlabel("daemon / best peer (rates: right of 1 is ahead; CPU, RSS: left of 1 is leaner); "
                      "red: issue 14's target", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
