"""Carrying the trace context and the request id to the next service in gRPC metadata.

The client side of what the server interceptor reads (talkmesh.common.interceptors). It needs
only grpc, the OpenTelemetry API and the request-id context variable, so the Python client
(``talkmesh-client``) ships it without any server code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from opentelemetry import propagate

from talkmesh.common.logs import request_id_var

REQUEST_ID_KEY = "x-request-id"
#: Trailing metadata of a call a stage served with a warning about the request (one line per value).
WARNING_KEY = "talkmesh-warning"
#: Trailing metadata of a TTS call: the voice it spoke with, as ListVoices lists it.
VOICE_KEY = "talkmesh-voice"


def metadata_values(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> list[str]:
    """The values of ``key`` in a call's (trailing) metadata, in order."""
    return [v.decode() if isinstance(v, bytes) else v for k, v in metadata or () if k == key]


@dataclass(frozen=True)
class StageNotes:
    """What a TTS call's trailers say about the request it served: its warnings (``WARNING_KEY``)
    and the voice it spoke with, as listed (``VOICE_KEY``; "" from a TTS older than the key)."""

    warnings: list[str] = field(default_factory=list)
    voice: str = ""

    @classmethod
    def of(cls, trailers: Iterable[tuple[str, str | bytes]] | None) -> StageNotes:
        trailers = tuple(trailers or ())
        return cls(metadata_values(trailers, WARNING_KEY), next(iter(metadata_values(trailers, VOICE_KEY)), ""))


def outgoing_metadata(metadata: Iterable[tuple[str, str | bytes]] | None = None) -> grpc.aio.Metadata:
    """``metadata`` plus the current trace context and request id (what the client interceptors add)."""
    md = grpc.aio.Metadata(*(metadata or ()))
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for k, v in carrier.items():
        md[k] = v
    rid = request_id_var.get()
    if rid and REQUEST_ID_KEY not in md:
        md[REQUEST_ID_KEY] = rid
    return md


def adopt_request_id(named: str) -> str:
    """The request's id for the rest of this call: the one its message names (``named``), else the
    call's own (its x-request-id metadata, or the one the server interceptor generated). Set for
    the call's log lines, the metadata of the calls it makes and its span, so that the id a client
    sees in its answers is the one in every service's logs."""
    import uuid

    from opentelemetry import trace

    rid = named or request_id_var.get() or uuid.uuid4().hex
    request_id_var.set(rid)
    trace.get_current_span().set_attribute("talkmesh.request_id", rid)
    return rid


def _details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=outgoing_metadata(details.metadata),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _UnaryUnaryPropagation(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(_details(client_call_details), request)


class _UnaryStreamPropagation(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(_details(client_call_details), request)


class _StreamUnaryPropagation(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(_details(client_call_details), request_iterator)


class _StreamStreamPropagation(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(_details(client_call_details), request_iterator)


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Carry the trace context and the request id to the next service in gRPC metadata.

    One instance per RPC kind: grpc.aio files each interceptor under the first kind it matches.
    """
    return [_UnaryUnaryPropagation(), _UnaryStreamPropagation(), _StreamUnaryPropagation(), _StreamStreamPropagation()]
