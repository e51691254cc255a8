"""The Debian packages hold what they promise, and what they hold runs a stack from wherever they are unpacked.

The packages are built as `make deb` builds them (tools/deb.py, from a wheelhouse built as
tests/packaging/test_wheels.py builds one), or taken from ``$DATAERAI_TEST_DIST`` when
`.ci/run` has just built them there. Their contents are checked from ``dpkg-deb``'s listing
and fields; then both are unpacked into one temporary root (``dpkg-deb -x``, as dpkg would
place them, without installing), and that root's environments run ``--version``, a server,
a daemon and an upload, from a temporary directory with an environment that names nothing of
this checkout. The commands' ``#!`` names ``/opt/dataerai/bin/python``, which exists only on a
machine where the package is installed, so each runs as ``ROOT/opt/.../bin/python
ROOT/opt/.../bin/COMMAND``: the packaged script, on the packaged environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import artifacts
import dataerai
import deb
import pytest
from stack import Stack, make_file

from dataeraid.systemd_units import render

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None,
                                reason="dpkg-deb is missing: the Debian packages are built and read on Debian only")

VERSION = dataerai.__version__


def _run(args: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    """Run, and on failure fail the test with what the command said."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **options)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def _packages(work: Path) -> dict[str, Path]:
    """The two .debs: CI's, or built here from CI's wheelhouse or one built here."""
    given = os.environ.get("DATAERAI_TEST_DIST")
    if given and list(Path(given).glob("*.deb")):
        return deb.built_in(Path(given).resolve())
    if shutil.which("dpkg-shlibdeps") is None:
        pytest.skip("dpkg-shlibdeps is missing (`apt install dpkg-dev`): the packages cannot be built here")
    if given:
        house = Path(given).resolve() / "wheelhouse"
    else:
        pytest.importorskip("build", reason="the `build` package is missing: `make venv` installs the dev extra")
        artifacts.build(work / "dist")
        house = artifacts.wheelhouse(work / "dist")
    return deb.build(house, work / "debs")


def _listing(package: Path) -> dict[str, tuple[str, str, str]]:
    """``dpkg-deb -c``: each path (without the leading ``.``) and its mode, owner and link target."""
    entries = {}
    for line in _run(["dpkg-deb", "-c", str(package)]).stdout.splitlines():
        mode, owner, _size, _day, _time, rest = line.split(None, 5)
        path, _, target = rest.partition(" -> ")
        entries[path[1:].rstrip("/") or "/"] = (mode, owner, target)
    return entries


def _fields(package: Path) -> dict[str, str]:
    text = _run(["dpkg-deb", "-f", str(package)]).stdout
    return dict(re.findall(r"^([A-Za-z-]+): (.*)$", text, re.MULTILINE))


def _check_transfer(package: Path, python: str) -> None:
    fields = _fields(package)
    assert fields["Package"] == "dataerai-transfer" and fields["Version"] == VERSION
    # Not `all`: the environment holds compiled modules for this architecture.
    assert fields["Architecture"] == _run(["dpkg", "--print-architecture"]).stdout.strip()
    depends = fields["Depends"].split(", ")
    assert depends[0] == python, fields["Depends"]  # the venv's interpreter, by its minor version
    assert any(d.startswith("libc6 (>= ") for d in depends), fields["Depends"]  # dpkg-shlibdeps ran
    entries = _listing(package)
    assert {owner for _mode, owner, _target in entries.values()} == {"root/root"}
    assert entries["/usr/bin/dataerai"][2] == "/opt/dataerai/bin/dataerai"
    assert entries[f"/opt/dataerai/bin/{python}"][2] == f"/usr/bin/{python}"
    assert entries["/opt/dataerai/bin/dataerai"][0] == "-rwxr-xr-x"
    for name in ("dataerai-transfer.socket", "dataerai-transfer.service"):
        assert entries[f"/usr/lib/systemd/user/{name}"][0] == "-rw-r--r--"
    for path in ("/usr/share/doc/dataerai-transfer/copyright", "/usr/share/doc/dataerai-transfer/changelog.gz",
                 "/usr/share/man/man1/dataerai.1.gz", "/usr/share/lintian/overrides/dataerai-transfer"):
        assert path in entries
    site = f"/opt/dataerai/lib/{python}/site-packages"
    for module in ("dataerai/__init__.py", "dataeraid/__init__.py", "dataeraid/_migrations/env.py"):
        assert f"{site}/{module}" in entries
    assert not any("dataerai_server" in path for path in entries)  # the server is its own package
    assert not any("__pycache__" in path or path.endswith(".pyc") for path in entries)  # postinst compiles
    assert not any(path.startswith(f"{site}/pip/") for path in entries)  # dpkg owns the environment, not pip


