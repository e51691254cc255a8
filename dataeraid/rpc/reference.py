"""docs/protocol.md's method reference and limits, rendered from the registry.

Each method's section in the document holds a block between ``<!-- generated -->``
and ``<!-- end generated -->`` markers: its help, its parameters with their types and
ranges, its result and its errors, all from its declaration. The examples after the
block stay hand-written (they are replayed against a real daemon). ``make docs``
rewrites the blocks; ``tests/daemon/test_rpc_registry.py`` fails when the document
and the registry differ.

    python -m dataeraid.rpc.reference docs/protocol.md   # rewrite in place
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from dataerai import protocol

from dataeraid.rpc import server
from dataeraid.rpc.registry import Method, Registry

BEGIN = "<!-- generated from the registry: make docs -->"
END = "<!-- end generated -->"
#: Errors any method may answer, listed once in the document, not per method.
COMMON_ERRORS = ("invalid_argument", "internal")


def render_method(method: Method) -> str:
    lines = [method.help, ""]
    if method.params:
        lines += ["| param | type | |", "|---|---|---|"]
        for p in method.params:
            need = "required" if p.required else (f"default `{_json(p.default)}`" if p.default is not None else "")
            meaning = "; ".join(part for part in (need, p.help) if part)
            lines.append(f"| `{p.name}` | {p.spec.describe()} | {meaning} |")
        lines.append("")
    else:
        lines += ["No parameters.", ""]
    lines.append(f"Result: {method.result}")
    errors = [e for e in method.errors if e not in COMMON_ERRORS]
    if errors:
        lines.append("Errors: " + ", ".join(f"`{e}`" for e in errors) + ".")
    if method.waits:
        lines.append("Cancelled when the client hangs up.")
    if method.heavy:
        lines.append("Heavy: its answer may be large (see Limits).")
    return "\n".join(lines)


def render_limits() -> str:
    return "\n".join([
        "| limit | value | past it |",
        "|---|---|---|",
        f"| one request line | {protocol.MAX_LINE_BYTES} bytes | `frame_too_large`, the line is skipped |",
        f"| requests in one batch | {protocol.MAX_BATCH_ITEMS} | `frame_too_large`, none of the batch runs |",
        f"| one answer line (an answer, a batch's answers, an event) | {protocol.MAX_ANSWER_BYTES} bytes | "
        "`frame_too_large` for that answer; in a batch, the requests after it do not run |",
        f"| requests of one connection answered at once | {server.MAX_IN_FLIGHT} | "
        "the connection is not read until one ends |",
        f"| heavy calls (listings, batches) of one connection, until sent | {server.MAX_HEAVY_PER_CONNECTION} | "
        "they wait their turn |",
        f"| heavy calls computed at once, daemon-wide | {server.MAX_HEAVY_AT_ONCE} | "
        "they wait their turn, in arrival order |",
    ])


def _json(value: object) -> str:
    return json.dumps(value)


def _section(name: str) -> re.Pattern[str]:
    return re.compile(r"(### `" + re.escape(name) + r"`\n\n)" + re.escape(BEGIN) + r"\n(?:[^\n]*\n)*?"
                      + re.escape(END))


def update_document(text: str, registry: Registry) -> str:
    """``text`` with every method's generated block (and the limits block) rendered anew.

    A method without a section gets one at the end of the methods; a section of a
    method that no longer exists is an error, left for a person to remove.
    """
    for method in registry.methods.values():
        block = f"{BEGIN}\n{render_method(method)}\n{END}"
        pattern = _section(method.name)
        if pattern.search(text):
            text = pattern.sub(lambda m, b=block: m.group(1) + b, text)  # type: ignore[misc]
        else:
            text = text.replace("\n## Events\n", f"\n### `{method.name}`\n\n{block}\n\n## Events\n", 1)
    limits = re.compile(r"(<!-- limits -->\n)(?:.*?\n)?(<!-- end limits -->)", re.S)
    text = limits.sub(lambda m: m.group(1) + render_limits() + "\n" + m.group(2), text)
    documented = set(re.findall(r"^### `([^`]+)`", text, re.M))
    stale = documented - set(registry.methods)
    if stale:
        raise ValueError(f"docs/protocol.md documents methods that do not exist: {sorted(stale)}")
    return text


def main(argv: list[str]) -> int:
    from dataeraid.methods import REGISTRY

    path = Path(argv[1] if len(argv) > 1 else "docs/protocol.md")
    text = path.read_text()
    new = update_document(text, REGISTRY)
    if new != text:
        path.write_text(new)
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
