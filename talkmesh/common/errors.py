"""Typed errors that handlers raise; the server interceptor turns them into gRPC statuses.

A status carries a human message (``field: reason``) and, for programs, the standard
``google.rpc`` details in the ``grpc-status-details-bin`` trailer: ``BadRequest`` field violations
for INVALID_ARGUMENT, ``ResourceInfo`` for NOT_FOUND, ``RetryInfo`` (and ``QuotaFailure`` when a
quota was hit) for RESOURCE_EXHAUSTED and UNAVAILABLE. ``ErrorDetails.of(rpc_error)`` reads them
back on the client side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class TalkmeshError(Exception):
    """Base of errors that map to a gRPC status. ``retryable`` tells clients whether to retry."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[Message]:
        """The ``google.rpc`` detail messages attached to the status (none by default)."""
        return []

    def rename_field(self, rename: Callable[[str], str | None]) -> None:
        """Names the offending field as ``rename`` says (None: as it is): in the message (its
        ``field:`` prefix, after a stage's name) and in the details. An edge uses it to name the
        caller's own request field instead of the stage config's it became."""
        old = getattr(self, "field", "")
        new = rename(old) if old else None
        if new is None or new == old:
            return
        setattr(self, "field", new)  # noqa: B010 (InvalidArgument, NotFound: details() read it)
        self.message = renamed_message(self.message, old, new)
        self.args = (self.message,)


class InvalidArgument(TalkmeshError):
    """Bad input. The message always starts with the offending field's name."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def details(self) -> list[Message]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.reason)
                ]
            )
        ]


class AlreadyExists(InvalidArgument):
    """A name that is already taken (an avatar's). The message starts with the field's name."""

    code = grpc.StatusCode.ALREADY_EXISTS


class NotFound(TalkmeshError):
    """An unknown voice, avatar or session. ``what`` is its kind ("voice", "avatar")."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, field: str, value: str, what: str = "", *, hint: str = "") -> None:
        """``hint`` (what to use instead: "voices of that language: ...") ends the message."""
        super().__init__(f"{field}: {what or 'item'} {value!r} not found" + (f"; {hint}" if hint else ""))
        self.field = field
        self.value = value
        self.what = what or "item"

    def details(self) -> list[Message]:
        return [
            error_details_pb2.ResourceInfo(resource_type=self.what, resource_name=self.value, description=self.message),
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=self.field, description=f"{self.what} not found")
                ]
            ),
        ]


class _Retryable(TalkmeshError):
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> list[Message]:
        if self.retry_after is None:
            return []
        return [error_details_pb2.RetryInfo(retry_delay=_duration(self.retry_after))]


class ResourceExhausted(_Retryable):
    """Overload or a quota. ``quota`` names the limit (e.g. "streams per key"), ``subject`` whose."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self, message: str, *, retry_after: float | None = 1.0, quota: str = "", subject: str = "", field: str = ""
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.quota = quota
        self.subject = subject
        #: the request field refused for want of room (a live turn's ``text.turn_id``), if one is
        self.field = field

    def details(self) -> list[Message]:
        out = super().details()
        if self.quota:
            out.append(
                error_details_pb2.QuotaFailure(
                    violations=[error_details_pb2.QuotaFailure.Violation(subject=self.subject, description=self.quota)]
                )
            )
        return out


class Unavailable(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(TalkmeshError):
    """The request is well formed but the system's state does not allow it now (e.g. a name that
    several avatars carry). With ``field`` the message is ``field: reason`` and the status names
    the field (BadRequest details), as InvalidArgument's."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message

    def details(self) -> list[Message]:
        if not self.field:
            return []
        violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.reason)
        return [error_details_pb2.BadRequest(field_violations=[violation])]


