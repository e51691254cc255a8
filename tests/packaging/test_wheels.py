"""The built wheels, installed where the repository cannot be seen, run a whole stack.

The wheels are built as `make dist` builds them (tools/artifacts.py: each sdist, then its wheel
from the sdist), or taken from ``$DATAERAI_TEST_DIST`` when `.ci/run` has just built them
with `make wheelhouse`. They go into a fresh virtual environment with ``pip install
--no-index`` from a wheelhouse, as docs/install.md tells a user to, from a temporary working
directory and with an environment that names nothing of this checkout. Then that
environment's ``dataerai`` and ``dataerai-server`` run a server, a daemon, an upload and a
download, and the bytes come back with the same SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import artifacts
import dataerai
import pytest
from stack import Stack, make_file

# tools/artifacts.py runs `python -m build`: without it (the dev extra) nothing can be built here.
pytest.importorskip("build", reason="the `build` package is missing: `make venv` installs the dev extra")

ROOT = Path(__file__).resolve().parents[2]
VERSION = dataerai.__version__

#: Files each wheel must carry besides Python modules: what the code reads at run time.
PACKAGE_DATA = {
    "dataerai-transfer-sdk": ["dataerai/py.typed"],
    "dataerai-transfer": [
        "dataeraid/_migrations/env.py",
        "dataeraid/_migrations/script.py.mako",
        "dataeraid/_migrations/versions/0001_queue.py",
        "dataeraid/_systemd/dataerai-transfer.service",
        "dataeraid/_systemd/dataerai-transfer.socket",
    ],
    "dataerai-server": [
        "dataerai_server/migrations/env.py",
        "dataerai_server/migrations/script.py.mako",
        "dataerai_server/migrations/versions/0001_initial.py",
    ],
}


def _run(args: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    """Run, and on failure fail the test with what the command said."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **options)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def _built_and_wheelhouse(work: Path) -> tuple[dict[str, tuple[Path, Path]], Path]:
    """The sdists and wheels, and a wheelhouse: CI's, or built here."""
    given = os.environ.get("DATAERAI_TEST_DIST")
    if given:
        out = Path(given).resolve()
        built = artifacts.built_in(out)
        house = out / "wheelhouse" if (out / "wheelhouse").is_dir() else artifacts.wheelhouse(out)
        return built, house
    out = work / "dist"
    try:
        built = artifacts.build(out)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building the distributions failed: {exc}")
    return built, artifacts.wheelhouse(out)


def _check_wheel(name: str, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        stem = name.replace("-", "_")
        metadata = archive.read(f"{stem}-{VERSION}.dist-info/METADATA").decode()
    missing = [path for path in PACKAGE_DATA[name] if path not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    assert f"\nVersion: {VERSION}\n" in metadata
    if name != "dataerai-transfer-sdk":
        assert f"\nRequires-Dist: dataerai-transfer-sdk=={VERSION}\n" in metadata


def test_the_wheels_install_and_run_a_stack_without_the_repository(tmp_path_factory: pytest.TempPathFactory) -> None:
    work = tmp_path_factory.mktemp("wh")  # short: the stack's socket path must stay under 108 bytes
    built, house = _built_and_wheelhouse(work)
    for name, (sdist, wheel) in built.items():
        assert sdist.name == f"{name.replace('-', '_')}-{VERSION}.tar.gz"
        _check_wheel(name, wheel)
    assert {w.name for _, w in built.values()} <= {w.name for w in house.glob("*.whl")}

    # Outside the checkout, with nothing in the environment that leads back to it.
    outside = work / "o"
    (outside / "home").mkdir(parents=True)
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(outside / "home"), "LANG": "C.UTF-8",
             "TMPDIR": str(outside)}
    venv = outside / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=outside, env=clean)
    # No configuration file either: the wheelhouse alone must hold everything.
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
          "--no-index", "--find-links", str(house), "dataerai-transfer", "dataerai-server"],
         cwd=outside, env={**clean, "PIP_CONFIG_FILE": os.devnull})

    where = json.loads(_run([str(venv / "bin" / "python"), "-c", (
        "import json, dataerai, dataeraid, dataerai_server, dataeraid.store;"
        "print(json.dumps([dataerai.__file__, dataeraid.__file__, dataerai_server.__file__,"
        " str(dataeraid.store.migrations_dir())]))"
    )], cwd=outside, env=clean).stdout)
    for path in where:
        assert Path(path).is_relative_to(venv), where
        assert not Path(path).is_relative_to(ROOT), where
    assert where[3].endswith("dataeraid/_migrations")

    bin_dir = venv / "bin"
    cli_version = _run([str(bin_dir / "dataerai"), "--version"], cwd=outside, env=clean).stdout
    assert cli_version.strip() == f"dataerai, version {VERSION}"
    server_version = _run([str(bin_dir / "dataerai-server"), "--version"], cwd=outside, env=clean).stdout
    assert server_version.strip() == f"dataerai-server, version {VERSION}"

    with Stack(outside / "s", bin_dir=bin_dir, environ=clean) as stack:
        stack.start_server()
        stack.login(stack.add_user("ada@example.org"))
        daemon = stack.start_daemon()
        # The daemon runs on the new environment's Python, not this checkout's.
        assert Path(f"/proc/{daemon.pid}/cmdline").read_bytes().split(b"\0")[0] == bytes(bin_dir / "python")
        status = json.loads(stack.cli("daemon", "status", "--json").stdout)
        assert status["version"] == VERSION
        project = json.loads(stack.cli("project", "create", "From the wheels", "--json").stdout)
        source = make_file(outside / "run42.bin", 3 * 1024 * 1024 + 17)
        up = json.loads(stack.cli("upload", str(source), "--project", project["project_id"],
                                  "--chunk-size-mb", "1", "--json").stdout)
        expected = hashlib.sha256(source.read_bytes()).hexdigest()
        assert up["sha256"] == expected
        down = json.loads(stack.cli("download", up["asset_id"], "--dest", str(outside / "back"), "--json").stdout)
        back = Path(down["files"][0]["local_path"])
        assert back.is_relative_to(outside / "back")
        assert hashlib.sha256(back.read_bytes()).hexdigest() == expected
