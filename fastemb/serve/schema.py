"""Request bodies: read with a size limit, parsed, and every field checked.

Anything wrong with what a client sent becomes an ``ApiError`` with a 4xx status and a message
that names the field and what was wrong with it; the app turns it into a JSON error response.
"""

from __future__ import annotations

from typing import Any

import orjson


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a message, the offending field (``param``)."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers or {}


async def read_json(request, limit: int) -> dict[str, Any]:
    """The request's JSON object body, read up to ``limit`` bytes (413 beyond, 422 if not JSON)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, f"Content-Length is not a number: {declared[:40]!r}") from None
        if size > limit:
            raise ApiError(413, f"request body of {size} bytes exceeds this server's limit of {limit} bytes",
                           kind="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds this server's limit of {limit} bytes", kind="request_too_large")
    if not body:
        raise ApiError(422, "request body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(422, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"request body must be a JSON object, got {_kind(data)}")
    return data


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def texts_field(body: dict[str, Any], name: str, max_texts: int) -> tuple[list[str], bool]:
    """A required ``str | [str]`` field: the texts and whether a single string was sent."""
    if name not in body:
        raise ApiError(422, f"field {name!r} is required (a string or an array of strings)", name)
    value = body[name]
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list):
        raise ApiError(422, f"field {name!r} must be a string or an array of strings, got {_kind(value)}", name)
    if not value:
        raise ApiError(422, f"field {name!r} is an empty array; send at least one text", name)
    if len(value) > max_texts:
        raise ApiError(413, f"field {name!r} has {len(value)} texts; this server takes at most {max_texts} "
                            "per request (split it)", name, kind="request_too_large")
    for i, t in enumerate(value):
        if not isinstance(t, str):
            hint = " (token arrays are not supported: send the texts)" if isinstance(t, (int, list)) else ""
            raise ApiError(422, f"{name}[{i}] must be a string, got {_kind(t)}{hint}", f"{name}[{i}]")
    return value, False


def text_field(body: dict[str, Any], name: str) -> str:
    """A required non-blank string field."""
    if name not in body:
        raise ApiError(422, f"field {name!r} is required (a string)", name)
    value = body[name]
    if not isinstance(value, str):
        raise ApiError(422, f"field {name!r} must be a string, got {_kind(value)}", name)
    if not value.strip():
        raise ApiError(422, f"field {name!r} is blank", name)
    return value


def bool_field(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(422, f"field {name!r} must be true or false, got {_kind(value)}", name)
    return value


def int_field(body: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    """An optional integer in ``[low, high]`` (``default`` when absent or null)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, f"field {name!r} must be an integer, got {_kind(value)}", name)
    if not low <= value <= high:
        raise ApiError(422, f"field {name!r} must be between {low} and {high}, got {value}", name)
    return value


def choice_field(body: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if value not in choices:
        raise ApiError(422, f"field {name!r} must be one of {', '.join(map(repr, choices))}, got {value!r:.60}", name)
    return value
