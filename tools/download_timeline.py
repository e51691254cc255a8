"""The timeline of one download from the daemon's log: where its wall time went.

The download engine logs each phase as a debug-level ``download.phase`` event with
``t``, seconds since the job began (``dataeraid/engine/download.py``, ``Timeline``).
Run the daemon with ``DATAERAI_LOG_LEVEL=debug``, download, then:

    .venv/bin/python tools/download_timeline.py DAEMON_LOG [--job JOB_ID]

It prints the job's phases in order (its other log lines, such as its state changes,
placed on the same clock by their timestamps), a bar per range (``.`` from the
request to the answer's head (the store's time to its first byte), ``-`` from the head
to the first write (the first slice arriving), ``=`` while its bytes were written, ``#``
while the in-order hasher was on it), the checkpoints, and a summary of the waits.
Without ``--job``, the last download in the log.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

WIDTH = 72


def job_lines(path: Path, job_id: str | None) -> tuple[str, list[dict[str, Any]]]:
    """The log lines of ``job_id`` (or of the last download with phases) as dicts, in order."""
    lines: list[dict[str, Any]] = []
    for text in path.read_text(errors="replace").splitlines():
        if not text.startswith("{"):
            continue
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and "job_id" in line:
            lines.append(line)
    if job_id is None:
        with_phases = [line["job_id"] for line in lines if line.get("event") == "download.phase"]
        if not with_phases:
            raise SystemExit(f"{path}: no download.phase events (was the daemon at DATAERAI_LOG_LEVEL=debug?)")
        job_id = with_phases[-1]
    return job_id, [line for line in lines if line["job_id"] == job_id]


def _when(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


def timeline(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The phases, ranges, hashes and checkpoints of one job's lines, on the job's clock."""
    phases = [line for line in lines if line.get("event") == "download.phase"]
    begin = next((line for line in phases if line["phase"] == "begin"), None)
    if begin is None:
        raise SystemExit("the job's download.phase 'begin' is not in the log")
    zero = _when(begin) - begin["t"]
    marks: list[tuple[float, str]] = []
    ranges: dict[int, dict[str, Any]] = {}
    checkpoints: list[dict[str, Any]] = []
    for line in lines:
        if line.get("event") != "download.phase":
            state = f" {line['state']}" if "state" in line else ""
            marks.append((round(_when(line) - zero, 4), line["event"] + state))
            continue
        phase = line["phase"]
        if phase == "range":
            ranges.setdefault(line["index"], {}).update(
                request=line["request"], head=line.get("head"), first_write=line["first_write"],
                last_write=line["last_write"], landed=line["t"])
        elif phase == "hash":
            # The hasher follows each range's writes and says when it was done with it ("hashed");
            # before 2026-12-04 it waited for each range to land ("ready" to "began"), then read it back.
            r = ranges.setdefault(line["index"], {})
            r["hashed"] = line.get("hashed", line["t"])
            if "began" in line:
                r.update(hash_ready=line["ready"], hash_began=line["began"])
        elif phase == "checkpoint":
            checkpoints.append({"ranges": line["ranges"], "sync_began": line["sync_began"], "synced": line["synced"],
                                "committed": line["t"]})
        else:
            marks.append((line["t"], phase))
    marks.sort()
    previous = 0.0
    for index in sorted(ranges):
        # Following the writes, the hasher is on a range from the moment it is done with the one before.
        ranges[index].setdefault("hash_began", previous)
        previous = ranges[index].get("hashed", previous)
    return {"marks": marks, "ranges": ranges, "checkpoints": checkpoints,
            "phase": {name: t for t, name in marks}}


