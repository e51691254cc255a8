"""A whole Dataerai stack on private temporary paths: a repository server and a
transfer daemon as real processes, as a user would run them.

Used by the integration tests, `make demo` and `make bench`. Everything lives
under one root directory: the server's data, the daemon's XDG directories
(state, config, runtime with the socket) and both processes' logs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def _bin(name: str, bin_dir: Path | None = None) -> str:
    """The executable ``name``: in ``bin_dir`` and nowhere else when it is given (another
    installation under test), else beside this Python, else on PATH."""
    if bin_dir is not None:
        if not (bin_dir / name).exists():
            raise RuntimeError(f"{name} is not installed in {bin_dir}")
        return str(bin_dir / name)
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed: run `make test` or `make demo`, which bootstrap .venv/")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Stack:
    """``bin_dir``: where ``dataerai`` and ``dataerai-server`` are (default: beside this Python);
    ``environ``: the environment the processes start from (default: this one's), to which the
    stack adds its XDG paths, its socket and ``bin_dir`` first on PATH."""

    #: The project the suite's fixture makes once the daemon is up (tests/integration/conftest.py).
    project_id: str

    def __init__(self, root: Path, *, daemon_config: dict[str, Any] | None = None, bin_dir: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.bin_dir = bin_dir
        self.server_dir = root / "server"
        self.runtime = root / "run"
        self.runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.runtime, 0o700)
        self.socket_path = self.runtime / "dataerai-transfer.sock"
        base = os.environ if environ is None else environ
        self.env = {
            **base,
            "XDG_STATE_HOME": str(root / "state"),
            "XDG_CONFIG_HOME": str(root / "config"),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "DATAERAI_SOCKET": str(self.socket_path),
            "PATH": f"{bin_dir or BIN}{os.pathsep}{base.get('PATH', '')}",
        }
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.pop("LISTEN_FDS", None)
        if daemon_config:
            config_dir = root / "config" / "dataerai"
            config_dir.mkdir(parents=True, exist_ok=True)
            lines = [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in daemon_config.items()]
            (config_dir / "config.toml").write_text("\n".join(lines) + "\n")
        self.server_storage: str | None = None
        self.server_database: str | None = None
        self.server_env: dict[str, str] = {}
        self.port: int | None = None
        self.url: str | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.token: str | None = None

    def bin(self, name: str) -> str:
        """The stack's ``dataerai`` or ``dataerai-server``."""
        return _bin(name, self.bin_dir)

    # --- the repository server ----------------------------------------------------

    def start_server(self, timeout: float = 30.0, *, storage: str | None = None, database: str | None = None,
                     env: dict[str, str] | None = None) -> str:
        """Start (or restart, on the same port) the server; its base URL.

        ``storage`` and ``database`` are ``--storage`` and ``--database`` (kept for restarts
        and for ``add_user``); ``env`` is added to the server's environment (AWS_* for S3).
        """
        if storage is not None:
            self.server_storage = storage
        if database is not None:
            self.server_database = database
        if env is not None:
            self.server_env = env
        ready = self.root / "server.url"
        ready.unlink(missing_ok=True)
        bind = f"127.0.0.1:{self.port or 0}"
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the process owns it
        args = [self.bin("dataerai-server"), "run", "--data-dir", str(self.server_dir), "--bind", bind,
                "--ready-file", str(ready)]
        if self.server_storage:
            args += ["--storage", self.server_storage]
        if self.server_database:
            args += ["--database", self.server_database]
        self.server = subprocess.Popen(
            args, env={**self.env, **self.server_env}, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()

        def ready_url() -> str | None:
            if self.server is not None and self.server.poll() is not None:
                raise RuntimeError(f"dataerai-server exited with {self.server.returncode}; see {self.root}/server.log")
            return ready.read_text().strip() if ready.exists() else None

        self.url = wait_for(ready_url, timeout, "the repository server")
        assert self.url is not None
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def stop_server(self, sig: int = signal.SIGTERM) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(sig)
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None

    @contextlib.contextmanager
    def server_held(self) -> Iterator[None]:
        """Hold the server still (SIGSTOP, then SIGCONT on the way out): the kernel still accepts
        its connections, but nothing is answered, so no transfer can end meanwhile. A test that
        must steer a job while it runs holds the server instead of hoping the job is slow enough."""
        assert self.server is not None and self.server.poll() is None
        os.killpg(self.server.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.server.pid, signal.SIGCONT)

    def add_user(self, email: str, scope: str = "write", expires_in_days: float | None = None) -> str:
        """A token for ``email`` (made if new), as ``dataerai-server users add`` prints it.

        With this Python's installation, the command's own function runs in this process: the
        same code without a process's start-up, which cost each test's stack a second.
        """
        if self.bin_dir is None:
            from datetime import timedelta

            from dataerai_server.cli import add_user
            from dataerai_server.config import sqlite_url

            url = self.server_database or sqlite_url(self.server_dir)
            expires = None if expires_in_days is None else timedelta(days=expires_in_days)
            return add_user(url, email, scope, expires)
        args = [self.bin("dataerai-server"), "users", "add", email, "--scope", scope]
        if self.server_database:
            args += ["--database", self.server_database]
        else:
            args += ["--data-dir", str(self.server_dir)]
        # Unset: a token that does not expire, as the stack's tests and the documented examples expect
        # (the server's own default is 90 days).
        args += ["--expires-in", "never" if expires_in_days is None else str(expires_in_days)]
        out = subprocess.run(args, env=self.env, check=True, capture_output=True, timeout=60)
        return out.stdout.decode().strip()

    def login(self, token: str) -> None:
        assert self.url is not None
        self.cli("auth", "login", "--server", self.url, "--token-stdin", input=token + "\n")
        self.token = token

    def sign_in(self, token: str, *, reload: bool = True) -> None:
        """What ``login`` leaves behind, without the command: the credentials file written by the
        daemon's own module, and (``reload``) ``auth.reload`` to a daemon that runs. For stacks whose
        test is not about logging in; ``login`` checks the token with the server first, as a user's
        would."""
        from dataeraid import credentials

        assert self.url is not None
        credentials.save(Path(self.env["XDG_CONFIG_HOME"]) / "dataerai" / "credentials.json",
                         credentials.Credentials(server_url=self.url, token=token))
        self.token = token
        if reload and self.daemon is not None:
            with self.client() as client:
                client.call("auth.reload")

    # --- the daemon and its CLI -------------------------------------------------------

    def start_daemon(self, timeout: float = 30.0, *, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
        """Start the daemon (behind ``prefix``, e.g. :func:`as_nobody`'s, to run it as another user)."""
        self.spawn_daemon(prefix=prefix)
        return self.wait_for_daemon(timeout)

    def spawn_daemon(self, *, prefix: list[str] | None = None, quiet: bool = False) -> None:
        """Start the daemon without waiting for it (``wait_for_daemon``), so that something else can
        start meanwhile. ``quiet``: its stderr goes nowhere, so it keeps and rotates its own
        ``daemon.log`` in its state directory, as one the SDK started does."""
        log = subprocess.DEVNULL if quiet else open(self.root / "daemon.log", "ab")  # noqa: SIM115
        self.daemon = subprocess.Popen(
            [*(prefix or []), self.bin("dataerai"), "daemon", "run"], env=self.env, stdout=log, stderr=log,
            start_new_session=True,
        )
        if not isinstance(log, int):
            log.close()

    def wait_for_daemon(self, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        """The daemon ``spawn_daemon`` started, once it listens on its socket."""
        daemon = self.daemon
        assert daemon is not None

        def listening() -> bool:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with {daemon.returncode}; see {self.root}/daemon.log "
                                   f"(started quiet: {self.env['XDG_STATE_HOME']}/dataerai/daemon.log)")
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(self.socket_path))
                except OSError:
                    return False
                return True

        wait_for(listening, timeout, "the daemon's socket")
        return daemon

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal the daemon and wait for it; its exit status."""
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            return None
        if daemon.poll() is None:
            daemon.send_signal(sig)
        try:
            return daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
            raise

    def cli(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.bin("dataerai"), *args], env=self.env, input=input, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"dataerai {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def client(self, **options: Any) -> Any:
        from dataerai import DataeraiClient

        options.setdefault("socket_path", str(self.socket_path))
        options.setdefault("binary_path", self.bin("dataerai"))
        options.setdefault("auto_start", False)
        return DataeraiClient(**options)

    def api(self, token: str | None = None) -> Any:
        """An httpx client on the server's API, for checks from the server's side."""
        import httpx

        assert self.url is not None
        return httpx.Client(base_url=self.url + "/api/v1",
                            headers={"Authorization": f"Bearer {token or self.token}"}, timeout=30)

    def close(self) -> None:
        # Both told at once, then waited for: each shuts down while the other does.
        for process in (self.daemon, self.server):
            if process is not None and process.poll() is None:
                with contextlib.suppress(OSError):
                    process.send_signal(signal.SIGTERM)
        for stop in (self.stop_daemon, self.stop_server):
            try:
                stop()
            except Exception:
                pass

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_nobody() -> list[str] | None:
    """The command prefix that runs a program as nobody (65534), or None where that cannot run ours
    (no setpriv, or this installation not readable by nobody). Root reads any file whatever its
    mode, so a test of what an unreadable file does runs the daemon as nobody."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*prefix, _bin("dataerai"), "--version"], capture_output=True, timeout=60).returncode:
        return None
    return prefix


def make_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes (incompressible, quick to make)."""
    import random

    rng = random.Random(seed)
    block = rng.randbytes(1 << 20)
    with open(path, "wb") as f:
        left = size
        i = 0
        while left > 0:
            # Vary each MiB so no two parts are alike.
            chunk = (i.to_bytes(8, "little") + block[8:])[: min(left, len(block))]
            f.write(chunk)
            left -= len(chunk)
            i += 1
    return path
