"""`make deb`: the Debian packages for instrument PCs and repository hosts, from the wheelhouse.

``python tools/deb.py OUT`` builds, from ``OUT/wheelhouse`` (``make wheelhouse``), two
packages into ``OUT``:

- ``dataerai-transfer``: the daemon, the CLI and the SDK in a virtual environment at
  ``/opt/dataerai``, ``/usr/bin/dataerai``, and the systemd user units in
  ``/usr/lib/systemd/user`` with ``ExecStart=/usr/bin/dataerai daemon run``;
- ``dataerai-server``: the server in ``/opt/dataerai-server``, ``/usr/bin/dataerai-server``,
  and a system unit that runs it as the ``dataerai-server`` account.

Each package is a tree prepared here and packed by ``dpkg-deb --build`` (packaging/README.md
says why not dh-virtualenv). The environment is made with the Debian interpreter
(``/usr/bin/python3``, by its versioned name) in a staging directory, filled with ``pip
install --no-index`` from the wheelhouse, then moved to its final path in words: the
staging path in its scripts and ``pyvenv.cfg`` becomes ``/opt/...``, and a check that no file
names the staging directory any more stops the build otherwise. It holds no bytecode (that
would name the staging path too); each package's postinst compiles it in place. What is
the same in both packages comes from code here; what differs (control fields, maintainer
scripts, the server's unit and conffile, lintian overrides) from ``packaging/deb/PACKAGE/``.

Needs ``dpkg-deb`` (dpkg) and dpkg-dev: ``dpkg-shlibdeps`` computes the shared library
dependencies of the compiled wheels, binutils' ``strip`` strips them. tests/packaging/test_deb.py
builds with the same functions.
"""

from __future__ import annotations

import argparse
import email.message
import email.parser
import gzip
import hashlib
import json
import os
import re
import shutil
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "packaging" / "deb"

#: Who the packages name as their maintainer, unless DEBFULLNAME and DEBEMAIL say (as for dch).
DEFAULT_MAINTAINER = "Dataerai maintainers <dataerai@example.org>"


@dataclass(frozen=True)
class Command:
    """A command the package puts in ``/usr/bin``, and the click object its man page is made from."""

    name: str
    click_object: str  # module:attribute


@dataclass(frozen=True)
class Package:
    name: str
    #: Where its environment lives on the target.
    venv: str
    #: What pip installs into the environment (each pulls in the SDK).
    distribution: str
    command: Command


PACKAGES = (
    Package("dataerai-transfer", "/opt/dataerai", "dataerai-transfer", Command("dataerai", "dataeraid.cli:cli")),
    Package("dataerai-server", "/opt/dataerai-server", "dataerai-server",
            Command("dataerai-server", "dataerai_server.cli:main")),
)

#: Files of packaging/deb/PACKAGE/files that are not 0644.
MODES = {"etc/dataerai-server/environment": 0o600}

#: Where the user units go, and what their first line says instead of the marker of ``dataerai
#: service install``: the package's units are not that command's to replace or remove.
USER_UNIT_DIR = "usr/lib/systemd/user"
PACKAGED_UNIT_HEADER = "# Installed by the dataerai-transfer package; site settings go in a drop-in."

_SCRIPTS = ("postinst", "prerm", "postrm")
#: Shell written once and put into each maintainer script where it says so, as debhelper puts its
#: snippets at ``#DEBHELPER#``: a maintainer script must stand alone (postrm runs with the package's
#: files gone), and the same function in three files would drift.
_SNIPPETS = {"#IN_EACH_USER_MANAGER#": TEMPLATES / "in_each_user_manager.sh"}


def maintainer_script(text: str) -> str:
    """``text`` with each snippet's placeholder line replaced by the snippet."""
    for placeholder, source in _SNIPPETS.items():
        text = text.replace(placeholder + "\n", source.read_text(encoding="utf-8"))
    if "#IN_" in text:
        raise RuntimeError(f"a maintainer script names a snippet that does not exist: {text}")
    return text