def summary(tl: dict[str, Any]) -> list[tuple[str, float]]:
    """The waits that make up the job's wall time, in seconds."""
    phase, ranges = tl["phase"], tl["ranges"]
    fetched = [r for r in ranges.values() if "request" in r]
    out: list[tuple[str, float]] = []
    if "target" in phase:
        out.append(("the server's download target", phase["target"]))
    if "planned" in phase and fetched:
        out.append(("target to the first range's request", min(r["request"] for r in fetched) - phase.get("target", 0)))
    heads = [r["head"] - r["request"] for r in fetched if r.get("head") is not None]
    if heads:  # logged since 2026-12-04
        out.append(("request to the answer's head (the store's time to first byte), median of ranges",
                    sorted(heads)[len(heads) // 2]))
    firsts = [r["first_write"] - r["request"] for r in fetched if r.get("first_write") is not None]
    if firsts:
        out.append(("request to first write, median of ranges", sorted(firsts)[len(firsts) // 2]))
        out.append(("first request to first write", min(r["first_write"] for r in fetched if r.get("first_write"))
                    - min(r["request"] for r in fetched)))
    if "landed" in phase and fetched:
        out.append(("first request to the last range landed", phase["landed"] - min(r["request"] for r in fetched)))
    for name, after in (("hashed", "hash's tail after the last range landed"),
                        ("checkpointed", "checkpoints' tail (fdatasync, commit) after the last range landed")):
        if name in phase and "landed" in phase:
            out.append((after, phase[name] - phase["landed"]))
    waits = [r["hash_began"] - r["hash_ready"] for r in ranges.values() if "hash_ready" in r]
    work = [r["hashed"] - r["hash_began"] for r in ranges.values() if "hash_began" in r]
    if waits:
        out.append(("hasher waiting for each range to land, total", sum(waits)))
        out.append(("hasher reading back and hashing landed ranges, total", sum(work)))
    syncs = [c["synced"] - c["sync_began"] for c in tl["checkpoints"]]
    commits = [c["committed"] - c["synced"] for c in tl["checkpoints"]]
    if syncs:
        out.append(("checkpoint batches", len(syncs)))
        out.append(("fdatasync, total", sum(syncs)))
        out.append(("checkpoint commits, total", sum(commits)))
        out.append(("the last fdatasync", syncs[-1]))
    if "fetched" in phase and "placed" in phase:
        out.append(("fetched to placed (check, rename, directory fsync)", phase["placed"] - phase["fetched"]))
    if "placed" in phase:
        out.append(("begin to placed", phase["placed"]))
    return out


def bar(r: dict[str, Any], scale: float) -> str:
    cells = [" "] * WIDTH

    def fill(a: float | None, b: float | None, char: str) -> None:
        if a is None or b is None:
            return
        for i in range(int(a * scale), max(int(a * scale) + 1, int(b * scale))):
            if 0 <= i < WIDTH:
                cells[i] = char

    head = r.get("head")
    fill(r.get("request"), head if head is not None else r.get("first_write"), ".")
    fill(head, r.get("first_write"), "-")
    fill(r.get("first_write"), r.get("last_write"), "=")
    fill(r.get("hash_began"), r.get("hashed"), "#")
    return "".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the daemon's log (JSON lines)")
    parser.add_argument("--job", help="a job id (default: the last download in the log)")
    parser.add_argument("--json", action="store_true", help="the timeline and summary as JSON")
    args = parser.parse_args()
    job_id, lines = job_lines(args.log, args.job)
    tl = timeline(lines)
    if args.json:
        json.dump({"job_id": job_id, **tl, "summary": summary(tl)}, sys.stdout, indent=1)
        print()
        return
    end = max([t for t, _ in tl["marks"]] + [r.get("hashed", 0) for r in tl["ranges"].values()] or [1.0])
    scale = (WIDTH - 1) / end if end > 0 else 1.0
    print(f"job {job_id}: {len(tl['ranges'])} ranges, {end:.3f} s on the job's clock")
    for t, name in tl["marks"]:
        print(f"  {t:8.4f}  {name}")
    print(f"\n  range  request  head     1st write  last write  landed  hash began  hashed"
          f"   (1 column = {1000 / scale:.1f} ms)")

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for index in sorted(tl["ranges"]):
        r = tl["ranges"][index]
        print(f"  {index:5}  {cell(r.get('request')):>7}  {cell(r.get('head')):>7}  {cell(r.get('first_write')):>9}  "
              f"{cell(r.get('last_write')):>10}  {cell(r.get('landed')):>6}  {cell(r.get('hash_began')):>10}  "
              f"{cell(r.get('hashed')):>6}   |{bar(r, scale)}|")
    if tl["checkpoints"]:
        print("\n  checkpoint  sync began  synced  committed  ranges")
        for c in tl["checkpoints"]:
            print(f"  {'':10}  {c['sync_began']:10.3f}  {c['synced']:6.3f}  {c['committed']:9.3f}  {c['ranges']}")
    print()
    for what, seconds in summary(tl):
        print(f"  {what:66} {seconds:7.3f}" + ("" if what == "checkpoint batches" else " s"))


if __name__ == "__main__":
    main()
