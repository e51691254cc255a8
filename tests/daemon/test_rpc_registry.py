"""The registry is the one declaration of the RPC: the reference is generated from it,
and every parameter is typed and bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dataerai import contract
from dataerai.protocol import ERRORS
from hypothesis import given, settings
from hypothesis import strategies as st
from rpc_strategies import params_for

from dataeraid.errors import DataeraiError
from dataeraid.methods import REGISTRY
from dataeraid.remote import api_path
from dataeraid.rpc.params import Id, Integer, LocalPath, Number, Spec, Text
from dataeraid.rpc.reference import update_document

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_the_protocol_reference_is_the_registry_rendered() -> None:
    text = DOC.read_text()
    assert update_document(text, REGISTRY) == text, "docs/protocol.md differs from the registry: run `make docs`"


def test_every_method_declares_its_errors_from_the_catalogue_and_types_every_parameter() -> None:
    assert len(REGISTRY.methods) >= 28
    for method in REGISTRY.methods.values():
        assert method.help and method.result, method.name
        assert set(method.errors) <= set(ERRORS), method.name
        for param in method.params:
            assert isinstance(param.spec, Spec), (method.name, param.name)
            assert param.spec.describe(), (method.name, param.name)


@settings(max_examples=1000, deadline=None, database=None)
@given(st.sampled_from(sorted(REGISTRY.methods)).flatmap(
    lambda name: st.tuples(st.just(name), params_for(REGISTRY.methods[name]))))
def test_any_parameters_bind_or_are_refused_as_invalid_argument(case: tuple[str, dict[str, Any]]) -> None:
    name, params = case
    method = REGISTRY.methods[name]
    try:
        bound = method.bind(params)
    except DataeraiError as exc:
        assert exc.code == "invalid_argument", exc
        assert isinstance(exc.data.get("param"), str), exc
        return
    for param in method.params:
        value = bound[param.name]
        if isinstance(value, str):
            assert contract.text_problem(value, multiline=True) is None or isinstance(param.spec, LocalPath)
        if isinstance(param.spec, (Integer, Number)) and value is not None:
            assert param.spec.low <= value <= param.spec.high


@pytest.mark.parametrize("value", ["\ud800", "a\x00", "x\r", "\x1b", "ab\u0085"])
def test_text_refuses_what_no_caller_means(value: str) -> None:
    with pytest.raises(Exception, match=r"surrogate|control|NUL"):
        Text(100).check(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 2**63, True, "1"])
def test_numbers_are_finite_and_in_range(value: Any) -> None:
    with pytest.raises(Exception, match="must be"):
        Number(0, 100).check(value)


def test_a_local_path_keeps_names_that_were_not_utf8_and_refuses_what_the_os_cannot_take() -> None:
    not_utf8 = b"/data/run\xff.h5".decode("utf-8", "surrogateescape")
    assert LocalPath().check(not_utf8) == not_utf8
    for bad in ("relative", "/a\x00b", "/a\ud800b", "/" + "x" * 256, "/a" * 3000):
        with pytest.raises(Exception, match="must"):
            LocalPath().check(bad)


@pytest.mark.parametrize("value", ["../me", "ast_../x", "ast_ABCDEFGH", "ast_0123456%2f", "prj_0123456789", ""])
def test_an_id_that_could_carry_a_path_is_refused(value: str) -> None:
    with pytest.raises(Exception, match="must be"):
        Id(("asset",)).check(value)
    with pytest.raises(DataeraiError) as info:
        api_path("/assets/{}", ("asset", value))
    assert info.value.code == "invalid_argument"


def test_ids_go_into_urls_checked_and_encoded() -> None:
    assert api_path("/uploads/{}/parts/{}/target", ("upload", "upl_0123456789abcdef0123"), 7) == \
        "/uploads/upl_0123456789abcdef0123/parts/7/target"