def _check_server(package: Path, python: str) -> None:
    fields = _fields(package)
    assert fields["Package"] == "dataerai-server" and fields["Version"] == VERSION
    assert fields["Depends"].split(", ")[0] == python and "adduser" in fields["Depends"]
    entries = _listing(package)
    assert entries["/usr/bin/dataerai-server"][2] == "/opt/dataerai-server/bin/dataerai-server"
    assert entries["/usr/lib/systemd/system/dataerai-server.service"][0] == "-rw-r--r--"
    assert entries["/etc/dataerai-server/environment"][0] == "-rw-------"  # it may hold the S3 keys
    assert not any(path.startswith("/var/lib") for path in entries)  # postinst makes the data directory
    assert not any("__pycache__" in path for path in entries)
    assert f"/opt/dataerai-server/lib/{python}/site-packages/dataerai_server/__init__.py" in entries


def _check_maintainer_scripts(package: Path, into: Path) -> None:
    into.parent.mkdir(exist_ok=True)
    _run(["dpkg-deb", "-e", str(package), str(into)])
    for script in ("postinst", "prerm", "postrm"):
        assert (into / script).stat().st_mode & 0o777 == 0o755
        _run(["sh", "-n", str(into / script)])


def _check_with_systemd(root: Path, work: Path) -> None:
    """Where systemd's tools exist, its own parser accepts the units: all it may miss is their
    executable in /usr/bin, which exists only where the package is installed."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    runtime = work / "rt"
    runtime.mkdir(mode=0o700)
    user = root / "usr/lib/systemd/user"
    checks = [
        ([analyze, "--user", "--man=no", "verify", str(user / "dataerai-transfer.socket"),
          str(user / "dataerai-transfer.service")], "/usr/bin/dataerai"),
        ([analyze, "--man=no", "verify", str(root / "usr/lib/systemd/system/dataerai-server.service")],
         "/usr/bin/dataerai-server"),
    ]
    for args, command in checks:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
        said = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(said) == 1 and f"Command {command} is not executable" in said[0], done.stderr


def test_the_debian_packages_hold_what_they_promise_and_run_unpacked(tmp_path_factory: pytest.TempPathFactory) -> None:
    work = tmp_path_factory.mktemp("deb")  # short: the stack's socket path must stay under 108 bytes
    debs = _packages(work)
    architecture = _run(["dpkg", "--print-architecture"]).stdout.strip()
    for name, package in debs.items():
        assert package.name == f"{name}_{VERSION}_{architecture}.deb"
    # The interpreter the environments link to (/usr/bin/python3 by its versioned name), and its package.
    python = deb.debian_python("/usr/bin/python3")[1]
    _check_transfer(debs["dataerai-transfer"], python)
    _check_server(debs["dataerai-server"], python)
    for name, package in debs.items():
        _check_maintainer_scripts(package, work / "control" / name)
    assert "conffiles" not in os.listdir(work / "control" / "dataerai-transfer")
    assert (work / "control" / "dataerai-server" / "conffiles").read_text() == "/etc/dataerai-server/environment\n"

    root = work / "r"
    for package in debs.values():
        _run(["dpkg-deb", "-x", str(package), str(root)])

    # The user units are the repository's, rendered for /usr/bin/dataerai; only their first line,
    # the marker of `dataerai service install`, is the package's own.
    for name, text in render("/usr/bin/dataerai").items():
        packaged = (root / "usr/lib/systemd/user" / name).read_text()
        assert packaged.split("\n", 1) == [deb.PACKAGED_UNIT_HEADER, text.split("\n", 1)[1]]
    service = (root / "usr/lib/systemd/user/dataerai-transfer.service").read_text()
    assert "\nExecStart=/usr/bin/dataerai daemon run\n" in service
    unit = (root / "usr/lib/systemd/system/dataerai-server.service").read_text()
    for line in ("User=dataerai-server", "StateDirectory=dataerai-server", "StateDirectoryMode=0700",
                 "EnvironmentFile=-/etc/dataerai-server/environment",
                 "ExecStart=/usr/bin/dataerai-server run --data-dir /var/lib/dataerai-server $DATAERAI_SERVER_OPTIONS",
                 "WantedBy=multi-user.target"):
        assert f"\n{line}\n" in unit

    _check_with_systemd(root, work)

    # The environments were moved to /opt in words: nothing names where they were built.
    for venv in ("opt/dataerai", "opt/dataerai-server"):
        config = (root / venv / "pyvenv.cfg").read_text()
        assert f"\nexecutable = /usr/bin/{python}\n" in config and f" /{venv}\n" in config, config
        for script in (root / venv / "bin").iterdir():
            if script.is_file() and not script.is_symlink():
                assert script.read_text().startswith(f"#!/{venv}/bin/python\n"), script

    # Outside the checkout, with nothing in the environment that leads back to it.
    outside = work / "o"
    (outside / "home").mkdir(parents=True)
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(outside / "home"), "LANG": "C.UTF-8",
             "TMPDIR": str(outside)}
    bin_dir = outside / "bin"
    bin_dir.mkdir()
    for venv, command in (("opt/dataerai", "dataerai"), ("opt/dataerai-server", "dataerai-server")):
        wrapper = bin_dir / command
        wrapper.write_text(f'#!/bin/sh\nexec "{root / venv}/bin/python" "{root / venv}/bin/{command}" "$@"\n')
        wrapper.chmod(0o755)
        assert _run([str(wrapper), "--version"], cwd=outside, env=clean).stdout.strip() == \
            f"{command}, version {VERSION}"
    where = json.loads(_run([str(root / "opt/dataerai/bin/python"), "-c", (
        "import json, dataerai, dataeraid, dataeraid.store, sqlalchemy.engine._row_cy as compiled;"
        "print(json.dumps([dataerai.__file__, dataeraid.__file__, str(dataeraid.store.migrations_dir()),"
        " compiled.__file__]))"
    )], cwd=outside, env=clean).stdout)
    for path in where:
        assert Path(path).is_relative_to(root / "opt/dataerai"), where  # not the checkout's, not /opt's
    assert where[2].endswith("dataeraid/_migrations")

    with Stack(outside / "s", bin_dir=bin_dir, environ=clean) as stack:
        stack.start_server()
        stack.login(stack.add_user("ada@example.org"))
        daemon = stack.start_daemon()
        assert stack.server is not None
        # The processes run on the unpacked environments' interpreters.
        for process, venv in ((daemon, "opt/dataerai"), (stack.server, "opt/dataerai-server")):
            argv0 = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[0]
            assert argv0 == bytes(root / venv / "bin/python")
        status = json.loads(stack.cli("daemon", "status", "--json").stdout)
        assert status["version"] == VERSION
        project = json.loads(stack.cli("project", "create", "From the package", "--json").stdout)
        source = make_file(outside / "run7.bin", 2 * 1024 * 1024 + 5)
        up = json.loads(stack.cli("upload", str(source), "--project", project["project_id"],
                                  "--chunk-size-mb", "1", "--json").stdout)
        assert up["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
