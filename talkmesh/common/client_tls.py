"""TLS client channels whose certificates are reloaded when their files change.

gRPC Python has no hook for that on the client side (channel credentials are fixed when the
channel is made), so ``ReloadingChannel`` (what ``create_channel`` returns for a TLS channel with
files) checks its files' modification times and sizes at most once a second when a call starts
(``talkmesh.common.files.WatchedFiles``), and when they changed makes a new channel with the new
credentials: new calls go over it, calls in flight finish on the old one, which is closed once
they have (or at ``close``). The dependency watch's health checks start a call every second, so a
rotated client certificate is taken within about a second even on an idle mesh. A half-rotated
pair (new key, old certificate) is not taken, as on the server side (``talkmesh.common.tls``).
Shipped in the client-only wheel (clients/python): it needs only grpc, the shared ``aio`` and
``files`` modules and, for mutual TLS, ``cryptography``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from talkmesh.common.aio import TaskSet
from talkmesh.common.channel import ClientTLS
from talkmesh.common.files import Inconsistent, WatchedFiles

log = logging.getLogger(__name__)


def key_matches_certificate(key_pem: bytes, cert_pem: bytes) -> bool:
    """True when the private key belongs to the first certificate of the chain."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt))


def require_matching_pair(key_pem: bytes, cert_pem: bytes) -> None:
    """Raises ``Inconsistent`` (the loaded pair stays) when the key is not the certificate's."""
    if not key_matches_certificate(key_pem, cert_pem):
        raise Inconsistent("the key does not match the certificate (rotation in progress?)")


#: How often (at most) a client channel looks at its certificate files.
CLIENT_CHECK_SECONDS = 1.0
#: How long a replaced channel may keep its calls in flight before they are cancelled.
RETIRED_GRACE_SECONDS = 3600.0


def client_files(tls: ClientTLS) -> list[str]:
    return [p for p in (tls.ca_file, tls.cert_file, tls.key_file) if p]


class ReloadingChannel(grpc.aio.Channel):
    """A TLS client channel that is made again with fresh credentials when its files change.

    ``make(credentials)`` makes the underlying channel (with the options and interceptors of the
    caller). Stubs built on this object keep working across reloads: their multi-callables look up
    the current channel at each call.
    """

    def __init__(
        self,
        tls: ClientTLS,
        make: Callable[[grpc.ChannelCredentials], grpc.aio.Channel],
        *,
        check_seconds: float = CLIENT_CHECK_SECONDS,
    ) -> None:
        self.tls = tls
        self._make = make
        self._retired: TaskSet | None = None
        self._old: list[grpc.aio.Channel] = []
        self._files = WatchedFiles(
            client_files(tls),
            self._load,
            check_seconds=check_seconds,
            what=f"client TLS certificate {tls.cert_file or tls.ca_file}",
            on_change=lambda old, _new: self._retire(old),
        )

    @property
    def check_seconds(self) -> float:
        """At most how often the files are looked at (when a call starts)."""
        return self._files.check_seconds

    @check_seconds.setter
    def check_seconds(self, value: float) -> None:
        self._files.check_seconds = value

    @property
    def generation(self) -> int:
        """The underlying channel's generation: 0 at start, +1 per reload."""
        return self._files.loads - 1

    # the current channel, made again when the files changed
    def current(self) -> grpc.aio.Channel:
        return self._files.get()

    def _load(self, loaded: grpc.aio.Channel | None) -> grpc.aio.Channel:
        tls = self.tls
        # at start the pair is not checked (a mismatch fails at the handshake); a reload keeps the
        # old pair until the key matches the certificate again
        if loaded is not None and tls.cert_file:
            require_matching_pair(Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes())
        return self._make(tls.credentials())

    def _retire(self, old: grpc.aio.Channel) -> None:
        """Closes ``old`` once its calls are done (``close(grace)`` returns as soon as they are)."""
        self._old.append(old)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a call made from a thread): closed at close()
        if self._retired is None:
            self._retired = TaskSet("tls-retired-channels")
        self._retired.spawn(self._close_old(old), name="close")

    async def _close_old(self, old: grpc.aio.Channel) -> None:
        await old.close(grace=RETIRED_GRACE_SECONDS)
        if old in self._old:
            self._old.remove(old)

    # -- grpc.aio.Channel ---------------------------------------------------------------------
    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        if self._retired is not None:
            await self._retired.aclose()
        for old in self._old:
            await old.close(grace)
        self._old.clear()
        await self._files.value.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._files.value.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> Any:  # fmt: skip
        return _Current(self, "unary_unary", (method, request_serializer, response_deserializer, _registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:  # fmt: skip
        return _Current(self, "unary_stream", (method, request_serializer, response_deserializer, _registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:  # fmt: skip
        return _Current(self, "stream_unary", (method, request_serializer, response_deserializer, _registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:  # fmt: skip
        return _Current(self, "stream_stream", (method, request_serializer, response_deserializer, _registered_method))


class _Current:
    """A multi-callable of whichever channel is current when it is called."""

    def __init__(self, owner: ReloadingChannel, kind: str, args: tuple[Any, ...]) -> None:
        self.owner = owner
        self.kind = kind
        self.args = args
        self._generation = -1
        self._callable: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self.owner.current()
        if self._generation != self.owner.generation or self._callable is None:
            self._callable = getattr(channel, self.kind)(*self.args)
            self._generation = self.owner.generation
        return self._callable(*args, **kwargs)
