"""Typed errors that handlers raise; the server interceptor turns them into gRPC statuses."""

from __future__ import annotations

import grpc


class TalkmeshError(Exception):
    """Base of errors that map to a gRPC status. ``retryable`` tells clients whether to retry."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TalkmeshError):
    """Bad input. The message always starts with the offending field's name."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(TalkmeshError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, field: str, value: str, what: str = "") -> None:
        super().__init__(f"{field}: {what or 'item'} {value!r} not found")
        self.field = field


class ResourceExhausted(TalkmeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class Unavailable(TalkmeshError):
    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class FailedPrecondition(TalkmeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
