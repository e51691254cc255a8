"""The engines' contract with the repository (``dataeraid.engine.repository.Repository``): the
HTTP client and the tests' in-memory repository both fulfil it, method for method, so a test
against the fake says something about the daemon against a server."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from fake_repository import FakeRepository

from dataeraid.engine.repository import Repository
from dataeraid.remote import Remote

METHODS = sorted(name for name, value in vars(Repository).items()
                 if inspect.isfunction(value) and not name.startswith("_"))


def _shape(function: Callable[..., Any]) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(function).parameters.values()]


def _kind(function: Callable[..., Any]) -> str:
    if inspect.isasyncgenfunction(function):
        return "async iterator"
    return "coroutine" if inspect.iscoroutinefunction(function) else "plain"


def test_the_contract_covers_both_directions() -> None:
    assert {"create_upload", "put_part", "complete_upload", "dedup_prove", "download_target", "read_range"} \
        <= set(METHODS)


@pytest.mark.parametrize("implementation", [Remote, FakeRepository])
@pytest.mark.parametrize("name", METHODS)
def test_every_method_of_the_contract_is_there_with_its_parameters(implementation: type, name: str) -> None:
    contract, method = getattr(Repository, name), getattr(implementation, name, None)
    assert method is not None, f"{implementation.__name__} lacks {name}"
    assert _shape(method) == _shape(contract)
    expected = "async iterator" if name == "read_range" else _kind(contract)
    assert _kind(method) == expected
