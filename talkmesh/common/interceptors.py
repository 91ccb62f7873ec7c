"""Server interceptor: request ids, admission control, metrics, tracing, error mapping (the client
side, carrying trace context and request ids, is ``talkmesh.common.propagation``).

Handlers carry logic only: they raise ``TalkmeshError`` subclasses (or let a downstream
``AioRpcError`` through) and the server interceptor turns that into the right gRPC status. Streams
that the client cancelled are recorded as CANCELLED in metrics and spans (the stock
instrumentation reports them as OK).

Spans follow OpenTelemetry's RPC conventions for servers: ``rpc.service`` and ``rpc.method``
apart, ``rpc.grpc.status_code`` (a number) on every call, and an error status only for the
server's faults (``SPAN_ERRORS``); a client's mistake or hang-up is not the service's error (its
message is in ``talkmesh.status_message``, a cancel in ``talkmesh.cancelled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from enum import StrEnum
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor
from opentelemetry import context as context_api
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from talkmesh.common.aio import wait_event
from talkmesh.common.errors import (
    DeadlineExceeded,
    ResourceExhausted,
    TalkmeshError,
    Unauthenticated,
    Unavailable,
    internal_error,
    scrub,
    status_trailer,
)
from talkmesh.common.logs import request_id_var
from talkmesh.common.principal import PRINCIPAL_KEY, current_principal, principal_of
from talkmesh.common.propagation import REQUEST_ID_KEY
from talkmesh.common.streams import CheckedRequests, Undecodable, lenient_deserializer
from talkmesh.common.telemetry import Rejection, Series, Telemetry

log = logging.getLogger(__name__)

# Methods that bypass admission control, draining and stream metrics.
_INFRA_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
#: Statuses that are the server's or a stage's fault, not the client's request: logged as warnings,
#: and what the error-ratio alert counts (deploy/prometheus/talkmesh.rules.yaml; a test checks).
SERVER_FAULTS = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED"})
#: Statuses that make a server span's status an error (OpenTelemetry's gRPC conventions).
SPAN_ERRORS = SERVER_FAULTS | {"UNIMPLEMENTED"}
_STATUS_NUMBERS = {c.name: c.value[0] for c in grpc.StatusCode}
#: The status of a call that succeeded, in ``talkmesh_streams_total{code}``.
OK = grpc.StatusCode.OK.name


class Direction(StrEnum):
    """``talkmesh_stream_bytes_total{direction}``: the bytes a service received or sent."""

    IN = "in"
    OUT = "out"


class _MetadataGetter(Getter[dict[str, str]]):
    def get(self, carrier: dict[str, str], key: str) -> list[str] | None:
        v = carrier.get(key)
        return [v] if v is not None else None

    def keys(self, carrier: dict[str, str]) -> list[str]:
        return list(carrier)


class AdmissionState:
    """Counts calls in flight and refuses new ones when full or draining.

    Streams (any call with a streamed request or answer: a Speak, a live session, an upload, a
    Render) count against ``limit`` (``server.max_concurrent_streams``); unary calls (ListVoices,
    ListAvatars, GetAvatar, DeleteAvatar: small, quick metadata calls) against ``unary_limit``
    (``server.max_concurrent_unary``) of their own, so a replica whose media streams are full still
    answers them. Both count as in flight for draining."""

    def __init__(self, limit: int, unary_limit: int = 64) -> None:
        self.limit = limit
        self.unary_limit = unary_limit
        #: streams in flight
        self.active = 0
        #: unary calls in flight
        self.unary_active = 0
        self.draining = False
        #: why new streams are refused with UNAVAILABLE ("renderer: not answering health checks")
        self.unavailable = ""
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self, unary: bool = False) -> None:
        if unary:
            self.unary_active += 1
        else:
            self.active += 1
        self._idle.clear()

    def leave(self, unary: bool = False) -> None:
        if unary:
            self.unary_active -= 1
        else:
            self.active -= 1
        if self.active == 0 and self.unary_active == 0:
            self._idle.set()

    def full(self, unary: bool) -> str:
        """Why a new call of this kind is refused for want of room ("" when there is room)."""
        if unary:
            if self.unary_active >= self.unary_limit:
                n, limit = self.unary_active, self.unary_limit
                return f"{n} unary calls in flight (limit {limit}, server.max_concurrent_unary)"
            return ""
        if self.active >= self.limit:
            return f"{self.active} streams in flight (limit {self.limit}, server.max_concurrent_streams)"
        return ""

    async def wait_idle(self, timeout: float) -> bool:
        return await wait_event(self._idle, timeout)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        telemetry: Telemetry,
        admission: AdmissionState,
        *,
        write_timeout: float,
        edge: bool = False,
        require_principal: bool = False,
    ) -> None:
        self.telemetry = telemetry
        self.admission = admission
        self.write_timeout = write_timeout
        #: a stage behind a gateway with API keys (server.require_principal): calls without the
        #: gateway's principal are refused (health and reflection never reach this interceptor's checks)
        self.require_principal = require_principal and not edge
        #: the public edge (the gateway): statuses go to external clients, scrubbed of internal
        #: addresses, paths and exception text; the caller's principal is never read from metadata
        self.edge = edge

    def known_series(self, methods: Iterable[str]) -> list[Series]:
        """What this interceptor records for any service, known before its first call: each of
        ``methods`` (``/package.Service/Method``) finished OK, refusals while draining or full
        (``Rejection.DEPENDENCY`` only where ``Service.dependencies_changed`` refuses: that
        service's own ``known_series`` says so), and the bytes received and sent."""
        m = self.telemetry.metrics
        return [
            Series(m.streams_total, methods, (OK,)),
            Series(m.rejections_total, (Rejection.DRAINING, Rejection.OVERLOAD)),
            Series(m.stream_bytes_total, Direction),
        ]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_INFRA_PREFIXES):
            return handler
        # Every request is parsed leniently: bytes that do not parse reach the wrapper as
        # ``Undecodable`` and become INVALID_ARGUMENT naming the field, counted like any other error.
        # The (de)serializers also count the bytes on the wire (talkmesh_stream_bytes_total).
        bytes_total = self.telemetry.metrics.stream_bytes_total
        service = self.telemetry.service
        deserializer = _counted(_lenient(handler.request_deserializer), bytes_total.labels(service, Direction.IN))
        serializer = _counted_out(handler.response_serializer, bytes_total.labels(service, Direction.OUT))
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method, streaming_requests=True),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, streaming_requests=False),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method, streaming_requests=True),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._wrap_unary(handler.unary_unary, method, streaming_requests=False),
            request_deserializer=deserializer,
            response_serializer=serializer,
        )

    # -- the shared envelope ------------------------------------------------------------------
    def _begin(self, method: str, context: grpc.aio.ServicerContext) -> tuple[trace.Span, float]:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        rid = md.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        # Set for the rest of this RPC's task. Never reset: a cancelled stream's generator is closed
        # from another task, where resetting a token of this context would fail.
        request_id_var.set(rid)
        if not self.edge:
            # Inside the mesh: the API key the gateway authenticated, for the stages this call
            # reaches next (the edge sets its own from the client's key, never from metadata).
            current_principal.set(principal_of(md.items()))
        parent = propagate.extract(md, getter=_MetadataGetter())
        span = self.telemetry.tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": method.lstrip("/").rpartition("/")[0],
                "rpc.method": method.rpartition("/")[2],
                "talkmesh.service": self.telemetry.service,
                "talkmesh.request_id": rid,
            },
        )
        context_api.attach(trace.set_span_in_context(span))
        return span, time.perf_counter()

    async def _admit(self, method: str, context: grpc.aio.ServicerContext, unary: bool) -> None:
        m = self.telemetry.metrics
        svc = self.telemetry.service
        error: TalkmeshError | None = None
        full = self.admission.full(unary)
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        if self.require_principal and principal_of(md.items()) is None:
            error = Unauthenticated(
                f"{PRINCIPAL_KEY}: missing; this stage serves the mesh only while the gateway has API keys "
                "(server.require_principal): call the gateway with an API key"
            )
        elif self.admission.draining:
            m.rejections_total.labels(svc, Rejection.DRAINING).inc()
            error = Unavailable("server is draining; retry on another replica", retry_after=0.5)
        elif self.admission.unavailable:
            m.rejections_total.labels(svc, Rejection.DEPENDENCY).inc()
            error = Unavailable(self.admission.unavailable, retry_after=1.0)
        elif full:
            m.rejections_total.labels(svc, Rejection.OVERLOAD).inc()
            error = ResourceExhausted(
                f"{full}; retry later",
                quota="unary calls in flight per replica" if unary else "streams in flight per replica",
                subject=svc,
            )
        if error is not None:
            m.streams_total.labels(svc, method, error.code.name).inc()
            # the caller's id, else one chosen now: in the log line and the trailers, as for a served call
            request_id_var.set(md.get(REQUEST_ID_KEY) or uuid.uuid4().hex)
            log.info(  # as _finish logs a call
                "%s %s refused: %s",
                method,
                error.code.name,
                error.message,
                extra={"fields": {"method": method, "code": error.code.name, "seconds": 0.0}},
            )
            await context.abort(
                error.code,
                error.message,
                trailing_metadata=(
                    status_trailer(error.code, error.message, error.details()) + _request_id_trailer(context)
                ),
            )

    async def _fail(
        self, exc: BaseException, context: grpc.aio.ServicerContext, span: trace.Span, said: list[str]
    ) -> grpc.StatusCode:
        """Ends the call with ``exc``'s status; its message (before an edge scrubs it) goes into
        ``said``, for the call's log line."""
        rich: list[Any] = []
        if isinstance(exc, TalkmeshError):
            code, details = exc.code, exc.message
            rich = exc.details()
        elif isinstance(exc, grpc.aio.AioRpcError):
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.CANCELLED:
                # A downstream stream was cancelled because our own caller went away.
                code = grpc.StatusCode.CANCELLED
        else:
            log.exception("unhandled error in handler")
            code, details = grpc.StatusCode.INTERNAL, internal_error(exc).message
        if code.name in SPAN_ERRORS:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}"))
        span.set_attribute("talkmesh.status_message", details)
        said.append(details)
        if self.edge:
            shown, rich = scrub(code, details, rich)
            if shown != details:
                log.info("status to the client scrubbed; was %s: %s", code.name, details)
            details = shown
        trailer = status_trailer(code, details, rich) + _request_id_trailer(context)
        await context.abort(code, details, trailing_metadata=trailer)
        return code  # unreachable: abort raises

    def _active_gauge(self, unary: bool) -> Any:
        """``talkmesh_streams_active`` (the HPAs' metric: media work) or ``talkmesh_unary_active``."""
        m = self.telemetry.metrics
        return m.unary_active if unary else m.streams_active

    def _finish(self, method: str, code: str, span: trace.Span, start: float, unary: bool, message: str = "") -> None:
        svc = self.telemetry.service
        self.telemetry.metrics.streams_total.labels(svc, method, code).inc()
        self._active_gauge(unary).labels(svc).dec()
        self.admission.leave(unary)
        span.set_attribute("rpc.grpc.status_code", _STATUS_NUMBERS.get(code, grpc.StatusCode.UNKNOWN.value[0]))
        span.set_attribute("rpc.grpc.status_code_name", code)
        if code == "CANCELLED":
            span.set_attribute("talkmesh.cancelled", True)
        seconds = time.perf_counter() - start
        span.set_attribute("talkmesh.duration_seconds", seconds)
        span.end()
        # One line per call, with the request id (the log format adds it): what a client reports
        # by its request id is found in every service's log, with the status's message (a stream
        # that failed midway names the stage that broke it: "tts: Stream removed").
        fields = {"method": method, "code": str(code), "seconds": round(seconds, 4), **_ids(span)}
        if message:
            fields["message"] = message
        log.log(
            logging.WARNING if code in SERVER_FAULTS else logging.INFO,
            "%s %s in %.3f s%s",
            method,
            code,
            seconds,
            f": {message}" if message else "",
            extra={"fields": fields},
        )

    @contextlib.asynccontextmanager
    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        request: Any,
        streaming_requests: bool,
        unary: bool = False,
    ) -> AsyncIterator[Any]:
        """One call's envelope, the same for every kind of method: admission, span, request id and
        metrics around the handler, which runs in the body with the (checked) requests; a
        handler's error becomes the call's status here, and a client that went away becomes a
        cancellation."""
        await self._admit(method, context, unary)
        span, start = self._begin(method, context)
        self.admission.enter(unary)
        self._active_gauge(unary).labels(self.telemetry.service).inc()
        code = OK
        said: list[str] = []  # the status's message, when the call failed here
        requests = request
        try:
            try:
                requests = _checked(request, streaming_requests)
                yield requests
                context.set_trailing_metadata(_request_id_trailer(context))
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code_name(context, "UNKNOWN")
                raise
            except Exception as exc:
                if _client_gone(context, exc):
                    # The client cancelled or disconnected while we wrote or read (grpc raises
                    # from write, or a stage's stream ends): its doing, not a server error.
                    code = "CANCELLED"
                    log.debug("client went away: %s", type(exc).__name__)
                    raise asyncio.CancelledError from None
                if streaming_requests and requests is not request:
                    await _drain(requests)
                try:
                    code = (await self._fail(exc, context, span, said)).name
                except grpc.aio.AbortError:  # the status was sent (abort raises to end the call)
                    raise
                except Exception as sending:
                    # the status could not be sent: the client had gone (a SpeakStream whose
                    # caller hung up before any text fails for want of text, after it left)
                    if not _client_gone(context, sending):
                        raise
                    code = "CANCELLED"
                    raise asyncio.CancelledError from None
        except grpc.aio.AbortError:
            if code == OK:
                code = _code_name(context, "UNKNOWN")
            raise
        finally:
            self._finish(method, code, span, start, unary, said[0] if said else "")

    def _wrap_stream(
        self, behavior: Callable[..., AsyncGenerator[Any, None]], method: str, *, streaming_requests: bool
    ) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> None:
            # A coroutine that writes, not an async generator that yields: when the call is
            # cancelled, grpc cancels this task and the handler's generator is closed right here
            # (its ``finally`` blocks run now), instead of being left suspended at ``yield`` until
            # garbage collection. It also bounds how long a client that stops reading can hold us.
            write_timeout = self.write_timeout
            async with self._call(method, context, request, streaming_requests) as requests:
                # Headers go out the moment the stream is admitted: a caller that opens several
                # stages learns from them that it has capacity everywhere before it starts any
                # work (and an overloaded stage's RESOURCE_EXHAUSTED arrives in one round trip).
                # Inside the call: a client that is already gone makes this raise, and the slot
                # taken must still be given back.
                await context.send_initial_metadata(())
                async with contextlib.aclosing(behavior(requests, context)) as items:
                    async for item in items:
                        try:
                            async with asyncio.timeout(write_timeout):
                                await context.write(item)
                        except TimeoutError:
                            raise DeadlineExceeded(
                                f"the client read nothing for {write_timeout:g} s (server.write_timeout_seconds)"
                            ) from None

        return wrapper

    def _wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str, *, streaming_requests: bool
    ) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # A unary call (not an upload) counts against the unary limit, not the streams'.
            unary = not streaming_requests
            async with self._call(method, context, request, streaming_requests, unary) as requests:
                return await behavior(requests, context)

        return wrapper


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The method's deserializer, returning ``Undecodable`` instead of raising on bad bytes."""
    cls = getattr(deserializer, "__self__", None)
    if deserializer is None or not isinstance(getattr(cls, "DESCRIPTOR", None), Descriptor):
        return deserializer
    return lenient_deserializer(cls)