def _run(args: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    """Run; on failure raise with what the command said."""
    done = subprocess.run(args, capture_output=True, text=True, **options)  # type: ignore[call-overload]
    if done.returncode != 0:
        said = (done.stdout + done.stderr)[-4000:]  # the end, where the reason is
        raise RuntimeError(f"{args[0]} exited {done.returncode}:\n{said}")
    return done  # type: ignore[no-any-return]


def deb_name(package: str, version: str, architecture: str) -> str:
    return f"{package}_{version}_{architecture}.deb"


def built_in(out: Path) -> dict[str, Path]:
    """Each package's .deb in ``out``; an error unless there is exactly one of each."""
    found = {}
    for package in PACKAGES:
        debs = sorted(out.glob(f"{package.name}_*.deb"))
        if len(debs) != 1:
            raise RuntimeError(f"{out}: want one .deb of {package.name}, found {debs}")
        found[package.name] = debs[0]
    return found


# --- the environment -----------------------------------------------------------------


def debian_python(python: str) -> tuple[str, str]:
    """The interpreter the environments are made on, by its versioned path, and its package.

    ``/usr/bin/python3`` is a link to ``python3.X`` (the package of that name). The
    environment links to the versioned name, so it keeps working as long as that package is
    installed, whichever Python is the default, and the package depends on exactly that one.
    """
    version = _run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    versioned = Path(python).resolve().parent / f"python{version}"
    if not str(versioned).startswith("/usr/bin/"):
        raise RuntimeError(f"{python} is not the Debian interpreter (/usr/bin/python3): {versioned}")
    return str(versioned), f"python{version}"


def wheel_version(house: Path) -> str:
    """The version of the daemon's wheel in the wheelhouse: the version the packages get."""
    wheels = sorted(house.glob("dataerai_transfer-*-py3-none-any.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"{house}: want one dataerai_transfer wheel, found {wheels} (run `make wheelhouse`)")
    return wheels[0].name.split("-")[1]


def make_environment(tree: Path, package: Package, python: str, house: Path, version: str) -> Path:
    """The package's environment in ``tree`` at ``tree/opt/...``, moved to its final path in words."""
    staged = tree / package.venv.lstrip("/")
    _run([python, "-m", "venv", "--without-pip", str(staged)])
    # This process's pip, run on the environment's interpreter (--python): the environment needs
    # no pip of its own, and the package ships none (dpkg, not pip, owns what is in it).
    _run([sys.executable, "-m", "pip", "--python", str(staged / "bin" / "python"), "install", "--quiet",
          "--no-index", "--no-compile", "--find-links", str(house), f"{package.distribution}=={version}"],
         env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    for activate in staged.glob("bin/[Aa]ctivate*"):
        activate.unlink()  # the commands are in /usr/bin; nobody activates a package's environment
    for empty in sorted(staged.glob("include/**"), reverse=True):  # for C headers no wheel here installs
        empty.rmdir()
    old, new = str(staged).encode(), package.venv.encode()
    for path in [*staged.glob("bin/*"), staged / "pyvenv.cfg"]:
        if path.is_file() and not path.is_symlink():
            path.write_bytes(path.read_bytes().replace(old, new))
    for path in tree.rglob("*"):
        if path.is_dir() and path.name == "__pycache__":
            shutil.rmtree(path)
    left = [str(p) for p in staged.rglob("*") if p.is_file() and not p.is_symlink() and old in p.read_bytes()]
    if left:
        raise RuntimeError(f"files still name the staging directory {staged}: {left}")
    return staged


def site_packages(staged: Path) -> Path:
    (site,) = staged.glob("lib/python3.*/site-packages")
    return site


# --- what goes beside the environment ------------------------------------------------


def user_units(site: Path) -> dict[str, str]:
    """The daemon's user units as the package installs them: rendered by ``dataeraid.systemd_units.render``
    from the templates in the wheel going into the package, with ``ExecStart=/usr/bin/dataerai daemon run``."""
    from dataeraid.systemd_units import MARKER, render

    units = {}
    for name, text in render("/usr/bin/dataerai", templates=site / "dataeraid" / "_systemd").items():
        first, rest = text.split("\n", 1)
        assert first == MARKER
        units[name] = f"{PACKAGED_UNIT_HEADER}\n{rest}"
    return units


_HELP_PAGES = r"""
import importlib, json, sys
import click
module, attribute = sys.argv[1].split(":")
root = getattr(importlib.import_module(module), attribute)
pages = []
def walk(command, name, parent):
    context = click.Context(command, info_name=name, parent=parent, terminal_width=72, max_content_width=72)
    pages.append([context.command_path, command.get_short_help_str(limit=150), command.get_help(context)])
    if isinstance(command, click.Group):
        for sub in command.list_commands(context):
            found = command.get_command(context, sub)
            if found is not None and not found.hidden:
                walk(found, sub, context)
walk(root, sys.argv[2], None)
json.dump(pages, sys.stdout)
"""


def _roff(text: str) -> list[str]:
    """Lines of preformatted text as roff: backslashes and hyphens escaped, no line read as a request."""
    out = []
    for line in text.splitlines():
        line = line.replace("\\", "\\e").replace("-", "\\-")
        out.append(f"\\&{line}" if line.startswith((".", "'")) else line)
    return out


def man_page(staged: Path, package: Package, version: str, date: str) -> str:
    """The command's man page: every command's ``--help``, as click prints it, under its name."""
    command = package.command
    pages = json.loads(_run([str(staged / "bin" / "python"), "-c", _HELP_PAGES, command.click_object,
                             command.name]).stdout)
    (_, summary, root_help), subcommands = pages[0], pages[1:]
    name = _roff(command.name)[0]
    lines = [
        f'.TH {name.upper()} 1 {date} "{package.name} {version}" "Dataerai"',
        ".SH NAME",
        f"{name} \\- {_roff(summary.rstrip('.'))[0]}",
        ".SH DESCRIPTION",
        ".nf", *_roff(root_help), ".fi",
    ]
    if subcommands:
        lines.append(".SH COMMANDS")
        for path, _summary, text in subcommands:
            lines += [f'.SS "{_roff(path)[0]}"', ".nf", *_roff(text), ".fi"]
    lines += [".SH SEE ALSO", f"/usr/share/doc/{package.name}/README.Debian"]
    return "\n".join(lines) + "\n"


#: SPDX identifiers that need no second look, in a License field that predates License-Expression.
_SPDX = {"MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "MPL-2.0", "PSF-2.0", "ISC", "LGPL-3.0-only"}
#: Trove classifiers that name one license unambiguously ("BSD License" does not).
_CLASSIFIERS = {
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
}
#: Distributions whose metadata names no license precisely, as their license files say.
LICENSE_OF = {"python-dateutil": "Apache-2.0 AND BSD-3-Clause", "uvloop": "MIT OR Apache-2.0"}
#: Texts Debian ships in /usr/share/common-licenses, by SPDX identifier.
_COMMON_LICENSES = {"Apache-2.0": "Apache-2.0", "MPL-2.0": "MPL-2.0", "LGPL-3.0-only": "LGPL-3"}


def _license(metadata: email.message.Message) -> str | None:
    """The distribution's license as an SPDX expression, or None when its metadata does not say."""
    name = metadata["Name"].lower()
    if name in LICENSE_OF:
        return LICENSE_OF[name]
    if metadata["License-Expression"]:
        return str(metadata["License-Expression"]).strip()
    field = (metadata["License"] or "").strip()
    if field and all(word in _SPDX for word in re.split(r" (?:AND|OR) ", field)):
        return field
    named = {_CLASSIFIERS.get(c) for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")}
    return named.pop() if len(named) == 1 and None not in named else None


def copyright_file(staged: Path, package: Package, years: str) -> str:
    """debian/copyright in the machine-readable format: this project's files, then each
    distribution bundled in the environment, with its license and where its license files are."""
    site = site_packages(staged)
    prefix = f"{package.venv.lstrip('/')}/{site.relative_to(staged)}"  # as the paths of the package
    paragraphs = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: Dataerai\n"
        f"Comment: The package's environment ({package.venv}) bundles the Python\n"
        " distributions below, each from its wheel, unchanged; their license files are in\n"
        " their .dist-info directories there.",
        f"Files: *\nCopyright: {years} the Dataerai authors\nLicense: Apache-2.0",
    ]
    licenses = {"Apache-2.0"}
    parser = email.parser.HeaderParser()
    for info in sorted(site.glob("*.dist-info")):
        metadata = parser.parsestr((info / "METADATA").read_text(encoding="utf-8"))
        if metadata["Name"] in ("dataerai-transfer-sdk", "dataerai-transfer", "dataerai-server"):
            continue
        records = [line.split(",")[0] for line in (info / "RECORD").read_text(encoding="utf-8").splitlines()]
        tops = sorted({r.split("/")[0] for r in records if not r.startswith("..") and not r.endswith(".pyc")})
        files = [f"{prefix}/{top}/*" if (site / top).is_dir() else f"{prefix}/{top}" for top in tops]
        files += [f"{package.venv.lstrip('/')}/bin/{Path(r).name}" for r in records if r.startswith("../../../bin/")]
        license_files = [f"/{prefix}/{r}" for r in records if r.startswith(info.name) and re.search(
            r"/(licenses/|LICEN[CS]E|COPYING|NOTICE|AUTHORS)", r)]
        expression = _license(metadata)
        if expression is None:
            print(f"warning: {metadata['Name']} names no license precisely; add it to LICENSE_OF in {__file__}",
                  file=sys.stderr)
            expression = "other"
        licenses.update(re.split(r" (?:AND|OR) ", expression))
        holder = next((str(metadata[f]) for f in ("Author", "Author-email", "Maintainer", "Maintainer-email")
                       if metadata[f]), f"the {metadata['Name']} authors")
        comment = f"{metadata['Name']} {metadata['Version']}; license files: " + (
            ", ".join(license_files) if license_files else "none in its wheel")
        paragraphs.append(
            f"Files: {' '.join(files)}\n"
            f"Copyright: {' '.join(holder.split())}\n"
            f"License: {expression.replace(' AND ', ' and ').replace(' OR ', ' or ')}\n"
            f"Comment: {comment}"
        )
    for name in sorted(licenses):
        if name in _COMMON_LICENSES:
            text = f"On Debian systems, the full text is in /usr/share/common-licenses/{_COMMON_LICENSES[name]}."
        elif name == "other":
            text = "Not named precisely by the distribution's metadata: see its license files."
        else:
            text = "The text is in the license files of each distribution under it (the Comment of each Files\n" \
                " paragraph names them)."
        paragraphs.append(f"License: {name}\n {text}")
    return "\n\n".join(paragraphs) + "\n"


def changelog(package: Package, version: str, maintainer: str, when: datetime, commit: str) -> str:
    """The one entry of the package's changelog: this build."""
    codename = "unstable"
    os_release = Path("/etc/os-release")
    if os_release.exists():
        found = re.search(r"^VERSION_CODENAME=(\S+)$", os_release.read_text(), re.MULTILINE)
        codename = found.group(1) if found else codename
    return (
        f"{package.name} ({version}) {codename}; urgency=medium\n\n"
        f"  * Built by `make deb` from the Dataerai repository{f' at {commit}' if commit else ''}.\n"
        "    The project's changes are in its history and docs/.\n\n"
        f" -- {maintainer}  {format_datetime(when)}\n"
    )


def compiled_files(tree: Path) -> list[Path]:
    return [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and p.read_bytes()[:4] == b"\x7fELF"]


def shared_library_depends(work: Path, package: Package, elves: list[Path]) -> str:
    """``dpkg-shlibdeps`` over the compiled files of the wheels (libc6, libgcc-s1, zlib1g, ...)."""
    if not elves:
        return ""
    (work / "debian" / "control").write_text(
        f"Source: dataerai\n\nPackage: {package.name}\nArchitecture: any\n", encoding="utf-8")
    # --warnings=0: the wheels' libraries link more than they use, which is theirs to change, not ours.
    out = _run(["dpkg-shlibdeps", "-O", "--warnings=0", f"-T{work / 'substvars'}", *map(str, elves)], cwd=work).stdout
    found = re.search(r"^shlibs:Depends=(.*)$", out, re.MULTILINE)
    return found.group(1) if found else ""


# --- the package ---------------------------------------------------------------------


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def _gzip(text: str, mtime: int) -> bytes:
    return gzip.compress(text.encode(), compresslevel=9, mtime=mtime)


def _normalize_modes(tree: Path, package: Package) -> None:
    """0755 for directories and the environment's commands, 0644 for the rest, whatever the wheels
    or the umask said (a shared library too, as policy wants); MODES where it says."""
    commands = tree / package.venv.lstrip("/") / "bin"
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        relative = str(path.relative_to(tree))
        if relative in MODES:
            path.chmod(MODES[relative])
        elif path.is_dir() or path.parent == commands:
            path.chmod(0o755)
        else:
            path.chmod(0o644)


def _strip(elves: list[Path]) -> None:
    """Strip the compiled files that still carry a symbol table, as dh_strip would.

    Only those: the libraries auditwheel vendored (``*.libs/``) and the modules linked to them
    were rewritten by patchelf and come stripped, and stripping such a file again can break it.
    """
    for elf in elves:
        if " .symtab " in _run(["readelf", "-S", "-W", str(elf)]).stdout:
            _run(["strip", "--remove-section=.comment", "--remove-section=.note", "--strip-unneeded", str(elf)])


def _installed_size(tree: Path) -> int:
    """In KiB, as dpkg-gencontrol counts it: each file rounded up, one for each directory or link."""
    total = 0
    for path in tree.rglob("*"):
        if path.is_symlink() or path.is_dir():
            total += 1
        else:
            total += -(-path.stat().st_size // 1024)
    return total


@dataclass(frozen=True)
class Stamp:
    """What every file of one build says about it."""

    version: str
    maintainer: str
    #: The time the packages say they were made (their files' times, the changelog's date).
    epoch: int
    commit: str
    first_year: int

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.epoch, timezone.utc)

    @property
    def years(self) -> str:
        return f"{self.first_year}-{self.when.year}" if self.first_year < self.when.year else str(self.when.year)


def stamp(house: Path) -> Stamp:
    """The version of the wheelhouse, the maintainer (DEBFULLNAME and DEBEMAIL, as for dch), and the
    checkout's last commit and its time (or SOURCE_DATE_EPOCH), so that a build does not change with
    the clock; without git, now."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        epoch = int(git("log", "-1", "--format=%ct"))
        first = int(git("log", "--max-parents=0", "--format=%ct").split()[-1])
    except (OSError, subprocess.CalledProcessError, ValueError):
        commit, epoch, first = "", int(time.time()), int(time.time())
    if os.environ.get("SOURCE_DATE_EPOCH"):
        epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    maintainer = (f"{os.environ['DEBFULLNAME']} <{os.environ['DEBEMAIL']}>"
                  if os.environ.get("DEBFULLNAME") and os.environ.get("DEBEMAIL") else DEFAULT_MAINTAINER)
    return Stamp(wheel_version(house), maintainer, epoch, commit, datetime.fromtimestamp(first, timezone.utc).year)


def place_files(tree: Path, package: Package, staged: Path, build: Stamp) -> list[str]:
    """Everything beside the environment: the command, the units, the documentation, the
    package's own files; the paths of its conffiles."""
    templates = TEMPLATES / package.name
    command = package.command.name
    link = tree / "usr" / "bin" / command
    link.parent.mkdir(parents=True)
    # A link, not a wrapper: the script then sees itself as /usr/bin/dataerai, the name
    # `dataerai service install` writes into a unit and the SDK starts a daemon by.
    link.symlink_to(f"{package.venv}/bin/{command}")
    if package.name == "dataerai-transfer":
        for name, text in user_units(site_packages(staged)).items():
            _write(tree / USER_UNIT_DIR / name, text)
    if (templates / "files").is_dir():
        shutil.copytree(templates / "files", tree, dirs_exist_ok=True)

    docs = tree / "usr" / "share" / "doc" / package.name
    _write(docs / "copyright", copyright_file(staged, package, build.years))
    entry = changelog(package, build.version, build.maintainer, build.when, build.commit)
    _write(docs / "changelog.gz", _gzip(entry, build.epoch))
    _write(docs / "README.Debian", (templates / "README.Debian").read_text(encoding="utf-8"))
    page = man_page(staged, package, build.version, build.when.strftime("%Y-%m-%d"))
    _write(tree / "usr" / "share" / "man" / "man1" / f"{command}.1.gz", _gzip(page, build.epoch))
    _write(tree / "usr" / "share" / "lintian" / "overrides" / package.name,
           (templates / "lintian-overrides").read_text(encoding="utf-8"))
    # As debhelper does: every file under /etc is a conffile.
    return sorted(f"/{p.relative_to(tree)}" for p in tree.glob("etc/**/*") if p.is_file())


def control_area(work: Path, tree: Path, package: Package, build: Stamp, interpreter_package: str,
                 architecture: str, elves: list[Path], conffiles: list[str]) -> None:
    """DEBIAN/: the fields, the maintainer scripts, the conffiles and the md5sums."""
    templates = TEMPLATES / package.name
    control = tree / "DEBIAN"
    control.mkdir(mode=0o755)  # first: dpkg-shlibdeps finds the package's root by it ($ORIGIN)
    depends = ", ".join(d for d in (interpreter_package, shared_library_depends(work, package, elves)) if d)
    fields = string.Template((templates / "control").read_text(encoding="utf-8")).substitute(
        version=build.version, architecture=architecture, maintainer=build.maintainer,
        installed_size=_installed_size(tree), depends=depends)
    _write(control / "control", fields)
    for script in _SCRIPTS:
        _write(control / script, maintainer_script((templates / script).read_text(encoding="utf-8")), 0o755)
    if conffiles:
        _write(control / "conffiles", "".join(f"{c}\n" for c in conffiles))
    sums = []
    for path in sorted(tree.rglob("*")):
        relative = str(path.relative_to(tree))
        # Not the conffiles, as dh_md5sums: dpkg keeps their sums itself.
        if path.is_file() and not path.is_symlink() and not relative.startswith("DEBIAN/") \
                and f"/{relative}" not in conffiles:
            sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {relative}\n")
    _write(control / "md5sums", "".join(sums))


def build_package(package: Package, house: Path, out: Path, *, python: str = "/usr/bin/python3") -> Path:
    """Build one package from the wheelhouse into ``out``; its path."""
    interpreter, interpreter_package = debian_python(python)
    build = stamp(house)
    architecture = _run(["dpkg", "--print-architecture"]).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="deb-") as temporary:
        work = Path(temporary)
        tree = work / "debian" / package.name  # where dpkg-shlibdeps expects a package's files
        staged = make_environment(tree, package, interpreter, house, build.version)
        conffiles = place_files(tree, package, staged, build)
        elves = compiled_files(tree)
        _strip(elves)
        _normalize_modes(tree, package)
        control_area(work, tree, package, build, interpreter_package, architecture, elves, conffiles)

        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob(f"{package.name}_*.deb"):
            old.unlink()
        deb = out / deb_name(package.name, build.version, architecture)
        # xz, the format of the archive, at its fastest preset: the server's 62 MB pack in 5 s
        # where the default preset takes 29 s on two cores, for 11% more bytes (packaging/README.md).
        _run(["dpkg-deb", "--root-owner-group", "-Zxz", "-z0", "--build", str(tree), str(deb)],
             env={**os.environ, "SOURCE_DATE_EPOCH": str(build.epoch)})
    return deb


def build(house: Path, out: Path, *, python: str = "/usr/bin/python3") -> dict[str, Path]:
    """Every package, from the wheelhouse ``house`` into ``out``."""
    return {package.name: build_package(package, house, out, python=python) for package in PACKAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="where the packages go (dist/)")
    parser.add_argument("--wheelhouse", type=Path, help="the wheels to install (default: OUT/wheelhouse)")
    parser.add_argument("--python", default="/usr/bin/python3", help="the Debian interpreter the environments use")
    args = parser.parse_args()
    for tool in ("dpkg-deb", "dpkg-shlibdeps"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing: `apt install dpkg-dev`")
    for deb in build(args.wheelhouse or args.out / "wheelhouse", args.out, python=args.python).values():
        print(deb)


if __name__ == "__main__":
    main()
