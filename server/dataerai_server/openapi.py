"""The OpenAPI 3.1 document served at ``GET /api/v1/openapi.json``, generated.

It is made from the operation table (:mod:`operations`) and the pydantic models the server
validates requests with (:mod:`schemas`), so it states exactly what the server enforces
and lists every route it serves. Built once per process and served as bytes.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import schemas
from .operations import OPERATIONS, PATH_PARAMETERS, Operation, operations_by_path

_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _models() -> list[type[BaseModel]]:
    """Every model a body or an answer refers to, in table order, without repeats."""
    found: dict[str, type[BaseModel]] = {schemas.Error.__name__: schemas.Error}
    for operation in OPERATIONS:
        candidates: list[type[BaseModel]] = [] if operation.body is None else [operation.body]
        for reply in operation.replies.values():
            if isinstance(reply.model, tuple):
                candidates.extend(reply.model)
            elif reply.model is not None:
                candidates.append(reply.model)
        for model in candidates:
            found.setdefault(model.__name__, model)
    return list(found.values())


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: absent stands for null, so the null branch goes."""
    branches = schema.get("anyOf")
    if branches is None:
        return schema
    kept = [branch for branch in branches if branch.get("type") != "null"]
    rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    return {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}


def _query_parameters(model: type[schemas.Query]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema["properties"].items():
        prop = _without_null({key: value for key, value in prop.items() if key != "title"})
        description = prop.pop("description", None)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _path_parameters(operation: Operation) -> list[dict[str, Any]]:
    parameters = []
    for name in operation.path_parameters:
        schema, description = PATH_PARAMETERS[name]
        parameters.append(
            {"name": name, "in": "path", "required": True, "description": description, "schema": dict(schema)}
        )
    return parameters


def _content(model: type[BaseModel] | tuple[type[BaseModel], ...] | None, media_type: str) -> dict[str, Any]:
    if media_type != "application/json":
        return {media_type: {"schema": {"type": "string", "format": "binary"}}}
    if model is None:
        return {media_type: {"schema": {"type": "object"}}}
    if isinstance(model, tuple):
        return {media_type: {"schema": {"oneOf": [_ref(one) for one in model]}}}
    return {media_type: {"schema": _ref(model)}}


def _operation(operation: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in operation.statuses():
        reply = operation.replies.get(status)
        if status == 400 and operation.checked_fields:
            fields = ", ".join(f"`{name}`" for name in operation.checked_fields)
            responses["400"] = {
                "description": f"an error; besides what the schema states, the server checks {fields} against "
                "stored state or across fields, and names the field it refuses",
                "content": {"application/json": {"schema": _ref(schemas.Error)}},
            }
        elif reply is None:
            responses[str(status)] = {"$ref": "#/components/responses/Error"}
        elif status == 204:
            responses[str(status)] = {"description": reply.description}
        else:
            responses[str(status)] = {
                "description": reply.description,
                "content": _content(reply.model, reply.media_type),
            }
        headers = operation.headers.get(status)
        if headers:
            base = responses[str(status)]
            if "$ref" in base:
                base = {"description": "an error", "content": {"application/json": {"schema": _ref(schemas.Error)}}}
            base["headers"] = {
                name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()
            }
            responses[str(status)] = base
    document: dict[str, Any] = {"summary": operation.summary, "operationId": operation.handler}
    if operation.description:
        document["description"] = operation.description
    if operation.scope is None:
        document["security"] = []
    else:
        document["description"] = f"Needs a `{operation.scope}` token. " + document.get("description", "")
    parameters = _path_parameters(operation)
    if operation.query is not None:
        parameters.extend(_query_parameters(operation.query))
    for name, text in operation.request_headers.items():
        parameters.append({"name": name, "in": "header", "required": False, "description": text,
                           "schema": {"type": "string"}})
    if parameters:
        document["parameters"] = parameters
    if operation.body is not None:
        document["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(operation.body)}}}
    elif operation.raw_body:
        document["requestBody"] = {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    document["responses"] = responses
    return document


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document; ``version`` is the server's version."""
    _, definitions = models_json_schema([(model, "validation") for model in _models()], ref_template=_REF)
    paths = {
        path: {method.lower(): _operation(operation) for method, operation in methods.items()}
        for path, methods in operations_by_path().items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dataerai repository API",
            "version": version,
            "description": "The contract in prose is docs/http-api.md in the Dataerai repository.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "`dtk_…` token"}},
            "schemas": definitions.get("$defs", {}),
            "responses": {
                "Error": {
                    "description": "an error; `error.code` is from the shared catalogue",
                    "content": {"application/json": {"schema": _ref(schemas.Error)}},
                }
            },
        },
    }


@cache
def openapi_bytes(version: str) -> bytes:
    """The document as the JSON the server sends (made once)."""
    return json.dumps(openapi_document(version), separators=(",", ":")).encode()
