"""`make fuzz` (the server's part): Schemathesis against a real `dataerai-server`.

Starts a server on a temporary directory (``--database`` for PostgreSQL), makes a user
with a write token, a project, a collection, two assets (real uploads), an open upload
session and a dedup challenge, then sends every operation of the server's own OpenAPI
document ``--max-examples`` generated requests in each of two modes (positive: valid by
the schema; negative: not), with the token, and half of them aimed at the real objects
(their ids; signed URLs for the part and content reads). Each answer is checked:

- ``not_a_server_error``: no 5xx;
- ``status_code_conformance``, ``content_type_conformance``,
  ``response_schema_conformance``: the status is declared, and the body has the declared
  media type and schema;
- ``positive_data_acceptance``: a schema-valid request is not refused as malformed: it
  may be answered 2xx, 401, 403, 404, 409, 413, 416 or 422 (what depends on the stored
  state), or 400 naming one of the operation's ``checked_fields`` (``operations.py``).

Prints the requests sent, the answers by status and every distinct failure; exits 1 if
there was one. ``tests/server/test_fuzz_api.py`` runs the same with a small budget.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

#: What a schema-valid request may be answered with besides 2xx (see the module docstring).
ACCEPTABLE = ["2xx", "401", "403", "404", "409", "413", "416", "422"]
PART = 64 * 1024


@dataclass
class Report:
    """What one campaign sent and found."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items()))
        out = [
            f"{len(self.by_operation)} operations, {self.requests} requests in {self.seconds:.1f} s",
            f"answers by status: {statuses}",
            f"failures: {len(self.failures)}",
        ]
        for (operation, kind), detail in sorted(self.failures.items()):
            out.append(f"- {operation}: {kind}\n    " + detail.replace("\n", "\n    "))
        return out


# --- the objects the requests aim at -------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ok(response: httpx.Response, *statuses: int) -> Any:
    assert response.status_code in (statuses or (200,)), f"{response.status_code}: {response.text}"
    return response.json() if response.content else None


def _upload(api: httpx.Client, project_id: str, data: bytes, path: str) -> dict[str, Any]:
    session = _ok(api.post("/uploads", json={"owner_type": "project", "owner_id": project_id, "size": len(data),
                                             "part_size": PART, "sha256": _sha256(data), "path": path}), 201)
    for number, start in enumerate(range(0, max(len(data), 1), PART), start=1):
        body = data[start:start + PART]
        target = _ok(api.post(f"/uploads/{session['upload_id']}/parts/{number}/target",
                              json={"sha256": _sha256(body), "size": len(body)}))
        _ok(httpx.put(target["url"], content=body, headers=target["headers"], trust_env=False))
    return _ok(api.post(f"/uploads/{session['upload_id']}/complete", json={}))  # type: ignore[no-any-return]


def _query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def seed_objects(url: str, token: str) -> dict[str, Any]:
    """Make the objects the requests aim at; their ids, and signed queries by operation."""
    with httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                      timeout=60, trust_env=False) as api:
        project = _ok(api.post("/projects", json={"name": "fuzzed"}), 201)
        project_id = project["project_id"]
        collection = _ok(api.post("/collections", json={"project_id": project_id, "name": "c"}), 201)
        data = bytes(range(256)) * 300  # two parts
        asset = _upload(api, project_id, data, "raw/a.bin")
        other = _upload(api, project_id, b"other", "raw/b.bin")
        download = _ok(api.get(f"/assets/{asset['asset_id']}/download"))
        session = _ok(api.post("/uploads", json={"owner_type": "project", "owner_id": project_id, "size": len(data),
                                                 "part_size": PART}), 201)
        target = _ok(api.post(f"/uploads/{session['upload_id']}/parts/1/target",
                              json={"sha256": _sha256(data[:PART]), "size": PART}))
        challenge = _ok(api.post(f"/uploads/{session['upload_id']}/dedup", json={"sha256": _sha256(data)}))
    return {
        "path": {
            "project_id": project_id,
            "collection_id": collection["collection_id"],
            "asset_id": other["asset_id"],
            "content_id": download["content_id"],
            "upload_id": session["upload_id"],
            "number": 1,
            "challenge_id": challenge["challenge_id"],
        },
        "query": {
            "content_data": _query_of(download["url"]),
            "put_part": _query_of(target["url"]),
            "list_assets": {"project_id": project_id},
        },
    }


# --- the campaign --------------------------------------------------------------------