#: Before a client-streaming call is failed, the messages the client already sent are read (at
#: most DRAIN_MESSAGES, for at most DRAIN_SECONDS, until none comes for DRAIN_QUIET_SECONDS): a
#: client whose write is still in flight when the status arrives would otherwise see grpc's
#: "INTERNAL: Internal error from Core" instead of the status (grpc/grpc#36066). A client sending
#: fast (a whole recording, refused for its length: 64 messages in 50 ms left it writing, and 3 of 8
#: such refusals arrived as that INTERNAL) is read to its end; one that sends nothing more gets the
#: status after the quiet gap.
DRAIN_MESSAGES = 4096
DRAIN_SECONDS = 1.0
DRAIN_QUIET_SECONDS = 0.05


async def _drain(requests: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    try:
        for _ in range(DRAIN_MESSAGES):
            left = deadline - loop.time()
            if left <= 0:
                return
            async with asyncio.timeout(min(DRAIN_QUIET_SECONDS, left)):
                await anext(requests)
    except (TimeoutError, StopAsyncIteration):
        pass
    except asyncio.CancelledError:
        raise
    except Exception:  # the stream is being failed anyway; its own error is what is reported
        pass


def _counted(deserializer: Callable[[bytes], Any] | None, counter: Any) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        counter.inc(len(data))
        return deserializer(data)

    return parse


def _counted_out(serializer: Callable[[Any], bytes] | None, counter: Any) -> Callable[[Any], bytes] | None:
    if serializer is None:
        return None

    def serialize(message: Any) -> bytes:
        data = serializer(message)
        counter.inc(len(data))
        return data

    return serialize


def _checked(request: Any, streaming: bool) -> Any:
    """A request stream that raises INVALID_ARGUMENT at an undecodable message, or the request."""
    if streaming:
        return CheckedRequests(request)
    if isinstance(request, Undecodable):
        raise request.error()
    return request


def _client_gone(context: grpc.aio.ServicerContext, exc: BaseException | None = None) -> bool:
    """Whether the call was cancelled by the client (or its connection dropped).

    A send on a call whose peer is gone fails in grpc's core with ``ExecuteBatchError`` before
    the cancellation is visible on the context.
    """
    if exc is not None and type(exc).__name__ == "ExecuteBatchError":
        return True
    try:
        return bool(context.cancelled() or context.done())
    except Exception:
        return False


def _code_name(context: grpc.aio.ServicerContext, default: str) -> str:
    try:
        code = context.code()
    except Exception:
        return default
    if isinstance(code, grpc.StatusCode):
        return code.name
    return default


def _ids(span: trace.Span) -> dict[str, str]:
    """The span's trace and span ids as a JSON log line carries them (none for a no-op span)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": trace.format_trace_id(ctx.trace_id), "span_id": trace.format_span_id(ctx.span_id)}


def _request_id_trailer(context: grpc.aio.ServicerContext) -> tuple[tuple[str, Any], ...]:
    """The trailing metadata the handler set (e.g. TTS's ``talkmesh-warning``) and the call's
    request id (the one in every service's log lines for it), ``x-request-id``, on every status: a
    client that did not choose one learns it, failed or not."""
    try:
        own = tuple(context.trailing_metadata() or ())
    except Exception:  # (a test's stand-in context)
        own = ()
    rid = request_id_var.get()
    return (*own, (REQUEST_ID_KEY, rid)) if rid else own
