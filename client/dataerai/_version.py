"""The version of all three distributions (SDK, daemon, server), written here and nowhere else.

Each ``pyproject.toml`` reads it (hatch's ``[tool.hatch.version]``), the daemon and the
server import it from here, and their ``hatch_build.py`` pins this SDK at it
(``packaging/README.md`` says why).
"""

__version__ = "0.1.0"
