"""The systemd user units, from their one copy in ``systemd/``, made for one installation.

``systemd/`` at the top of the repository holds the socket and service units;
the daemon's wheel carries it as ``dataeraid/_systemd`` (as it carries
``migrations/``), and ``units_dir`` finds either. ``render`` makes what
``dataerai service install`` writes: each template with ``MARKER`` as its first
line, by which ``uninstall`` knows the file as its own, and the service's one
``ExecStart=`` line naming the given executable. Nothing here writes a file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

SOCKET_UNIT: Final = "dataerai-transfer.socket"
SERVICE_UNIT: Final = "dataerai-transfer.service"
#: In the order they are written: the socket names the service, and is the one enabled.
UNITS: Final = (SOCKET_UNIT, SERVICE_UNIT)

#: The first line of every unit ``dataerai service install`` writes; a file without it is someone else's.
#: Keep it as it is: it is how the units of earlier installs are known as ours.
MARKER: Final = "# Written by `dataerai service install`; `dataerai service uninstall` removes it."

_EXEC_START: Final = re.compile(r"^ExecStart=(.*)$", re.MULTILINE)
#: What an unquoted ExecStart path may hold; anything else is written in double quotes.
_PLAIN: Final = re.compile(r"[A-Za-z0-9/._+,:=@~-]+")


class UnsuitableExecutable(ValueError):
    """The executable's path is one systemd cannot run from a unit file; the message says why."""


def units_dir() -> Path:
    """The unit templates: inside the wheel, or the repository's ``systemd/``."""
    here = Path(__file__).resolve().parent
    packaged = here / "_systemd"
    return packaged if packaged.is_dir() else here.parent / "systemd"


def exec_path(executable: str) -> str:
    """``executable`` as the first word of an ``ExecStart=`` line (systemd.service(5), "Command lines").

    ``%`` starts a specifier in a unit file, so it is doubled; a path with any
    character beyond the plain ones (a space, say) is put in double quotes. The
    path must be absolute and normalized, and free of the characters systemd
    refuses in an executable's name even quoted (quotes, backslashes, control
    characters): ``UnsuitableExecutable`` otherwise.
    """
    if not os.path.isabs(executable) or executable.startswith("//") or os.path.normpath(executable) != executable:
        raise UnsuitableExecutable(f"{executable!r} is not an absolute, normalized path")
    refused = sorted({c for c in executable if c in "\"'\\" or ord(c) < 0x20 or ord(c) == 0x7F})
    if refused:
        shown = " ".join(repr(c) for c in refused)
        raise UnsuitableExecutable(f"{executable!r} holds {shown}, which systemd refuses in an executable's path")
    escaped = executable.replace("%", "%%")
    return escaped if _PLAIN.fullmatch(executable) else f'"{escaped}"'


def exec_start_of(text: str) -> str | None:
    """The command of a unit's last ``ExecStart=`` line, as written there (None when it has none)."""
    found = _EXEC_START.findall(text)
    return found[-1] if found else None


def is_ours(text: str) -> bool:
    return text.split("\n", 1)[0] == MARKER


def render(executable: str, templates: Path | None = None) -> dict[str, str]:
    """Each unit's name and the text ``dataerai service install`` writes for ``executable``.

    Raises ``UnsuitableExecutable`` (see ``exec_path``), and ``RuntimeError`` when
    the service template does not have exactly one ``ExecStart=`` line (a broken
    installation: the line it has is the one replaced).
    """
    source = templates if templates is not None else units_dir()
    command = f"{exec_path(executable)} daemon run"
    rendered: dict[str, str] = {}
    for name in UNITS:
        text = (source / name).read_text(encoding="utf-8")
        if name == SERVICE_UNIT:
            lines = _EXEC_START.findall(text)
            if len(lines) != 1:
                raise RuntimeError(f"{source / name} has {len(lines)} ExecStart= lines, not one")
            text = _EXEC_START.sub(lambda _m: f"ExecStart={command}", text)
        rendered[name] = f"{MARKER}\n{text}"
    return rendered
