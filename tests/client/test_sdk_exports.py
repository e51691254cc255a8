"""The public surface of `dataerai`: one short __init__, and a test that it does not drift."""

from __future__ import annotations

import builtins
import inspect
import re
import types
from pathlib import Path

import dataerai

INIT = Path(dataerai.__file__)
#: Public names deliberately outside __all__ (see the comment in __init__.py).
OUTSIDE_ALL = {"ConnectionError"}


def _public_names() -> set[str]:
    return {
        name
        for name, value in vars(dataerai).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_matches_the_public_names() -> None:
    assert len(dataerai.__all__) == len(set(dataerai.__all__))
    assert set(dataerai.__all__) | OUTSIDE_ALL == _public_names() | {"__version__"}
    for name in dataerai.__all__:
        assert hasattr(dataerai, name), name


def test_every_export_is_a_redundant_alias_import_from_a_private_module() -> None:
    imported = set(re.findall(r"^from \._\w+ import (\w+) as (\w+)$", INIT.read_text(), re.MULTILINE))
    for original, alias in imported:
        assert original == alias
    assert {alias for _, alias in imported} == set(dataerai.__all__)


def test_the_contract_names_exist() -> None:
    for name in (
        "DataeraiClient",
        "DataEraiClient",
        "AuthStatus",
        "Project",
        "UploadResult",
        "DownloadResult",
        "DownloadedFile",
        "AssetMetadata",
        "ProgressEvent",
        "Relationship",
        "Job",
        "Event",
        "DaemonError",
        "DaemonTimeoutError",
        "ConnectionError",
    ):
        assert hasattr(dataerai, name), name


def test_both_class_spellings_are_the_same_object() -> None:
    from dataerai import DataEraiClient, DataeraiClient

    assert DataEraiClient is DataeraiClient


def test_connection_error_is_the_builtins_subclass() -> None:
    assert dataerai.ConnectionError is dataerai.DaemonConnectionError
    assert issubclass(dataerai.ConnectionError, builtins.ConnectionError)
    assert dataerai.ConnectionError is not builtins.ConnectionError
    namespace: dict[str, object] = {}
    exec("from dataerai import *", namespace)
    assert "ConnectionError" not in namespace  # a star import does not shadow the builtin


def test_public_classes_and_functions_have_docstrings() -> None:
    for name in dataerai.__all__:
        value = getattr(dataerai, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_the_distribution_takes_its_version_from_the_package() -> None:
    pyproject = (INIT.parent.parent / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.MULTILINE)
    assert re.search(r'^path = "dataerai/_version.py"', pyproject, re.MULTILINE)
    assert re.search(r'^name = "dataerai-transfer-sdk"', pyproject, re.MULTILINE)
    assert re.search(r"^dependencies = \[\]", pyproject, re.MULTILINE)  # standard library only


def test_the_package_imports_only_the_standard_library() -> None:
    import sys

    stdlib = set(sys.stdlib_module_names)
    for path in INIT.parent.glob("*.py"):
        for module in re.findall(r"^(?:from|import) (\w+)", path.read_text(), re.MULTILINE):
            assert module in stdlib or module == "__future__", (path.name, module)