class DeadlineExceeded(TalkmeshError):
    """A stream went quiet for longer than its idle limit, or a stage did not answer in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(TalkmeshError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TalkmeshError):
    code = grpc.StatusCode.PERMISSION_DENIED


class StageError(TalkmeshError):
    """A downstream stage failed: keeps its status code (and details) and names the stage."""

    def __init__(self, stage: str, exc: grpc.aio.AioRpcError) -> None:
        details = exc.details() or exc.code().name
        # A stage that relays another stage's error has already named it ("renderer: ..." coming
        # back through the encoder): the client sees the stage that failed, once.
        super().__init__(details if named_by_a_stage(details) else f"{stage}: {details}")
        self.stage = stage
        self.code = exc.code()
        self.retryable = self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self._details = ErrorDetails.of(exc).messages

    def details(self) -> list[Message]:
        return list(self._details)

    @property
    def field(self) -> str:
        """The stage's offending field (its first BadRequest violation's), or ""."""
        for d in self._details:
            if isinstance(d, error_details_pb2.BadRequest) and d.field_violations:
                return str(d.field_violations[0].field)
        return ""

    def rename_field(self, rename: Callable[[str], str | None]) -> None:
        # the field is in the stage's details (BadRequest, and a ResourceInfo's description)
        renames: dict[str, str] = {}
        for d in self._details:
            if isinstance(d, error_details_pb2.BadRequest):
                for v in d.field_violations:
                    new = rename(v.field)
                    if new is not None and new != v.field:
                        renames[v.field] = new
                        v.field = new
        for old, new in renames.items():
            self.message = renamed_message(self.message, old, new)
            for d in self._details:
                if isinstance(d, error_details_pb2.ResourceInfo):
                    d.description = renamed_message(d.description, old, new)
        self.args = (self.message,)


def internal_error(exc: BaseException) -> TalkmeshError:
    """An exception no code expected, as the INTERNAL error it becomes (its text for the logs and
    the server's own callers; an edge scrubs it for external clients)."""
    return TalkmeshError(f"internal error: {type(exc).__name__}: {exc}")


def renamed_message(message: str, old: str, new: str) -> str:
    """``message`` with its ``old:`` field prefix (after a stage's ``name:``, if any) as ``new:``."""
    return message.replace(f"{old}:", f"{new}:", 1)


#: What a channel's own status says when it could not reach its target at all.
_UNREACHABLE = ("failed to connect", "connection refused", "all backends failing", "errors resolving")


def named_by_a_stage(message: str) -> bool:
    """``message`` starts with a service's name ("tts: ..."): a stage's status (relayed by the
    gateway), not one about the call's own target."""
    return message.split(":", 1)[0] in _stage_names()


def unreachable(exc: grpc.aio.AioRpcError) -> bool:
    """The call's own channel could not reach its target (a client: the gateway): UNAVAILABLE
    saying so, and not a stage the target could not reach ("tts: failed to connect ...")."""
    details = exc.details() or ""
    return (
        exc.code() == grpc.StatusCode.UNAVAILABLE
        and not named_by_a_stage(details)
        and any(text in details.lower() for text in _UNREACHABLE)
    )


def _stage_names() -> tuple[str, ...]:
    from talkmesh.common.registry import NAMES

    return NAMES


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return d


def status_trailer(code: grpc.StatusCode, message: str, details: Sequence[Message]) -> tuple[tuple[str, bytes], ...]:
    """The ``grpc-status-details-bin`` trailing metadata for ``details`` (empty when there are none)."""
    if not details:
        return ()
    status = status_pb2.Status(code=code.value[0], message=message)
    for d in details:
        packed = any_pb2.Any()
        packed.Pack(d)
        status.details.append(packed)
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


@dataclass
class FieldViolation:
    field: str
    description: str


@dataclass
class ErrorDetails:
    """The machine-readable part of a talkmesh error status (client side)."""

    field_violations: list[FieldViolation] = field(default_factory=list)
    resource_type: str = ""
    resource_name: str = ""
    retry_delay: float | None = None
    quota_violations: list[FieldViolation] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    @classmethod
    def of(cls, error: Any) -> ErrorDetails:
        """Parses the details of a ``grpc.aio.AioRpcError`` (or anything with ``trailing_metadata()``)."""
        out = cls()
        trailing = getattr(error, "trailing_metadata", None)
        metadata = trailing() if callable(trailing) else None
        raw = None
        for key, value in metadata or ():
            if key == STATUS_DETAILS_KEY:
                raw = value
        if not raw:
            return out
        status = status_pb2.Status.FromString(raw if isinstance(raw, bytes) else raw.encode("latin-1"))
        for packed in status.details:
            for cls_ in (
                error_details_pb2.BadRequest,
                error_details_pb2.ResourceInfo,
                error_details_pb2.RetryInfo,
                error_details_pb2.QuotaFailure,
            ):
                if packed.Is(cls_.DESCRIPTOR):
                    msg = cls_()
                    packed.Unpack(msg)
                    out.messages.append(msg)
                    out._add(msg)
        return out

    def _add(self, msg: Message) -> None:
        if isinstance(msg, error_details_pb2.BadRequest):
            self.field_violations += [FieldViolation(v.field, v.description) for v in msg.field_violations]
        elif isinstance(msg, error_details_pb2.ResourceInfo):
            self.resource_type, self.resource_name = msg.resource_type, msg.resource_name
        elif isinstance(msg, error_details_pb2.RetryInfo):
            self.retry_delay = msg.retry_delay.ToNanoseconds() / 1e9
        elif isinstance(msg, error_details_pb2.QuotaFailure):
            self.quota_violations += [FieldViolation(v.subject, v.description) for v in msg.violations]

    @property
    def field(self) -> str:
        """The first offending field's name, or ""."""
        return self.field_violations[0].field if self.field_violations else ""


# -- what external clients see ----------------------------------------------------------------------
#: Statuses whose message is replaced as a whole for external clients: their text is an exception's.
_OPAQUE_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)
_ADDRESS = re.compile(
    r"(?:\b(?:ipv4|ipv6|dns|unix|unix-abstract|vsock):(?://)?/?[^\s,;)'\"]+)"  # gRPC resolver addresses
    r"|\[[0-9a-fA-F:.%\w]*:[0-9a-fA-F:.%\w]*\](?::\d+)?"  # [v6]:port
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"  # v4[:port]
    r"|\b[A-Za-z][\w.-]*:\d{2,5}\b"  # host:port
)
_PATH = re.compile(r"(?<![\w/.:-])(?:~|\.{1,2})?/(?:[^\s/'\",;:()]+/)*[^\s/'\",;:()]*")


