"""The queue database's tables (SQLAlchemy Core). Alembic's migrations in
``migrations/versions`` create them; a test checks the two agree."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    # Enqueue order, so that equal priorities run first come, first served.
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("local_path", sa.Text),
    sa.Column("dest_dir", sa.Text),
    sa.Column("file_name", sa.Text),
    # The source's identity at enqueue: a change to any of them is `source_changed`.
    sa.Column("source_size", sa.BigInteger),
    sa.Column("source_mtime_ns", sa.BigInteger),
    sa.Column("source_inode", sa.BigInteger),
    sa.Column("chunk_size", sa.BigInteger, nullable=False),
    sa.Column("chunk_count", sa.Integer),
    sa.Column("bytes_total", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    # The server-side upload session, or the content being downloaded.
    sa.Column("remote_session", sa.String(64)),
    sa.Column("asset_id", sa.String(64)),
    sa.Column("content_id", sa.String(64)),
    sa.Column("files", sa.JSON),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("deadline", sa.Float),
    # Who submitted the job (the SDK's name, else its pid): the scheduler's fairness key.
    sa.Column("client", sa.String(128), nullable=False, server_default=""),
    # A completed upload whose content the repository already held: no bytes were sent for it.
    sa.Column("deduplicated", sa.Boolean, nullable=False, server_default=sa.false()),
    # When a client first saw the job in a final state (jobs.py, ``acknowledge``); None while it is not
    # final or nobody saw its end. A finished job is pruned ``job_retention_days`` after this.
    sa.Column("acknowledged_at", sa.Float),
    # The job's transfer window as given (dataeraid/windows.py), or None: any time.
    sa.Column("window", sa.Text),
    # A ``scheduled`` job's next window opening (Unix time); None in every other state.
    sa.Column("not_before", sa.Float),
    sa.Index("ix_jobs_state_priority", "state", "priority", "seq"),
    # The scheduler's seeks: the clients with queued jobs, then each one's front (store.runnable).
    sa.Index("ix_jobs_runnable", "state", "client", sa.text("priority DESC"), "seq"),
    # The next job's seq is max(seq) + 1: one seek, not a pass over an index of every job.
    sa.Index("ix_jobs_seq", "seq"),
    # Pruning's seek (Store.prune_jobs): only finished jobs a client saw end carry acknowledged_at.
    sa.Index("ix_jobs_acknowledged", "acknowledged_at", sqlite_where=sa.text("acknowledged_at IS NOT NULL")),
    # The scheduler's seek for the next window to open (store.next_window_opening).
    sa.Index("ix_jobs_not_before", "not_before", sqlite_where=sa.text("not_before IS NOT NULL")),
)

# A row exists only once the chunk was acknowledged (upload: the server answered
# with its digest; download: its bytes were written): the checkpoints.
chunks = sa.Table(
    "chunks",
    metadata,
    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64)),
)

# Durable events: written in the same transaction as the change they report.
events = sa.Table(
    "events",
    metadata,
    sa.Column("event_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("job_id", sa.String(40)),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Index("ix_events_job", "job_id", "event_id"),
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# The digests of sources uploaded before, so that re-uploading an unchanged file or
# directory can prove possession (deduplication) before sending anything. A row holds
# while the source's identity is unchanged: for a file its size, mtime_ns and inode
# (``manifest`` empty), for a directory the SHA-256 of its manifest (every file's path,
# size, mtime_ns and inode; ``size`` the total, ``mtime_ns``/``inode`` of the directory).
digest_cache = sa.Table(
    "digest_cache",
    metadata,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("inode", sa.BigInteger, nullable=False),
    sa.Column("manifest", sa.String(64), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("file_sha256", sa.JSON),
    sa.Column("used_at", sa.Float, nullable=False),
    sa.Index("ix_digest_cache_used_at", "used_at"),
)

# Watch folders (dataeraid.watch): what each watch is, and every entry it knows. A file's
# row is the durable record of which version of it was taken, queued and verified, so a
# restart neither uploads a file again nor forgets one (docs/watch.md).
watches = sa.Table(
    "watches",
    metadata,
    sa.Column("watch_id", sa.String(72), primary_key=True),
    sa.Column("root", sa.Text, nullable=False),
    # What the watch was asked for: project, collection, rules, excludes, template, ...
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("user_paused", sa.Boolean, nullable=False, server_default=sa.false()),
    # Why the root cannot be used now (missing, unmounted, replaced, emptied): the watch is unavailable.
    sa.Column("problem_code", sa.String(64)),
    sa.Column("problem_message", sa.Text),
    # The root as it was when the watch was added (or resumed): another device or inode is another folder.
    sa.Column("root_dev", sa.BigInteger),
    sa.Column("root_inode", sa.BigInteger),
    # The name of the marker file the watch left in its root, if it could write one.
    sa.Column("marker", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("last_scan_at", sa.Float),
    # Counts the watch's full scans: a file row not stamped by the newest scan was not found by it.
    sa.Column("scan_gen", sa.Integer, nullable=False, server_default="0"),
)

watch_files = sa.Table(
    "watch_files",
    metadata,
    sa.Column("watch_id", sa.String(72), sa.ForeignKey("watches.watch_id", ondelete="CASCADE"), primary_key=True),
    # The path relative to the watch's root, '/'-separated (surrogate-escaped where not UTF-8).
    sa.Column("rel", sa.Text, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False, server_default="file"),
    sa.Column("state", sa.String(16), nullable=False),
    # The version last seen (and, from `queued` on, the version taken): a change to any is a new version.
    sa.Column("size", sa.BigInteger),
    sa.Column("mtime_ns", sa.BigInteger),
    sa.Column("inode", sa.BigInteger),
    # When this version was first seen with this size and mtime (the `stable:` rule counts from it).
    sa.Column("stable_since", sa.Float),
    sa.Column("job_id", sa.String(40)),
    sa.Column("asset_id", sa.String(72)),
    sa.Column("content_id", sa.String(72)),
    sa.Column("sha256", sa.String(64)),
    # Failed uploads of this version so far (quarantined after a few).
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # When the row is next looked at: a seen file's next completion check, a failed one's next
    # attempt, a move or delete that failed being tried again.
    sa.Column("retry_at", sa.Float),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("seen_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # The newest full scan that found it, and since when scans no longer find it (pruning counts from there).
    sa.Column("scan_gen", sa.Integer, nullable=False, server_default="0"),
    sa.Column("gone_at", sa.Float),
    sa.Index("ix_watch_files_state", "watch_id", "state", "seen_at"),
    sa.Index("ix_watch_files_due", "watch_id", "state", "retry_at"),
    sa.Index("ix_watch_files_job", "job_id"),
    sa.Index("ix_watch_files_updated", "state", "updated_at"),
    # Pruning's seek: only rows whose file went carry gone_at (ledger.prune).
    sa.Index("ix_watch_files_gone", "gone_at", sqlite_where=sa.text("gone_at IS NOT NULL")),
)

# The metrics' counters (dataeraid/observe/tally.py): one row per metric and label values
# (a JSON array, in the catalogue's label order), so that totals go on across restarts.
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("labels", sa.Text, primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)

# Each watch's files counted by state, kept equal to a count of ``watch_files`` by triggers
# (migration 0007), so ``watch.get`` reads a few rows instead of every file of the watch.
watch_file_counts = sa.Table(
    "watch_file_counts",
    metadata,
    sa.Column("watch_id", sa.String(72), primary_key=True),
    sa.Column("state", sa.String(16), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)
