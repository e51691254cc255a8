"""Is a file still open for writing by some process?

A watch folder must not upload a file its writer has not finished: ``IN_CLOSE_WRITE``
says one writer closed it, not that no other still holds it open (a logger that
reopens, a copy tool that closes a second descriptor later). This asks the kernel.

Two ways to see it, best first:

1. A read lease (``fcntl F_SETLEASE F_RDLCK`` on a descriptor opened read-only). The
   kernel refuses it with EAGAIN exactly when the file is open for writing anywhere:
   any process of any user, a writable shared mapping included. Five system calls,
   no scan. It works only on local filesystems (NFS, SMB, FUSE and a few others give
   EINVAL, as does ``fs.leases-enable = 0``) and for files this user owns (or with
   CAP_LEASE; EACCES otherwise). Opening the file read-only raises ``IN_OPEN`` and
   ``IN_CLOSE_NOWRITE``, which the notifier does not watch, never ``IN_CLOSE_WRITE``.

   While we hold the lease (two ``fcntl`` calls long), a process opening the file for
   writing breaks it and the kernel signals us: SIGIO by default, whose default action
   ends the process. So before taking the lease, ``F_SETSIG`` makes that signal
   SIGURG, whose default action is to ignore it. The opener waits until we release the
   lease, microseconds later.

2. ``/proc``: every process's ``/proc/PID/fd/N`` that resolves to the file's
   ``(st_dev, st_ino)`` (renamed and deleted-but-open files included), and the access
   mode in ``/proc/PID/fdinfo/N``'s ``flags:`` line (octal): O_WRONLY or O_RDWR means
   writing. Processes of other users cannot be read unless we are root; they are
   skipped. A writer that maps the file without keeping a descriptor is not seen here.

The answer of :func:`open_for_writing`: ``True`` when a writer was seen; ``False`` when
none was, either from the lease or from a scan that could read every process of the
file's owner; ``None`` when it cannot be known (a scan that could not read some of
the owner's processes, or no ``/proc``). The rule trusts that a file is written by its
owner's processes: another user's process (root's included) writing into it is seen
by a lease always, and by /proc only when we are root.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["open_for_writing", "writers_scan", "writing_verdicts"]

PROC = "/proc"

# Not on every platform's fcntl module (Linux only).
_F_SETLEASE: int | None = getattr(fcntl, "F_SETLEASE", None)
_F_SETSIG: int | None = getattr(fcntl, "F_SETSIG", None)
#: The signal a broken lease sends us instead of SIGIO: ignored by default.
LEASE_BREAK_SIGNAL = signal.SIGURG

_FileKey = tuple[int, int]  # (st_dev, st_ino)


def open_for_writing(path: str) -> bool | None:
    """Whether some process has ``path`` open for writing: True or False when it can be
    seen, None when it cannot be known (see the module's docstring).

    Raises FileNotFoundError (or NotADirectoryError) when ``path`` does not exist.
    Blocks (system calls, and a scan of /proc when no lease can be taken): call it
    from a worker thread."""
    verdict = _lease_verdict(path)
    if verdict is not None:
        return verdict
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError:
        return None
    key = (stat.st_dev, stat.st_ino)
    scan = _scan_proc({key})
    if scan is None:
        return None
    if key in scan.writers:
        return True
    return None if stat.st_uid in scan.unreadable_uids else False


def writers_scan(paths: Iterable[str]) -> set[str]:
    """The paths among ``paths`` that some process has open for writing, as far as can
    be seen: a lease for each file first, then one pass over /proc for all the files a
    lease cannot judge, however many. Paths that no longer exist are left out, and so
    are files nobody could be seen writing even when not every process could be read:
    to tell "no" from "cannot know" for one file, ask :func:`open_for_writing`.

    Blocks: call it from a worker thread."""
    writing: set[str] = set()
    by_key: dict[_FileKey, list[str]] = {}
    for path in paths:
        try:
            verdict = _lease_verdict(path)
            if verdict is None:
                stat = os.stat(path)
                by_key.setdefault((stat.st_dev, stat.st_ino), []).append(path)
        except OSError:  # gone, or not reachable at all
            continue
        if verdict:
            writing.add(path)
    if by_key:
        scan = _scan_proc(by_key)
        if scan is not None:
            for key in scan.writers:
                writing.update(by_key[key])
    return writing


def _lease_verdict(path: str) -> bool | None:
    """True: open for writing somewhere; False: nowhere; None: a lease cannot tell here.
    Raises FileNotFoundError / NotADirectoryError when ``path`` does not exist."""
    if _F_SETLEASE is None or _F_SETSIG is None:
        return None
    try:
        # O_NONBLOCK: should someone hold a write lease, fail now instead of waiting for
        # them to give it up (EWOULDBLOCK, and we fall back to /proc).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError:  # unreadable (EACCES), leased by a writer (EWOULDBLOCK), ...
        return None
    try:
        try:
            fcntl.fcntl(fd, _F_SETSIG, LEASE_BREAK_SIGNAL)
        except OSError:  # no lease without that: a broken one would end the process
            return None
        try:
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EBUSY):
                return True
            return None  # EACCES/EPERM: not ours; EINVAL: no leases on this filesystem
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


@dataclass
class _ProcScan:
    #: The files (of those asked about) that some readable process has open for writing.
    writers: set[_FileKey] = field(default_factory=set)
    #: The users owning processes whose descriptors could not be read.
    unreadable_uids: set[int] = field(default_factory=set)


def _scan_proc(targets: Collection[_FileKey], proc: str = PROC) -> _ProcScan | None:
    """One pass over every process's descriptors; None when there is no /proc."""
    scan = _ProcScan()
    try:
        processes = os.scandir(proc)
    except OSError:
        return None
    with processes:
        for process in processes:
            if not process.name.isdigit():
                continue
            fd_dir = f"{proc}/{process.name}/fd"
            try:
                fds = os.listdir(fd_dir)
            except PermissionError:
                try:
                    scan.unreadable_uids.add(process.stat().st_uid)
                except OSError:
                    pass  # exited meanwhile
                continue
            except OSError:  # exited meanwhile
                continue
            for fd in fds:
                try:
                    stat = os.stat(f"{fd_dir}/{fd}")
                except OSError:  # closed meanwhile, or a file we may not stat
                    continue
                key = (stat.st_dev, stat.st_ino)
                if key in targets and key not in scan.writers and _writes(f"{proc}/{process.name}/fdinfo/{fd}"):
                    scan.writers.add(key)
    return scan


def _writes(fdinfo: str) -> bool:
    """Whether the descriptor ``/proc/PID/fdinfo/N`` describes was opened for writing."""
    try:
        with open(fdinfo) as file:
            for line in file:
                if line.startswith("flags:"):
                    return (int(line.split()[1], 8) & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):  # closed meanwhile
        pass
    return False


def writing_verdicts(paths: Sequence[str]) -> dict[str, bool | None]:
    """:func:`open_for_writing` for many files at once: a lease for each, then one pass over
    /proc for all that a lease cannot judge (not one pass per file). Paths that no longer
    exist are left out. Blocks: call it from a worker thread."""
    verdicts: dict[str, bool | None] = {}
    undecided: dict[_FileKey, list[tuple[str, int]]] = {}
    for path in paths:
        try:
            verdict = _lease_verdict(path)
            if verdict is None:
                st = os.stat(path)
                undecided.setdefault((st.st_dev, st.st_ino), []).append((path, st.st_uid))
                continue
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            verdict = None
        verdicts[path] = verdict
    if undecided:
        scan = _scan_proc(undecided)
        for key, named in undecided.items():
            for path, uid in named:
                if scan is None:
                    verdicts[path] = None
                elif key in scan.writers:
                    verdicts[path] = True
                else:
                    verdicts[path] = None if uid in scan.unreadable_uids else False
    return verdicts
