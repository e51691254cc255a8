"""``dataerai service``: the user units written for this installation, enabled, and taken away again.

The command runs as a real process (this virtual environment's ``dataerai``).
This machine has no systemd running, so ``systemctl`` is a stand-in put first
on ``PATH``: it records its arguments and answers as systemctl does, enabling a
unit by the same link in ``<target>.wants/``, or failing as ``systemctl --user``
does where no user manager answers. Where ``systemd-analyze`` exists, the
written units are also checked by systemd's own parser.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dataeraid.systemd_units import (
    MARKER,
    SERVICE_UNIT,
    SOCKET_UNIT,
    UnsuitableExecutable,
    exec_path,
    render,
    units_dir,
)

REPO = Path(__file__).resolve().parents[2]
DATAERAI = Path(sys.executable).parent / "dataerai"  # the installation under test

STAND_IN = textwrap.dedent('''\
    #!{python}
    """A stand-in for systemctl: records its arguments, answers as `systemctl --user` does."""
    import json, os, sys
    from pathlib import Path

    args = sys.argv[1:]
    with open(os.environ["FAKE_SYSTEMCTL_LOG"], "a") as log:
        log.write(json.dumps(args) + "\\n")
    mode = os.environ.get("FAKE_SYSTEMCTL_MODE", "ok")
    if args[:1] != ["--user"]:
        sys.exit("the stand-in only knows --user")
    verb, rest = args[1], args[2:]
    if mode == "no_bus":
        print("Failed to connect to bus: No medium found", file=sys.stderr)
        sys.exit(1)
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.environ["HOME"], ".config")
    unit_dir = Path(config) / "systemd" / "user"
    active_file = Path(os.environ["FAKE_SYSTEMCTL_ACTIVE"])
    active = set(active_file.read_text().split()) if active_file.exists() else set()
    now = "--now" in rest
    units = [a for a in rest if not a.startswith("-")]

    def wanted_by(unit):
        lines = (unit_dir / unit).read_text().splitlines()
        return [line.split("=", 1)[1].strip() for line in lines if line.startswith("WantedBy=")]

    def links(unit):
        return [unit_dir / f"{target}.wants" / unit for target in wanted_by(unit)]

    status = 0
    if verb == "show":
        print("252.38-1~deb12u1")
    elif verb == "daemon-reload":
        pass
    elif verb == "enable" and mode == "enable_fails":
        print("Failed to enable unit: Access denied", file=sys.stderr)
        status = 1
    elif verb == "is-failed":
        failed = mode == "start_fails" and "dataerai-transfer.service" in units and (
            unit_dir / "default.target.wants" / "dataerai-transfer.service").is_symlink()
        print("failed" if failed else "inactive")
        status = 0 if failed else 1
    elif verb in ("enable", "disable"):
        for unit in units:
            if not (unit_dir / unit).is_file():
                print(f"Failed to {verb} unit: Unit file {unit} does not exist.", file=sys.stderr)
                sys.exit(1)
        for unit in units:
            for link in links(unit):
                if verb == "enable" and not link.is_symlink():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(unit_dir / unit)
                    print(f"Created symlink {link} → {unit_dir / unit}.", file=sys.stderr)
                elif verb == "disable" and link.is_symlink():
                    link.unlink()
                    print(f'Removed "{link}".', file=sys.stderr)
            if now:
                (active.add if verb == "enable" else active.discard)(unit)
        active_file.write_text(" ".join(sorted(active)))
        if mode == "start_fails" and verb == "enable" and now:
            print("Job for dataerai-transfer.service failed because the control process exited with error code.",
                  file=sys.stderr)
            print('See "systemctl --user status dataerai-transfer.service" and '
                  '"journalctl --user -xeu dataerai-transfer.service" for details.', file=sys.stderr)
            status = 1
    elif verb == "is-enabled":
        for unit in units:
            if not (unit_dir / unit).is_file():
                print(f"Failed to get unit file state for {unit}: No such file or directory", file=sys.stderr)
                sys.exit(1)
            enabled = all(link.is_symlink() for link in links(unit))
            print("enabled" if enabled else "disabled")
            status = status or (0 if enabled else 1)
    elif verb == "is-active":
        for unit in units:
            print("active" if unit in active else "inactive")
            status = status or (0 if unit in active else 3)
    else:
        print(f"Unknown command verb {verb}.", file=sys.stderr)
        status = 1
    sys.exit(status)
''')


@dataclass
class Machine:
    """The stand-in systemctl's directory and records, and the user's unit directory."""

    bin_dir: Path
    log: Path
    active: Path
    unit_dir: Path

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def forget_calls(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture
def machine(isolated_env: Path) -> Machine:
    bin_dir = isolated_env / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "systemctl"
    stand_in.write_text(STAND_IN.replace("{python}", sys.executable, 1))
    stand_in.chmod(0o755)
    unit_dir = Path(os.environ["XDG_CONFIG_HOME"]) / "systemd" / "user"
    return Machine(bin_dir, isolated_env / "systemctl.log", isolated_env / "systemctl.active", unit_dir)


def run(machine: Machine, *args: str, mode: str = "ok", program: list[str] | None = None,
        path: str | None = None, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """``dataerai ARGS`` as a process, with only the stand-in systemctl on PATH (or ``path``)."""
    environment = {**os.environ, "PATH": str(machine.bin_dir) if path is None else path,
                   "FAKE_SYSTEMCTL_LOG": str(machine.log), "FAKE_SYSTEMCTL_ACTIVE": str(machine.active),
                   "FAKE_SYSTEMCTL_MODE": mode}
    return subprocess.run([*(program or [str(DATAERAI)]), *args], env=environment, capture_output=True, text=True,
                          timeout=120, umask=umask)


def answer(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def error(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    result: dict[str, Any] = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    return result


def template(name: str) -> str:
    return (REPO / "systemd" / name).read_text()


def expected_service(exec_start: str) -> str:
    lines = template(SERVICE_UNIT).splitlines(keepends=True)
    replaced = [f"ExecStart={exec_start}\n" if line.startswith("ExecStart=") else line for line in lines]
    return MARKER + "\n" + "".join(replaced)


PROBE = ["--user", "show", "--property=Version", "--value"]


# --- install --------------------------------------------------------------------


def test_install_writes_both_units_for_this_installation_and_enables_both(machine: Machine) -> None:
    result = answer(run(machine, "service", "install", "--json"))

    socket_unit, service_unit = machine.unit_dir / SOCKET_UNIT, machine.unit_dir / SERVICE_UNIT
    assert socket_unit.read_text() == MARKER + "\n" + template(SOCKET_UNIT)
    assert service_unit.read_text() == expected_service(f"{DATAERAI} daemon run")
    assert DATAERAI.is_absolute() and os.access(DATAERAI, os.X_OK)
    assert machine.calls() == [PROBE, ["--user", "daemon-reload"], ["--user", "enable", SOCKET_UNIT, SERVICE_UNIT]]
    assert (machine.unit_dir / "sockets.target.wants" / SOCKET_UNIT).is_symlink()
    # Started at login (at boot when the account lingers), the daemon goes on with its queue unasked.
    assert (machine.unit_dir / "default.target.wants" / SERVICE_UNIT).is_symlink()
    assert not machine.active.read_text()  # enabled, not started

    assert result["executable"] == str(DATAERAI)
    assert result["exec_start"] == f"{DATAERAI} daemon run"
    assert result["unit_dir"] == str(machine.unit_dir)
    assert result["systemd_version"] == "252.38-1~deb12u1"
    assert result["units"] == [
        {"name": SOCKET_UNIT, "path": str(socket_unit), "action": "written"},
        {"name": SERVICE_UNIT, "path": str(service_unit), "action": "written"},
    ]
    assert result["ran"] == [["systemctl", *call] for call in machine.calls()]
    assert result["started"] is False
    for unit in (socket_unit, service_unit):
        assert stat.S_IMODE(unit.stat().st_mode) == 0o600


def test_install_says_in_words_what_it_wrote_and_ran(machine: Machine) -> None:
    done = run(machine, "service", "install")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"written {machine.unit_dir / SOCKET_UNIT}",
        f"written {machine.unit_dir / SERVICE_UNIT}",
        f"ExecStart={DATAERAI} daemon run",
        "ran systemctl --user daemon-reload",
        f"ran systemctl --user enable {SOCKET_UNIT} {SERVICE_UNIT}",
        f"{SOCKET_UNIT} and {SERVICE_UNIT} are enabled: they start from your next login "
        f"(now: `systemctl --user start {SOCKET_UNIT} {SERVICE_UNIT}`)",
    ]


def test_install_now_also_starts_the_socket_and_the_daemon(machine: Machine) -> None:
    result = answer(run(machine, "service", "install", "--now", "--json"))
    assert machine.calls()[-2:] == [["--user", "daemon-reload"],
                                    ["--user", "enable", "--now", SOCKET_UNIT, SERVICE_UNIT]]
    assert machine.active.read_text() == " ".join(sorted([SOCKET_UNIT, SERVICE_UNIT]))
    assert result["started"] is True


def test_a_second_install_changes_nothing_and_is_harmless(machine: Machine) -> None:
    answer(run(machine, "service", "install", "--now", "--json"))
    before = {name: (machine.unit_dir / name).stat() for name in (SOCKET_UNIT, SERVICE_UNIT)}
    machine.forget_calls()

    again = answer(run(machine, "service", "install", "--now", "--json"))

    assert [u["action"] for u in again["units"]] == ["unchanged", "unchanged"]
    for name, was in before.items():
        now = (machine.unit_dir / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (was.st_ino, was.st_mtime_ns)
    # Asked whether the socket is its own (it is: active), then reloaded and enabled again, which is idempotent.
    assert machine.calls() == [PROBE, ["--user", "is-active", SOCKET_UNIT], ["--user", "daemon-reload"],
                               ["--user", "enable", "--now", SOCKET_UNIT, SERVICE_UNIT]]


def test_install_rewrites_its_own_unit_of_another_installation(machine: Machine) -> None:
    answer(run(machine, "service", "install", "--json"))
    service_unit = machine.unit_dir / SERVICE_UNIT
    service_unit.write_text(service_unit.read_text().replace(str(DATAERAI), "/opt/old-venv/bin/dataerai"))

    result = answer(run(machine, "service", "install", "--json"))

    assert [u["action"] for u in result["units"]] == ["unchanged", "replaced"]
    assert service_unit.read_text() == expected_service(f"{DATAERAI} daemon run")


def test_a_unit_file_it_did_not_write_is_refused_without_force(machine: Machine) -> None:
    machine.unit_dir.mkdir(parents=True)
    hand_copy = machine.unit_dir / SERVICE_UNIT
    hand_copy.write_text(template(SERVICE_UNIT))  # the old way: copied from systemd/ by hand

    refused = error(run(machine, "service", "install", "--json"))

    assert refused["code"] == "conflict"
    assert str(hand_copy) in refused["message"] and "--force" in refused["message"]
    assert hand_copy.read_text() == template(SERVICE_UNIT)
    assert not (machine.unit_dir / SOCKET_UNIT).exists()
    assert machine.calls() == []

    forced = answer(run(machine, "service", "install", "--force", "--json"))
    assert [u["action"] for u in forced["units"]] == ["written", "replaced"]
    assert hand_copy.read_text() == expected_service(f"{DATAERAI} daemon run")


def test_force_replaces_a_link_not_the_file_it_names(machine: Machine, isolated_env: Path) -> None:
    elsewhere = isolated_env / "elsewhere.socket"
    elsewhere.write_text("[Socket]\nListenStream=/tmp/other.sock\n")
    machine.unit_dir.mkdir(parents=True)
    (machine.unit_dir / SOCKET_UNIT).symlink_to(elsewhere)  # as `systemctl --user link` leaves it

    assert error(run(machine, "service", "install", "--json"))["code"] == "conflict"
    answer(run(machine, "service", "install", "--force", "--json"))

    assert not (machine.unit_dir / SOCKET_UNIT).is_symlink()
    assert (machine.unit_dir / SOCKET_UNIT).read_text().startswith(MARKER)
    assert elsewhere.read_text() == "[Socket]\nListenStream=/tmp/other.sock\n"


def test_files_are_private_whatever_the_umask(machine: Machine) -> None:
    assert not Path(os.environ["XDG_CONFIG_HOME"]).exists()
    answer(run(machine, "service", "install", "--json", umask=0))
    for unit in (SOCKET_UNIT, SERVICE_UNIT):
        assert stat.S_IMODE((machine.unit_dir / unit).stat().st_mode) == 0o600
    for directory in (machine.unit_dir, machine.unit_dir.parent, machine.unit_dir.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert [p.name for p in machine.unit_dir.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_an_existing_directory_keeps_its_mode(machine: Machine) -> None:
    machine.unit_dir.mkdir(parents=True, mode=0o755)
    machine.unit_dir.chmod(0o755)
    answer(run(machine, "service", "install", "--json", umask=0))
    assert stat.S_IMODE(machine.unit_dir.stat().st_mode) == 0o755


def test_run_as_a_module_it_names_the_installations_executable(machine: Machine) -> None:
    result = answer(run(machine, "service", "install", "--json", program=[sys.executable, "-m", "dataeraid.cli"]))
    assert result["executable"] == str(DATAERAI)
    assert (machine.unit_dir / SERVICE_UNIT).read_text() == expected_service(f"{DATAERAI} daemon run")


def test_a_path_with_spaces_and_percent_signs_is_quoted_for_systemd(machine: Machine, isolated_env: Path) -> None:
    odd = isolated_env / "my tools 100%"
    odd.mkdir()
    (odd / "dataerai").symlink_to(DATAERAI)  # run by that name: the unit names the link, not what it points to

    result = answer(run(machine, "service", "install", "--json", program=[str(odd / "dataerai")]))

    quoted = '"' + str(odd / "dataerai").replace("%", "%%") + '" daemon run'
    assert result["executable"] == str(odd / "dataerai")
    assert (machine.unit_dir / SERVICE_UNIT).read_text() == expected_service(quoted)
    check_with_systemd(machine)


def test_a_path_systemd_cannot_run_is_refused_before_anything_is_written(machine: Machine,
                                                                          isolated_env: Path) -> None:
    odd = isolated_env / "it's here"
    odd.mkdir()
    (odd / "dataerai").symlink_to(DATAERAI)

    refused = error(run(machine, "service", "install", "--json", program=[str(odd / "dataerai")]))

    assert refused["code"] == "invalid_argument"
    assert "systemd refuses" in refused["message"]
    assert not machine.unit_dir.exists()
    assert machine.calls() == []


def test_now_is_refused_while_a_daemon_not_started_by_the_socket_serves_its_path(machine: Machine,
                                                                                 fake_daemon: Any) -> None:
    fake_daemon.on("daemon.status", lambda _params: {"version": "0.1.0", "pid": 4242, "jobs": {}})

    refused = error(run(machine, "service", "install", "--now", "--json"))

    assert refused["code"] == "conflict"
    assert "pid 4242" in refused["message"] and "kill 4242" in refused["message"]
    assert not machine.unit_dir.exists()
    assert not [call for call in machine.calls() if "enable" in call]
    answer(run(machine, "service", "install", "--json"))  # without --now: the socket starts at the next login


def test_a_failed_enable_says_what_was_written(machine: Machine) -> None:
    refused = error(run(machine, "service", "install", "--json", mode="enable_fails"))
    assert refused["code"] == "systemd_unavailable"
    assert ("`systemctl --user enable dataerai-transfer.socket dataerai-transfer.service` failed: "
            "Failed to enable unit: Access denied") in refused["message"]
    assert str(machine.unit_dir / SOCKET_UNIT) in refused["message"]
    assert str(machine.unit_dir / SERVICE_UNIT) in refused["message"]
    assert refused["ran"][-1] == ["systemctl", "--user", "enable", SOCKET_UNIT, SERVICE_UNIT]
    assert (machine.unit_dir / SERVICE_UNIT).exists()


def test_a_daemon_that_does_not_start_is_service_failed_not_a_missing_systemd(machine: Machine) -> None:
    # systemd answered, enabled both units and ran the daemon, which refused to start (a bad
    # config.toml, say): the journal has the reason, and nothing about systemd needs fixing.
    refused = error(run(machine, "service", "install", "--now", "--json", mode="start_fails"))
    assert refused["code"] == "service_failed"
    assert refused["message"].startswith(
        f"the units are installed and enabled, but {SERVICE_UNIT} did not start (See \"systemctl --user status")
    assert f"`journalctl --user -u {SERVICE_UNIT}` says why" in refused["message"]
    assert refused["ran"][-2:] == [["systemctl", "--user", "enable", "--now", SOCKET_UNIT, SERVICE_UNIT],
                                   ["systemctl", "--user", "is-failed", SERVICE_UNIT]]
    assert (machine.unit_dir / "default.target.wants" / SERVICE_UNIT).is_symlink()
    # Without --now nothing is started, so the same systemd is no failure at all.
    assert answer(run(machine, "service", "install", "--json", mode="start_fails"))["started"] is False


# --- where there is no systemd ------------------------------------------------------------


def test_no_systemctl_says_so_and_writes_nothing(machine: Machine, isolated_env: Path) -> None:
    empty = isolated_env / "empty"
    empty.mkdir()

    refused = error(run(machine, "service", "install", "--json", path=str(empty)))

    assert refused["code"] == "systemd_unavailable"
    assert "no `systemctl`" in refused["message"] and "nothing was written" in refused["message"]
    assert "`dataerai daemon run`" in refused["message"]
    assert not machine.unit_dir.exists()

    words = run(machine, "service", "install", path=str(empty))
    assert words.returncode == 1
    assert words.stderr.startswith("error[systemd_unavailable]: there is no `systemctl` on PATH")


def test_no_user_manager_says_so_and_writes_nothing(machine: Machine) -> None:
    refused = error(run(machine, "service", "install", "--now", "--json", mode="no_bus"))

    assert refused["code"] == "systemd_unavailable"
    assert "cannot reach your user manager: Failed to connect to bus: No medium found" in refused["message"]
    assert "loginctl enable-linger" in refused["message"] and "nothing was written" in refused["message"]
    assert "XDG_RUNTIME_DIR" not in refused["message"]  # it is set here
    assert refused["ran"] == [["systemctl", *PROBE]]
    assert not machine.unit_dir.exists()
    assert machine.calls() == [PROBE]


def test_without_a_runtime_directory_it_names_the_one_to_set(machine: Machine) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    done = subprocess.run([str(DATAERAI), "service", "install", "--json"], capture_output=True, text=True,
                          timeout=120, env={**environment, "PATH": str(machine.bin_dir),
                                            "FAKE_SYSTEMCTL_LOG": str(machine.log),
                                            "FAKE_SYSTEMCTL_ACTIVE": str(machine.active),
                                            "FAKE_SYSTEMCTL_MODE": "no_bus"})
    refused = error(done)
    assert "XDG_RUNTIME_DIR is not set" in refused["message"]
    assert f"/run/user/{os.getuid()}" in refused["message"]


@pytest.mark.skipif(shutil.which("systemctl", path="/usr/bin:/bin") is None, reason="no systemctl on this machine")
def test_the_real_systemctl_without_a_user_manager(isolated_env: Path) -> None:
    """What this machine's own systemctl makes of it where no user manager listens: the same refusal.

    The runtime directory is the test's own and the session bus is unset (systemctl falls back to it), so a
    machine that does run systemd refuses too, and its user manager is never touched.
    """
    environment = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    done = subprocess.run([str(DATAERAI), "service", "install", "--json"], capture_output=True, text=True,
                          timeout=120, env={**environment, "PATH": "/usr/bin:/bin"})
    refused = error(done)
    assert refused["code"] == "systemd_unavailable"
    assert "Failed to connect to bus" in refused["message"]
    assert not (Path(os.environ["XDG_CONFIG_HOME"]) / "systemd").exists()


# --- uninstall ---------------------------------------------------------------------


def test_uninstall_disables_and_removes_exactly_its_own(machine: Machine) -> None:
    answer(run(machine, "service", "install", "--now", "--json"))
    neighbour = machine.unit_dir / "backup.service"
    neighbour.write_text("[Service]\nExecStart=/usr/bin/true\n")
    drop_in = machine.unit_dir / f"{SERVICE_UNIT}.d" / "override.conf"
    drop_in.parent.mkdir()
    drop_in.write_text("[Service]\nEnvironment=DATAERAI_LOG_LEVEL=debug\n")
    machine.forget_calls()

    result = answer(run(machine, "service", "uninstall", "--json"))

    assert machine.calls() == [PROBE, ["--user", "disable", "--now", SOCKET_UNIT, SERVICE_UNIT],
                               ["--user", "daemon-reload"]]
    assert not (machine.unit_dir / SOCKET_UNIT).exists() and not (machine.unit_dir / SERVICE_UNIT).exists()
    assert not (machine.unit_dir / "sockets.target.wants" / SOCKET_UNIT).is_symlink()
    assert machine.active.read_text() == ""
    assert neighbour.exists() and drop_in.exists()  # not its own: the user's
    assert [(u["name"], u["action"]) for u in result["units"]] == [(SOCKET_UNIT, "removed"), (SERVICE_UNIT, "removed")]
    assert result["ran"] == [["systemctl", *call] for call in machine.calls()]


def test_uninstall_in_words(machine: Machine) -> None:
    answer(run(machine, "service", "install", "--json"))
    done = run(machine, "service", "uninstall")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"ran systemctl --user disable --now {SOCKET_UNIT} {SERVICE_UNIT}",
        f"removed {machine.unit_dir / SOCKET_UNIT}",
        f"removed {machine.unit_dir / SERVICE_UNIT}",
        "ran systemctl --user daemon-reload",
    ]


def test_uninstall_with_nothing_installed_does_nothing(machine: Machine) -> None:
    result = answer(run(machine, "service", "uninstall", "--json"))
    assert [u["action"] for u in result["units"]] == ["absent", "absent"]
    assert result["ran"] == [] and machine.calls() == []
    words = run(machine, "service", "uninstall")
    assert words.returncode == 0 and "nothing to remove" in words.stdout


def test_uninstall_refuses_a_unit_it_did_not_write_without_force(machine: Machine) -> None:
    answer(run(machine, "service", "install", "--json"))
    (machine.unit_dir / SOCKET_UNIT).write_text(template(SOCKET_UNIT))  # replaced by hand since
    machine.forget_calls()

    refused = error(run(machine, "service", "uninstall", "--json"))

    assert refused["code"] == "conflict" and str(machine.unit_dir / SOCKET_UNIT) in refused["message"]
    assert (machine.unit_dir / SOCKET_UNIT).exists() and (machine.unit_dir / SERVICE_UNIT).exists()
    assert machine.calls() == []
    answer(run(machine, "service", "uninstall", "--force", "--json"))
    assert not (machine.unit_dir / SOCKET_UNIT).exists() and not (machine.unit_dir / SERVICE_UNIT).exists()


def test_uninstall_without_a_user_manager_removes_nothing(machine: Machine) -> None:
    answer(run(machine, "service", "install", "--json"))
    refused = error(run(machine, "service", "uninstall", "--json", mode="no_bus"))
    assert refused["code"] == "systemd_unavailable" and "nothing was removed" in refused["message"]
    assert (machine.unit_dir / SOCKET_UNIT).exists() and (machine.unit_dir / SERVICE_UNIT).exists()


# --- status ----------------------------------------------------------------------


def test_status_shows_what_is_installed_enabled_and_active(machine: Machine) -> None:
    before = answer(run(machine, "service", "status", "--json"))
    assert [u["installed"] for u in before["units"]] == ["absent", "absent"]

    answer(run(machine, "service", "install", "--now", "--json"))
    after = answer(run(machine, "service", "status", "--json"))

    assert after["systemd"] == {"available": True, "version": "252.38-1~deb12u1", "reason": None}
    socket_unit, service_unit = after["units"]
    assert socket_unit == {"name": SOCKET_UNIT, "path": str(machine.unit_dir / SOCKET_UNIT), "installed": "ours",
                           "exec_start": None, "enabled": "enabled", "active": "active"}
    assert service_unit["exec_start"] == f"{DATAERAI} daemon run"
    assert (service_unit["enabled"], service_unit["active"]) == ("enabled", "active")

    words = run(machine, "service", "status")
    assert f"{SOCKET_UNIT}: installed by dataerai service install, enabled, active" in words.stdout
    assert f"{SERVICE_UNIT}: installed by dataerai service install, enabled, active" in words.stdout


def test_status_without_a_user_manager_still_shows_the_files(machine: Machine) -> None:
    answer(run(machine, "service", "install", "--json"))
    result = answer(run(machine, "service", "status", "--json", mode="no_bus"))
    assert result["systemd"]["available"] is False
    assert "Failed to connect to bus" in result["systemd"]["reason"]
    assert [(u["installed"], u["enabled"]) for u in result["units"]] == [("ours", None), ("ours", None)]


# --- the units themselves ------------------------------------------------------------


def check_with_systemd(machine: Machine) -> None:
    """Where systemd's tools exist, its own parser accepts the written units and finds their executable."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    done = subprocess.run([analyze, "--user", "verify", str(machine.unit_dir / SOCKET_UNIT),
                           str(machine.unit_dir / SERVICE_UNIT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not executable" not in done.stderr and "special characters" not in done.stderr


def test_systemd_accepts_the_written_units(machine: Machine) -> None:
    answer(run(machine, "service", "install", "--json"))
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze on this machine")
    check_with_systemd(machine)


def test_the_templates_come_from_the_repositorys_systemd_directory_in_a_source_tree() -> None:
    assert units_dir() == REPO / "systemd"


def test_render_changes_only_the_marker_and_exec_start(tmp_path: Path) -> None:
    units = render("/opt/dataerai/bin/dataerai")
    assert units[SOCKET_UNIT] == MARKER + "\n" + template(SOCKET_UNIT)
    assert units[SERVICE_UNIT] == expected_service("/opt/dataerai/bin/dataerai daemon run")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / SOCKET_UNIT).write_text(template(SOCKET_UNIT))
    for lines, text in ((2, template(SERVICE_UNIT).replace("ExecStart=", "ExecStart=/bin/true\nExecStart=", 1)),
                        (0, template(SERVICE_UNIT).replace("ExecStart=", "ExecStartPre=", 1))):
        (broken / SERVICE_UNIT).write_text(text)
        with pytest.raises(RuntimeError, match=f"has {lines} ExecStart= lines, not one"):
            render("/x/dataerai", broken)


@pytest.mark.parametrize(("path", "written"), [
    ("/home/ada/.local/bin/dataerai", "/home/ada/.local/bin/dataerai"),
    ("/home/ada/my venv/bin/dataerai", '"/home/ada/my venv/bin/dataerai"'),
    ("/srv/50%/dataerai", '"/srv/50%%/dataerai"'),
    ("/srv/$HOME/dataerai", '"/srv/$HOME/dataerai"'),  # no variable expansion in the executable's path
])
def test_exec_path(path: str, written: str) -> None:
    assert exec_path(path) == written


@pytest.mark.parametrize("path", ["dataerai", "./bin/dataerai", "/a/../dataerai", "//a/dataerai", '/a"b/dataerai',
                                  "/a'b/dataerai", "/a\\b/dataerai", "/a\nb/dataerai", "/a\tb/dataerai"])
def test_exec_path_refuses_what_systemd_cannot_run(path: str) -> None:
    with pytest.raises(UnsuitableExecutable):
        exec_path(path)
