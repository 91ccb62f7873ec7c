"""gRPC statuses as HTTP errors: one JSON shape, the status mapped the usual way.

Every error body is ``{"error": {"code": "INVALID_ARGUMENT", "message": "file: ...", "field":
"file", "retry_after_seconds": 1.0}}``: ``code`` is the gRPC status name, ``message`` the status
message (``field: reason``), ``field`` the offending field from the status details (BadRequest),
``retry_after_seconds`` only when the server said when to retry (also a ``Retry-After`` header).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import grpc
from aiohttp import web
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from talkmesh.common.errors import ErrorDetails, scrub, unreachable

#: gRPC status -> HTTP status (as the Google API HTTP mapping does).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


#: Where a response keeps the gRPC status name it stands for (``result_code``).
RESULT_KEY = web.ResponseKey("talkmesh_code", str)
#: aiohttp's HTTP errors as (gRPC status name, field) in the JSON error.
HTTP_EXCEPTION_CODES = {
    404: ("NOT_FOUND", "path"),
    405: ("UNIMPLEMENTED", "method"),
    413: ("INVALID_ARGUMENT", "body"),
}
#: HTTP status -> the gRPC status name an answer without its own stands for (the reverse of
#: HTTP_STATUS where it is one-to-one, and aiohttp's own refusals; 400 is the client's request as
#: a whole).
_CODE_OF_STATUS = {
    **{v: c.name for c, v in HTTP_STATUS.items() if list(HTTP_STATUS.values()).count(v) == 1},
    **{status: name for status, (name, _) in HTTP_EXCEPTION_CODES.items()},
    400: "INVALID_ARGUMENT",
}


def result_code(response: web.StreamResponse) -> str:
    """The gRPC status name of an answer, for ``talkmesh_streams_total{code}`` (every service
    counts its calls by gRPC status, so the web edge's join the same alerts and panels): the one
    the answer was made with, else OK below 400, else the name its HTTP status stands for."""
    code = response.get(RESULT_KEY)
    if isinstance(code, str):
        return code
    if response.status < 400:
        return "OK"
    return _CODE_OF_STATUS.get(response.status, "INTERNAL" if response.status >= 500 else "INVALID_ARGUMENT")


def error_response(
    status: int,
    code: str,
    message: str,
    field: str = "",
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, object] = {"code": code, "message": message, "field": field}
    headers = dict(headers or {})
    if retry_after is not None:
        body["retry_after_seconds"] = retry_after
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    response = web.json_response({"error": body}, status=status, headers=headers)
    response[RESULT_KEY] = code
    return response


class HttpError(Exception):
    """An error answered to the browser (raised by handlers; the middleware renders it)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str = "",
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.headers = headers

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.field, self.retry_after, self.headers)


def from_rpc_error(exc: grpc.aio.AioRpcError) -> HttpError:
    code = exc.code()
    details = ErrorDetails.of(exc)
    message = edge_message(exc)
    return HttpError(HTTP_STATUS.get(code, 500), code.name, message, details.field, details.retry_delay)


def edge_message(exc: grpc.aio.AioRpcError) -> str:
    """A status's message as a browser may see it. The gateway scrubs its own statuses, but a
    status the channel makes here (the gateway unreachable, a TLS or connection failure) names
    addresses (``ipv4:127.0.0.1:50051: Socket closed``): the same scrub applies at this edge, and
    the channel's "failed to connect" is said in words, alike in HTTP answers and a live socket's
    final status."""
    if unreachable(exc):
        return "gateway: not reachable"
    message, _ = scrub(exc.code(), exc.details() or exc.code().name, [])
    return message


