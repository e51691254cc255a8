"""Hypothesis strategies for the daemon's RPC, generated from the registry.

Each parameter's spec (``dataeraid.rpc.params``) gives good values and hostile ones:
lone surrogates, NUL and other control characters, numbers that are not finite or out
of range (NaN and 1e400 go on the wire as the JSON extensions Python's reader takes),
2**63, ids that carry a path, wrong types. Used by the fuzz tests and ``make fuzz``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from dataerai import contract
from hypothesis import strategies as st

from dataeraid.rpc.params import (
    Boolean,
    Choice,
    Id,
    Integer,
    Items,
    JsonObject,
    ListOf,
    LocalPath,
    Number,
    Param,
    Record,
    RepositoryPath,
    Spec,
    Text,
    TransferWindow,
)
from dataeraid.rpc.registry import Method, Registry

HOSTILE_TEXT = ["\ud800", "a\udfffb", "\x00", "a\x00b", "\r", "x\ny", "\x1b[31m", "\x7f", "\u0085", "",
                " ", "../me", "../uploads/upl_0123456789abcdef0123", "%2e%2e%2fme", "a/../../b", "/etc/passwd",
                "job_" + "0" * 23, "job_" + "g" * 24, "ast_../x", "x" * 5000, "é" * 300]
HOSTILE_NUMBERS: list[Any] = [-1, -(2**63), 2**63, 2**64 + 1, 10**30, -0.5, 0.0, 1e308, 1e-320, math.nan, math.inf,
                              -math.inf, True, False]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                    st.sampled_from(HOSTILE_TEXT), st.sampled_from(HOSTILE_NUMBERS))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)


def good(spec: Spec) -> st.SearchStrategy[Any]:
    """Values the spec takes."""
    if isinstance(spec, Text):
        alphabet = st.characters(blacklist_categories=("Cs", "Cc"))
        text = st.text(alphabet, min_size=max(spec.min_length, 1 if spec.non_blank else 0),
                       max_size=min(spec.max_length, 40))
        return text.filter(lambda t: not spec.non_blank or bool(t.strip()))
    if isinstance(spec, Choice):
        return st.sampled_from(spec.values)
    if isinstance(spec, Id):
        return st.sampled_from(spec.kinds).flatmap(
            lambda kind: st.just(contract.new_job_id()) if kind == "job" else
            st.text("0123456789abcdefghijklmnopqrstuvwxyz", min_size=8, max_size=24).map(
                lambda tail, k=kind: f"{contract.ID_PREFIXES[k]}_{tail}"))
    if isinstance(spec, Integer):
        return st.integers(spec.low, spec.high)
    if isinstance(spec, Number):
        return st.floats(spec.low, spec.high, allow_nan=False, exclude_min=spec.positive)
    if isinstance(spec, Boolean):
        return st.booleans()
    if isinstance(spec, ListOf):
        return st.lists(good(spec.item), max_size=min(spec.max_items, 3))
    if isinstance(spec, LocalPath):
        return st.text("abcxyz/._-é ", max_size=30).map(lambda t: "/nonexistent-fuzz/" + t.replace("\x00", ""))
    if isinstance(spec, RepositoryPath):
        return st.lists(st.text("abc.-_é", min_size=1, max_size=8).filter(lambda s: s not in (".", "..")),
                        min_size=1, max_size=3).map("/".join)
    if isinstance(spec, JsonObject):
        return st.dictionaries(st.text(max_size=8).filter(lambda k: contract.text_problem(k) is None),
                               st.one_of(st.integers(), st.text("abc", max_size=5), st.booleans(), st.none()),
                               max_size=3)
    if isinstance(spec, TransferWindow):
        return st.sampled_from(["20:00-06:00", "Mon-Fri 20:00-06:00,Sat-Sun 00:00-24:00", "sat 00:00-24:00"])
    if isinstance(spec, Record):
        return st.fixed_dictionaries({}, optional={k: good(v) for k, v in spec.fields.items()})
    if isinstance(spec, Items):
        # Each item is a request's parameters: good, hostile or with an unknown one, as for a method.
        item = st.tuples(st.fixed_dictionaries({p.name: value_for(p) for p in spec.params if p.required},
                                               optional={p.name: value_for(p) for p in spec.params
                                                         if not p.required}),
                         st.dictionaries(st.sampled_from(["bogus", "\ud800"]), SCALARS, max_size=1))
        return st.lists(item.map(lambda pair: {**pair[0], **pair[1]}), min_size=1, max_size=3)
    raise AssertionError(f"no strategy for {spec!r}")


def hostile(spec: Spec) -> st.SearchStrategy[Any]:
    """Values that probe the spec's edges: mostly refused, some of them taken."""
    return st.one_of(ANY_JSON, st.sampled_from(HOSTILE_TEXT), st.sampled_from(HOSTILE_NUMBERS),
                     st.lists(st.sampled_from(HOSTILE_TEXT), max_size=3),
                     st.dictionaries(st.sampled_from(HOSTILE_TEXT), SCALARS, max_size=2))


