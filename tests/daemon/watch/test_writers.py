"""Whether a file is still open for writing, seen with real processes holding real
files: through a read lease, and through /proc when a lease cannot be had."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dataeraid.watch import writers
from dataeraid.watch.writers import open_for_writing, writers_scan

# Becoming another user inside the process, not with subprocess's user=: the interpreter
# may live where that user cannot execute it (pyenv under /root). A process that changed
# its user is not dumpable, which would close its /proc/PID/fd even to that user: set it back.
BECOME = textwrap.dedent("""
    import ctypes, os
    def become(uid):
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
""")
HOLD = BECOME + textwrap.dedent("""
    import os, sys
    if len(sys.argv) > 3:
        become(int(sys.argv[3]))
    fd = os.open(sys.argv[1], {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}[sys.argv[2]])
    print("open", flush=True)
    sys.stdin.readline()
""")


@contextmanager
def held(path: Path, mode: str, user: int | None = None) -> Iterator[None]:
    """Another process (of ``user``) holds ``path`` open (``r``, ``w`` or ``rw``) until the block ends."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode, *([] if user is None else [str(user)])],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == "open\n"
        yield
    finally:
        process.stdin.close()  # its readline returns: it exits, closing the file
        assert process.wait() == 0


@pytest.fixture(params=["lease", "proc"])
def method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs twice: as it happens here (leases work on this local filesystem),
    and with the lease step unable to tell, as on NFS or for another user's file."""
    if request.param == "proc":
        monkeypatch.setattr(writers, "_lease_verdict", lambda path: None)
    return str(request.param)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    made = {}
    for name in ("written", "updated", "read", "untouched"):
        made[name] = tmp_path / f"{name}.dat"
        made[name].write_bytes(b"0123456789")
    return made


def test_a_file_held_for_writing_is_seen_until_its_writer_closes_it(method: str, files: dict[str, Path]) -> None:
    path = files["written"]
    with held(path, "w"):
        assert open_for_writing(str(path)) is True
    assert open_for_writing(str(path)) is False


def test_a_file_held_for_reading_and_writing_is_being_written(method: str, files: dict[str, Path]) -> None:
    with held(files["updated"], "rw"):
        assert open_for_writing(str(files["updated"])) is True


def test_a_file_only_read_by_another_process_is_not_being_written(method: str, files: dict[str, Path]) -> None:
    with held(files["read"], "r"):
        assert open_for_writing(str(files["read"])) is False


def test_a_writer_is_seen_after_the_file_was_renamed(method: str, tmp_path: Path) -> None:
    before, after = tmp_path / "scan.part", tmp_path / "scan.tif"
    before.write_bytes(b"")
    with held(before, "w"):
        before.rename(after)
        assert open_for_writing(str(after)) is True


def test_a_missing_file_is_an_error_not_an_answer(method: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_for_writing(str(tmp_path / "never-made"))


def test_one_scan_finds_the_files_being_written_among_many(method: str, files: dict[str, Path],
                                                           tmp_path: Path) -> None:
    paths = [str(p) for p in files.values()] + [str(tmp_path / "vanished.dat")]
    with held(files["written"], "w"), held(files["updated"], "rw"), held(files["read"], "r"):
        assert writers_scan(paths) == {str(files["written"]), str(files["updated"])}
    assert writers_scan(paths) == set()


def test_the_proc_scan_is_one_pass_for_many_files(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers, "_lease_verdict", lambda path: None)
    scans = []
    scan_proc = writers._scan_proc

    def counted(*args: object) -> object:
        scans.append(args)
        return scan_proc(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(writers, "_scan_proc", counted)
    with held(files["written"], "w"):
        assert writers_scan([str(p) for p in files.values()]) == {str(files["written"])}
    assert len(scans) == 1


BREAK_THE_LEASE = textwrap.dedent("""
    import fcntl, os, signal, sys
    from dataeraid.watch import writers

    path = sys.argv[1]
    writers.LEASE_BREAK_SIGNAL = getattr(signal, sys.argv[2])
    real_fcntl = fcntl.fcntl

    def fcntl_then_open_for_writing(fd, cmd, arg=0):
        result = real_fcntl(fd, cmd, arg)
        if cmd == fcntl.F_SETLEASE and arg == fcntl.F_RDLCK:
            try:  # another descriptor opened for writing while the lease is held: the kernel breaks it
                os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except BlockingIOError:
                print("lease broken", flush=True)
        return result

    writers.fcntl.fcntl = fcntl_then_open_for_writing
    print(writers.open_for_writing(path), flush=True)
""")


@pytest.mark.parametrize(("signal_name", "returncode"), [("SIGURG", 0), ("SIGIO", -signal.SIGIO)])
def test_a_writer_arriving_while_the_lease_is_held_does_not_end_the_process(
        tmp_path: Path, signal_name: str, returncode: int) -> None:
    # SIGIO, the kernel's default for a lease break, would end the daemon: that case is
    # the proof that this test can see the race at all.
    path = tmp_path / "racing.dat"
    path.write_bytes(b"")
    run = subprocess.run([sys.executable, "-c", BREAK_THE_LEASE, str(path), signal_name],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == returncode, run.stderr
    if returncode == 0:
        assert run.stdout == "lease broken\nFalse\n"


AS_ANOTHER_USER = BECOME + textwrap.dedent("""
    import json, sys
    from dataeraid.watch import writers
    become(int(sys.argv[4]))
    roots, own, untouched = sys.argv[1:4]
    answers = {"root's file": writers.open_for_writing(roots), "own file, lease": writers.open_for_writing(own)}
    writers._lease_verdict = lambda path: None
    answers["own file, proc"] = writers.open_for_writing(own)
    answers["untouched own file, proc"] = writers.open_for_writing(untouched)
    answers["scan, proc"] = sorted(writers.writers_scan([roots, own, untouched]))
    print(json.dumps(answers))
""")
NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run processes as another user")
def test_a_user_who_cannot_see_the_owners_processes_cannot_know() -> None:
    # Not below tmp_path: pytest keeps that private to root.
    directory = Path(tempfile.mkdtemp(prefix="dataerai-writers-"))
    try:
        directory.chmod(0o755)
        roots, own, untouched = (directory / name for name in ("roots.dat", "own.dat", "untouched.dat"))
        for path in (roots, own, untouched):
            path.write_bytes(b"")
            path.chmod(0o644)
        os.chown(own, NOBODY, NOBODY)
        os.chown(untouched, NOBODY, NOBODY)
        with held(roots, "w"), held(own, "w", user=NOBODY):
            run = subprocess.run([sys.executable, "-c", AS_ANOTHER_USER, str(roots), str(own), str(untouched),
                                  str(NOBODY)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == {
            # No lease on another user's file, and its owner's processes are closed to us.
            "root's file": None,
            "own file, lease": True,
            # Our own processes can be read: a writer among them is seen, and when there
            # is none, having read them all is what makes the answer "no".
            "own file, proc": True,
            "untouched own file, proc": False,
            "scan, proc": [str(own)],
        }
    finally:
        shutil.rmtree(directory)
