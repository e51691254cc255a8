"""The OpenAPI document is generated from the models the server validates with, and says what it enforces."""

from __future__ import annotations

import re

import pytest
from dataerai_server import paths, schemas, validation
from dataerai_server.app import Api
from dataerai_server.errors import ApiError
from dataerai_server.openapi import openapi_document
from dataerai_server.operations import OPERATIONS, operations_by_path
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import validate
from server_harness import Env, error, ok


def test_document_is_valid_openapi_3() -> None:
    document = openapi_document("0")
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any violation of the OpenAPI 3.1 meta-schema


def test_document_lists_every_route_and_method(env: Env) -> None:
    document = ok(env.anon.get("/api/v1/openapi.json"))
    routes = Api.__new__(Api).routes()
    assert len(routes) == len(document["paths"]) == len(operations_by_path())
    for route in routes:
        operations = document["paths"][route.path]
        assert {method.lower() for method in route.methods or () if method != "HEAD"} == set(operations)


def test_every_operation_declares_its_statuses_and_handler() -> None:
    document = openapi_document("0")
    for operation in OPERATIONS:
        assert callable(getattr(Api, operation.handler, None)), operation.handler
        declared = document["paths"][operation.full_path][operation.method.lower()]["responses"]
        if operation.scope is not None:
            assert "401" in declared, operation
        if operation.scope == "write":
            assert "403" in declared, operation
        if operation.body is not None:
            assert {"400", "413"} <= set(declared), operation
            body = document["components"]["schemas"][operation.body.__name__]
            assert body["additionalProperties"] is False, operation.body


def test_request_constraints_are_stated() -> None:
    components = openapi_document("0")["components"]["schemas"]
    upload = components["NewUpload"]["properties"]
    assert upload["part_size"] == {"maximum": 5 * 1024**3, "minimum": 65536, "title": "Part Size", "type": "integer"}
    assert upload["size"]["maximum"] == 10_000 * 5 * 1024**3
    assert upload["sha256"]["anyOf"][0]["pattern"] == schemas.SHA256_PATTERN
    owner_or_asset = components["NewUpload"]["anyOf"]
    assert {"required": ["asset_id"], "properties": {"asset_id": {"type": "string"}}} in owner_or_asset
    files = upload["files"]["anyOf"][0]
    assert (files["minItems"], files["maxItems"]) == (1, paths.MAX_FILES)
    target = components["PartTargetRequest"]
    assert [branch["required"] for branch in target["oneOf"]] == [["sha256"], ["prefix_sha256"]]
    assert components["NewProject"]["properties"]["name"]["maxLength"] == 200
    assert components["NewProject"]["properties"]["name"]["pattern"] == schemas.NOT_BLANK_PATTERN
    assert components["AssetPatch"]["properties"]["path"]["pattern"] == schemas.PATH_PATTERN
    assert "itself" in components["NewRelationship"]["description"]


@given(st.text(alphabet=st.sampled_from("ab./\\\x00 é"), max_size=12))
def test_path_pattern_is_the_path_rules(text: str) -> None:
    assert (re.fullmatch(schemas.PATH_PATTERN, text) is not None) == (paths.path_problem(text) is None), text


def test_path_pattern_length() -> None:
    assert paths.path_problem("a" * paths.MAX_PATH_LENGTH) is None
    with pytest.raises(ApiError) as caught:
        validation.parse_body(schemas.AssetPatch, b'{"path": "%s"}' % (b"a" * (paths.MAX_PATH_LENGTH + 1)))
    assert caught.value.extra["field"] == "path"


@pytest.mark.parametrize(
    ("body", "field", "phrase"),
    [
        (b'{"name": 7}', "name", "must be a string"),
        (b'{"name": "  "}', "name", "must not be empty"),
        (b'{"name": null}', "name", "must not be null"),
        (b"{}", "name", "is required"),
        (b'{"name": "x", "colour": 1, "b": 2}', "b", "unknown field(s): b, colour"),
    ],
)
def test_errors_name_the_field(body: bytes, field: str, phrase: str) -> None:
    with pytest.raises(ApiError) as caught:
        validation.parse_body(schemas.NewProject, body)
    assert caught.value.code == "invalid_argument" and caught.value.extra["field"] == field
    assert phrase in caught.value.message


