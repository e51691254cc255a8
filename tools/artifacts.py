"""`make dist` and `make wheelhouse`: the artifacts a machine without this repository installs from.

``python tools/artifacts.py OUT`` builds the sdist of each distribution and then its wheel from
that sdist (``python -m build``, which is how a downstream packager rebuilds it), into OUT.
``--wheelhouse`` then adds ``OUT/wheelhouse/``: the three wheels and every dependency as a
wheel, for this Python and platform, so that ``pip install --no-index --find-links
OUT/wheelhouse dataerai-transfer dataerai-server`` needs no package index (docs/install.md).

tests/packaging/test_wheels.py builds with the same functions.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Each distribution's source directory, by its name on the index (packaging/README.md).
DISTRIBUTIONS = {
    "dataerai-transfer-sdk": ROOT / "client",
    "dataerai-transfer": ROOT,
    "dataerai-server": ROOT / "server",
}


def _file_stem(name: str) -> str:
    """The name as it starts a wheel's or an sdist's file name (PEP 427, PEP 625)."""
    return name.replace("-", "_")


def built_in(out: Path) -> dict[str, tuple[Path, Path]]:
    """Each distribution's (sdist, wheel) in ``out``; an error unless there is exactly one of each."""
    found = {}
    for name in DISTRIBUTIONS:
        stem = _file_stem(name)
        sdists = sorted(out.glob(f"{stem}-*.tar.gz"))
        wheels = sorted(out.glob(f"{stem}-*-py3-none-any.whl"))
        if len(sdists) != 1 or len(wheels) != 1:
            raise RuntimeError(f"{out}: want one sdist and one wheel of {name}, found {sdists + wheels}")
        found[name] = (sdists[0], wheels[0])
    return found


def build(out: Path) -> dict[str, tuple[Path, Path]]:
    """Build every sdist, and every wheel from its sdist, into ``out`` (emptied of older ones first)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in DISTRIBUTIONS:
        for old in [*out.glob(f"{_file_stem(name)}-*.tar.gz"), *out.glob(f"{_file_stem(name)}-*.whl")]:
            old.unlink()
    for source in DISTRIBUTIONS.values():
        # uv makes each isolated build environment (hatchling) in a fraction of pip's time.
        subprocess.run([sys.executable, "-m", "build", "--installer", "uv", "--outdir", str(out), str(source)],
                       check=True, stdout=subprocess.DEVNULL)
    return built_in(out)


def wheelhouse(out: Path) -> Path:
    """``out/wheelhouse/``: the wheels in ``out`` and all their dependencies, as wheels. Needs the index."""
    house = out / "wheelhouse"
    if house.exists():
        shutil.rmtree(house)
    wheels = [str(wheel) for _, wheel in built_in(out).values()]
    # The three wheels are named by path: pip takes those and looks only their dependencies up,
    # so the project's own names are never asked of an index.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(house), *wheels],
                   check=True)
    return house


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the directory to build into (dist/)")
    parser.add_argument("--wheelhouse", action="store_true", help="also OUT/wheelhouse/, with every dependency")
    args = parser.parse_args()
    built = build(args.out)
    for sdist, wheel in built.values():
        print(sdist)
        print(wheel)
    if args.wheelhouse:
        house = wheelhouse(args.out)
        print(f"{house}/ ({len(list(house.glob('*.whl')))} wheels)")


if __name__ == "__main__":
    main()