def boolean_misfit(body: object, descriptor: Descriptor, path: str = "") -> tuple[str, str] | None:
    """(field path, why) of the first JSON ``true``/``false`` given for a field that is not a bool
    (protobuf's Python parser takes them as 1/0 for an enum: ``"idle_motion": false`` would be
    read as ``IDLE_MOTION_ON``); None when there is none. Unknown fields are left to the parser."""
    if not isinstance(body, dict):
        return None
    for key, value in body.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is None:
            continue
        at = f"{path}{field.name}"
        # (protobuf 7 has is_repeated only; older ones have label)
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        values = value if repeated and isinstance(value, list) else [value]
        if field.message_type is not None:
            if not field.message_type.GetOptions().map_entry:
                for v in values:
                    if found := boolean_misfit(v, field.message_type, f"{at}."):
                        return found
        elif field.type != FieldDescriptor.TYPE_BOOL and any(isinstance(v, bool) for v in values):
            if field.enum_type is not None:
                names = ", ".join(v.name for v in field.enum_type.values)
                return at, f"true and false are not values of it; one of {names}"
            if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                return at, "true and false are not text"
            return at, "true and false are not numbers"
    return None


_UNKNOWN_FIELD = re.compile(
    r'Message type "(?P<type>[\w.]+)" has no field named "(?P<name>[^"]*)" at "(?P<at>[^"]*)"\.'
    r"\s*Available Fields\(except extensions\): \"\[[^\]]*\]\""
)


_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")


def bad_value_field(message: str) -> str:
    """The field path a ParseError's bad value sits at (``output.container``: json_format says
    "Failed to parse output field: Failed to parse container field: ..."), or "" when the error is
    not about one field's value (an unknown field: the body's fault as a whole)."""
    if "has no field named" in message:
        return ""
    path = []
    while m := _FAILED_FIELD.match(message):
        path.append(m[1])
        message = message[m.end() :]
    return ".".join(path)


_PARSE_PREFIX = re.compile(r"^(Failed to parse \w+ field: )+")
_BAD_ENUM = re.compile(r"Invalid enum value (?P<value>.*) for enum type (?P<type>[\w.]+)(?: at [\w.\[\]]+)?\.*$")
_BAD_NUMBER = re.compile(
    r"(?:Couldn't parse (?:float|integer|int\w*): (?P<value>.*?)|invalid literal for int\(\) with base 10: "
    r"'(?P<literal>.*)')(?: at [\w.\[\]]+)?\.*$"
)
_NOT_TEXT = re.compile(r"expected string or bytes-like object, got '\w+'")


def proto_names(message: str, fields_of: Mapping[str, Sequence[str]] | None = None) -> str:
    """A ParseError's message as the edge says it (WEB.md): the field path is said before it, so
    json_format's "Failed to parse x field:" prefixes go; an unknown enum name lists the names;
    an unknown field lists its siblings by their proto names (json_format gives the JSON ones,
    ``turnId``, ``endOfTurn``). ``fields_of``: what the edge accepts in place of a message type's
    own fields, by its full name (the live socket's kinds add ``half_close``)."""
    message = _PARSE_PREFIX.sub("", message)
    if m := _BAD_ENUM.match(message):
        try:
            enum = descriptor_pool.Default().FindEnumTypeByName(m["type"])
        except KeyError:
            return message
        return f"{m['value']!r} is not one of {', '.join(v.name for v in enum.values)}"
    if m := _BAD_NUMBER.match(message):
        return f"{m['value'] if m['value'] is not None else m['literal']!r} is not a number"
    if _NOT_TEXT.match(message):
        return "must be text (a JSON string)"

    def fields(m: re.Match[str]) -> str:
        if fields_of and m["type"] in fields_of:
            names = ", ".join(fields_of[m["type"]])
        else:
            try:
                desc = descriptor_pool.Default().FindMessageTypeByName(m["type"])
            except KeyError:
                return m[0]
            names = ", ".join(f.name for f in desc.fields)
        return f'Message type "{m["type"]}" has no field named "{m["name"]}" at "{m["at"]}"; its fields: {names}'

    return _UNKNOWN_FIELD.sub(fields, message)