def scrub_text(text: str) -> str:
    """``text`` without network addresses and file paths (replaced by ``<address>``, ``<path>``)."""
    return _PATH.sub("<path>", _ADDRESS.sub("<address>", text))


def scrub(code: grpc.StatusCode, message: str, details: Sequence[Message]) -> tuple[str, list[Message]]:
    """The status an external client may see: for INTERNAL, UNKNOWN and DATA_LOSS only the stage
    that failed (if named) and that it was internal; otherwise the message and the details' text
    without internal addresses and file paths."""
    if code in _OPAQUE_CODES:
        stage = message.split(":", 1)[0] if ":" in message else ""
        where = f"{stage}: " if stage in _stage_names() else ""
        return f"{where}internal error (see the server's logs)", []
    out: list[Message] = []
    for d in details:
        copy = type(d)()
        copy.CopyFrom(d)
        _scrub_fields(copy)
        out.append(copy)
    return scrub_text(message), out


def _scrub_fields(msg: Message) -> None:
    for fd, value in msg.ListFields():
        repeated = fd.is_repeated
        if fd.type == fd.TYPE_STRING:
            if repeated:
                value[:] = [scrub_text(v) for v in value]
            else:
                setattr(msg, fd.name, scrub_text(value))
        elif fd.type == fd.TYPE_MESSAGE and not fd.message_type.GetOptions().map_entry:
            for item in value if repeated else [value]:
                _scrub_fields(item)


def status_of(code: int) -> grpc.StatusCode:
    """The gRPC status of a code number (a LiveError's ``code``); UNKNOWN for a number that is none."""
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)


def scrub_live_error(code: int, message: str) -> str:
    """The message of an in-band error (a LiveError: a gRPC status code number and a message) as an
    external client may see it: the same scrub as a status's (``scrub``)."""
    return scrub(status_of(code), message, [])[0]
