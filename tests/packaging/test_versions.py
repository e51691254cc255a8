"""One version for the three distributions, written once (client/dataerai/_version.py).

packaging/README.md says why it lives there and how the daemon and the server pin the SDK.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import requires, version
from pathlib import Path

import dataerai
import dataerai_server
from packaging.requirements import Requirement
from packaging.version import Version

import dataeraid

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
VERSION_FILE = ROOT / "client" / "dataerai" / "_version.py"
#: Each distribution's pyproject.toml, by the distribution's name.
PYPROJECTS = {
    "dataerai-transfer-sdk": ROOT / "client" / "pyproject.toml",
    "dataerai-transfer": ROOT / "pyproject.toml",
    "dataerai-server": ROOT / "server" / "pyproject.toml",
}


def test_the_version_is_a_normalised_version() -> None:
    assert str(Version(dataerai.__version__)) == dataerai.__version__


def test_every_pyproject_reads_the_one_version_file() -> None:
    for name, path in PYPROJECTS.items():
        pyproject = tomllib.loads(path.read_text())
        assert pyproject["project"]["name"] == name
        assert "version" not in pyproject["project"], path
        assert "version" in pyproject["project"]["dynamic"], path
        assert (path.parent / pyproject["tool"]["hatch"]["version"]["path"]).resolve() == VERSION_FILE, path


def test_the_daemon_and_the_server_report_the_sdk_version() -> None:
    assert dataeraid.__version__ == dataerai_server.__version__ == dataerai.__version__


def test_the_installed_metadata_pins_the_sdk_at_that_version() -> None:
    # The editable installs of .venv/ (make reinstalls them when the version file changes).
    for name in PYPROJECTS:
        assert version(name) == dataerai.__version__, name
    for name in ("dataerai-transfer", "dataerai-server"):
        pins = [Requirement(line) for line in requires(name) or []]
        sdk = [pin for pin in pins if pin.name == "dataerai-transfer-sdk"]
        assert [str(pin.specifier) for pin in sdk] == [f"=={dataerai.__version__}"], name


def test_each_sdist_carries_the_same_pinning_hook() -> None:
    # Two copies only because each sdist must build on its own.
    assert (ROOT / "hatch_build.py").read_bytes() == (ROOT / "server" / "hatch_build.py").read_bytes()
    assert re.search(r'^SDK = "dataerai-transfer-sdk"$', (ROOT / "hatch_build.py").read_text(), re.MULTILINE)
