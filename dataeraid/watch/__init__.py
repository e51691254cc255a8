"""Watch folders: folders whose complete files the daemon uploads by itself, exactly once (docs/watch.md).

    manager.py    the daemon's watches: their rows, their tasks, the ``watch.*`` methods' work
    watcher.py    one watch at work: root checks, scans, events, judging, queueing, verifying, cleaning
    ledger.py     every entry a watch knows, as durable rows, and the rules that keep them exactly-once
    config.py     a watch's settings, checked at ``watch.add``; rules.py parses their words
    notify.py     inotify under Trio (file events); writers.py: is a file still open for writing?
    scan.py       the streaming walk of a tree; excludes.py its patterns; mounts.py: a network share?
    template.py   title, tags and metadata rendered from a file's path
"""