def test_nested_errors_name_the_field_and_index() -> None:
    body = b'{"owner_type": "user", "owner_id": "u", "size": 1, "part_size": 65536,'
    body += b' "files": [{"path": "a", "size": 1}, {"path": "../b", "size": 0}]}'
    with pytest.raises(ApiError) as caught:
        validation.parse_body(schemas.NewUpload, body)
    assert caught.value.extra == {"field": "files", "index": 1}
    assert caught.value.message == "`files[1].path` must not have `.` or `..` segments"


def test_bodies_that_are_not_objects(env: Env) -> None:
    for body in (b"{not json", b"[1]", b'"x"', b'{"name": "\\ud800"}'):
        err = error(env.ada.post("/api/v1/projects", content=body), 400, "invalid_argument")
        assert "field" not in err, body


def test_query_integers_are_plain_digits(env: Env) -> None:
    project_id = ok(env.ada.post("/api/v1/projects", json={"name": "digits"}), 201)["project_id"]
    for limit in ("²", "+5", " 5", "1_0", "5.0"):
        response = env.ada.get("/api/v1/assets", params={"project_id": project_id, "limit": limit})
        assert error(response, 400, "invalid_argument")["field"] == "limit", limit
    for number in ("²", "٣"):
        response = env.ada.post(f"/api/v1/uploads/upl_x/parts/{number}/target", json={"sha256": "a" * 64, "size": 1})
        assert error(response, 400, "invalid_argument")["field"] == "number", number


def test_openapi_is_served_as_json(env: Env) -> None:
    response = env.anon.get("/api/v1/openapi.json")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document(response.json()["info"]["version"])


def test_405_allows_every_method_of_the_path(env: Env) -> None:
    for path, methods in operations_by_path().items():
        url = re.sub(r"{number}", "1", re.sub(r"{(\w+)}", r"x_\1", path))
        served = set(methods) | ({"HEAD"} if "GET" in methods else set())
        for method in sorted({"OPTIONS", "GET", "POST", "PUT", "PATCH", "DELETE"} - served):
            response = env.ada.request(method, url)
            assert error(response, 405, "invalid_argument"), (method, url)
            assert set(response.headers["allow"].split(", ")) == served, (method, url, response.headers["allow"])


def test_malformed_signed_urls_are_refused_not_failed(env: Env) -> None:
    for query in ({"expires": "²", "signature": "ab"}, {"expires": "1", "signature": "é"}):
        response = env.anon.get("/api/v1/contents/cnt_x/data", params=query)
        assert error(response, 403, "permission_denied")["reason"] == "bad_signature", query
        response = env.anon.put("/api/v1/uploads/upl_x/parts/1", params={**query, "sha256": "a" * 64, "size": "0"})
        assert error(response, 403, "permission_denied")["reason"] == "bad_signature", query


def test_no_string_the_server_keeps_holds_a_nul(env: Env) -> None:
    # PostgreSQL's text cannot hold one: refused up front, never a 500 from the database.
    project_id = ok(env.ada.post("/api/v1/projects", json={"name": "nul"}), 201)["project_id"]
    refused = [
        (env.ada.post("/api/v1/projects", json={"name": "a\x00"}), "name"),
        (env.ada.post("/api/v1/projects", json={"name": "a", "description": "\x00"}), "description"),
        (env.ada.get("/api/v1/assets", params={"project_id": project_id, "path_prefix": "\x00"}), "path_prefix"),
        (env.ada.get("/api/v1/projects/prj%00x"), "project_id"),
        (env.ada.get("/api/v1/assets/ast_x/download", params={"content_id": "\x00"}), "content_id"),
    ]
    for response, field in refused:
        assert error(response, 400, "invalid_argument")["field"] == field
    assert "NUL" in refused[0][0].json()["error"]["message"]
