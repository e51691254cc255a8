"""Keeping the server's files to its own user: what it creates, and what it finds.

Everything the server writes is private: directories 0700, files 0600, whatever the
umask it was started with. :func:`private_umask` makes that hold for every file any
library creates in this process (SQLite's database, its ``-wal`` and ``-shm``, temp
files); the storage also passes those modes itself, so it stays private when used as
a library.

What it finds already there is checked before anything is opened (docs/server.md,
"Private files"): a database other users can read gives away the URL-signing secret
(anyone holding it can mint a URL to read any content or write any part), so the
server refuses to start on one, naming the path, its mode and the ``chmod`` that fixes
it. A directory other users can list only shows names (the files in it are 0600, and
the database is checked on its own), and packaging tools create state directories
0755 by default, so for directories it warns and starts.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url

#: The umask the server runs with: nothing for group or others.
PRIVATE_UMASK: Final = 0o077
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
#: Files beside a SQLite database that hold its pages too.
SQLITE_COMPANIONS: Final = ("-wal", "-shm", "-journal")


def private_umask() -> None:
    """From now on, files and directories this process creates are its user's alone."""
    os.umask(PRIVATE_UMASK)


@dataclass(frozen=True)
class Exposure:
    """A path that group or other users can reach, why that matters, and whether to refuse."""

    path: Path
    mode: int
    fatal: bool
    why: str

    @property
    def chmod(self) -> str:
        return "700" if stat.S_ISDIR(self.mode) else "600"

    def warning(self) -> str:
        """One line: the path, its mode, why it matters and the command that fixes it."""
        return f"{self.path} is mode {stat.S_IMODE(self.mode):04o}, open to other users ({self.why}); " \
            f"run `chmod {self.chmod} {self.path}`"


def refusal(found: list[Exposure]) -> str | None:
    """The one line to refuse with, if any of ``found`` is fatal: every such path with its mode,
    and one ``chmod`` that fixes them all (a database and its ``-wal``/``-shm`` go together)."""
    fatal = [e for e in found if e.fatal]
    if not fatal:
        return None
    paths = ", ".join(f"{e.path} (mode {stat.S_IMODE(e.mode):04o})" for e in fatal)
    command = f"chmod {fatal[0].chmod} " + " ".join(str(e.path) for e in fatal)
    return f"refusing to start: {paths} open to other users ({fatal[0].why}); run `{command}`"


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite URL, or None (another database, or SQLite in memory)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def exposures(data_dir: Path | None, database_url: str | None) -> list[Exposure]:
    """What already exists of the server's files and is open to other users."""
    found: list[Exposure] = []

    def look(path: Path, *, fatal: bool, why: str) -> None:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return
        if stat.S_IMODE(mode) & 0o077:
            found.append(Exposure(path, mode, fatal, why))

    if data_dir is not None:
        look(data_dir, fatal=False, why="they can list what it holds")
        look(data_dir / "objects", fatal=False, why="they can list the stored objects' names")
    database = sqlite_path(database_url) if database_url else None
    if database is not None:
        secret = "it holds the URL-signing secret and the token hashes"
        look(database, fatal=True, why=secret)
        for suffix in SQLITE_COMPANIONS:
            look(database.with_name(database.name + suffix), fatal=True, why=secret)
    return found


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700, whatever the umask; an existing one is left as it is."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist (SQLite takes an empty file as a new database,
    and gives its ``-wal`` and ``-shm`` the database file's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)