def _acceptance_check(checked_fields: dict[str, tuple[str, ...]]) -> Callable[..., bool | None]:
    """Schemathesis's ``positive_data_acceptance``, except for a 400 that names one of the
    operation's ``checked_fields`` (a rule the schema cannot state)."""
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    def positive_data_acceptance_but_checked_fields(ctx: Any, response: Any, case: Any) -> bool | None:
        try:
            return positive_data_acceptance(ctx, response, case)  # type: ignore[no-any-return]
        except Exception:
            if response.status_code == 400:
                try:
                    named = response.json()["error"].get("field")
                except (ValueError, KeyError, AttributeError):
                    named = None
                if named in checked_fields.get(case.operation.definition.raw.get("operationId"), ()):
                    return None
            raise

    return positive_data_acceptance_but_checked_fields


def _sender(url: str, headers: dict[str, str], to_run: list[Any], report: Report, label: str,
            mode: str, session: Any) -> Callable[[Any], None]:
    """Send a case, count its answer, check it; a failure is recorded (the first of each kind), not raised."""

    def send(case: Any) -> None:
        response = case.call(base_url=url, headers=headers, session=session, timeout=60)
        report.requests += 1
        report.statuses[response.status_code] += 1
        report.by_operation[label] += 1
        try:
            case.validate_response(response, checks=to_run, headers=headers)
        except BaseException as exc:  # FailureGroup is an exception group
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            kinds = [type(one).__name__ for one in getattr(exc, "exceptions", [exc])]
            key = (label, f"{mode}: {', '.join(kinds)}")
            if key not in report.failures:
                text = str(exc).strip()
                report.failures[key] = f"{text[:1500]}\n{case.as_curl_command(headers=headers)[:600]}"

    return send


def fuzz(url: str, token: str, objects: dict[str, Any], *, max_examples: int, seed: int | None = None,
         report: Report | None = None) -> Report:
    """Send every operation ``max_examples`` requests per mode; see the module docstring."""
    import hypothesis
    import requests
    import schemathesis
    from dataerai_server.operations import OPERATIONS
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi import checks

    report = report or Report()
    started = time.monotonic()
    document = httpx.get(url + "/api/v1/openapi.json", trust_env=False, timeout=30).json()
    config = schemathesis.Config.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTABLE}}}
    )
    schema = schemathesis.openapi.from_dict(document, config=config)
    checked = {operation.handler: operation.checked_fields for operation in OPERATIONS}
    to_run = [
        not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        _acceptance_check(checked),
    ]
    headers = {"Authorization": f"Bearer {token}"}
    session = requests.Session()  # one keep-alive connection for the whole run
    session.trust_env = False
    for result in schema.get_all_operations():
        operation = result.ok()
        name = operation.definition.raw["operationId"]
        names = [p.name for p in operation.iter_parameters() if p.location.value == "path"]
        # DELETE aims only at drawn ids: the real objects must live for the operations after it.
        aimed = {} if operation.method.upper() == "DELETE" else {n: objects["path"][n] for n in names}
        query = objects["query"].get(name)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            drawn = operation.as_strategy(generation_mode=mode)
            options = [drawn]
            if aimed or query:
                options.append(operation.as_strategy(generation_mode=mode, path_parameters=aimed or None,
                                                     query=query if mode is GenerationMode.POSITIVE else None))

            send = _sender(url, headers, to_run, report, operation.label, mode.value, session)
            run = settings(max_examples=max_examples, deadline=None, database=None, derandomize=seed is None,
                           suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
                           verbosity=hypothesis.Verbosity.quiet)(hypothesis.given(st.one_of(options))(send))
            if seed is not None:
                run = hypothesis.seed(seed)(run)
            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                pass  # no negative request exists for an operation that takes nothing
    report.seconds += time.monotonic() - started
    return report


@contextmanager
def running_server(database: str | None) -> Iterator[tuple[str, str]]:
    """A fresh server on a temporary directory; its URL and a write token."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stack import Stack

    with tempfile.TemporaryDirectory(prefix="dataerai-fuzz-") as root, Stack(Path(root)) as stack:
        url = stack.start_server(database=database)
        yield url, stack.add_user("fuzz@example.org")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=200, help="requests per operation and mode")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (the run is reproducible)")
    parser.add_argument("--database", help="a SQLAlchemy URL for the server's database (default: SQLite)")
    args = parser.parse_args()
    with running_server(args.database) as (url, token):
        report = fuzz(url, token, seed_objects(url, token), max_examples=args.max_examples, seed=args.seed)
    print("\n".join(report.lines()))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