def value_for(param: Param) -> st.SearchStrategy[Any]:
    return st.one_of(good(param.spec), hostile(param.spec))


#: Methods that end the daemon when they succeed: a fuzzing campaign sends them only with an
#: unknown parameter, which they refuse, so the daemon under test stays up to the end.
ENDS_THE_DAEMON = frozenset({"daemon.stop"})


def params_for(method: Method) -> st.SearchStrategy[dict[str, Any]]:
    """A method's parameters: each one absent, good or hostile, sometimes an unknown one more."""
    fields = {p.name: value_for(p) for p in method.params}
    required = {p.name: value_for(p) for p in method.params if p.required}
    optional = {k: v for k, v in fields.items() if k not in required}
    base = st.fixed_dictionaries(required, optional=optional)
    unknown = st.sampled_from(["bogus", "\ud800", "job_id ", ""])
    ends = method.name in ENDS_THE_DAEMON
    extra = st.dictionaries(unknown, SCALARS, min_size=1 if ends else 0, max_size=1)
    return st.tuples(base, extra).map(lambda pair: {**pair[0], **pair[1]})


def requests(registry: Registry) -> st.SearchStrategy[dict[str, Any]]:
    """A request object (without ``id``) for a method of the registry, or an unknown one.

    Built once per registry: building strategies per draw costs more than drawing.
    """
    known = [st.tuples(st.just(name), params_for(registry.methods[name])) for name in sorted(registry.methods)]
    unknown = st.tuples(st.sampled_from(["nope", "job.get ", "\ud800", "", "daemon.ping\x00"]),
                        st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))
    return st.one_of(*known, unknown).map(lambda m: {"jsonrpc": "2.0", "method": m[0], "params": m[1]})


def frames(registry: Registry) -> st.SearchStrategy[tuple[str, Any]]:
    """``("request", obj)``, ``("batch", [obj, ...])`` or ``("raw", line)``: give requests an id
    with :func:`encode_frame`."""
    request = requests(registry)
    return st.one_of(request.map(lambda r: ("request", r)),
                     st.lists(request, min_size=1, max_size=4).map(lambda rs: ("batch", rs)),
                     raw_frame().map(lambda line: ("raw", line)))


def encode_frame(frame: tuple[str, Any], ident: int) -> bytes:
    kind, body = frame
    if kind == "raw":
        return body  # type: ignore[no-any-return]
    if kind == "request":
        return _line({**body, "id": ident})
    return b"[" + b",".join(_line({**r, "id": f"{ident}.{i}"}) for i, r in enumerate(body)) + b"]"


def raw_frame() -> st.SearchStrategy[bytes]:
    """Lines that are not requests: bytes, JSON of the wrong shape, bad ids, empty batches."""
    shapes = st.one_of(
        st.binary(max_size=64).map(lambda b: b.replace(b"\n", b" ")),
        ANY_JSON.map(_line_of),
        st.fixed_dictionaries({"jsonrpc": st.sampled_from(["2.0", "1.0", 2]), "method": SCALARS,
                               "id": st.one_of(SCALARS, st.lists(st.integers(), max_size=2)),
                               "params": ANY_JSON}).map(_line_of),
        st.just(b"[]"), st.just(b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"job.get\", \"params\": [1]}"),
        st.just(b"[" * 100_000),
    )
    return shapes


def _line_of(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass").replace(b"\n", b" ")


def _line(obj: dict[str, Any]) -> bytes:
    # Lone surrogates travel as JSON escapes (valid JSON), NaN and infinity as Python's extensions.
    return json.dumps(obj, allow_nan=True).encode()
