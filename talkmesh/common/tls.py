"""TLS for servers (certificates reloaded when their files change) and for client channels.

``ReloadingServerCertificates(cfg.tls).credentials()`` gives gRPC *dynamic* server credentials: gRPC asks a fetcher for
the certificate configuration at each new TLS handshake; the fetcher compares the files'
modification times (and sizes) with the ones it loaded and returns a new configuration only when
they changed. A half-rotated pair (new key, old certificate) is not taken: the fetcher keeps the
previous configuration until the key matches the certificate again, so a rotation done in two
writes never breaks new handshakes. Kubernetes updates a mounted Secret atomically (a symlink
swap), cert-manager renews by rewriting the Secret: both are picked up without a restart.

The client side has no such hook in gRPC Python (channel credentials are fixed when the channel is
made), so ``ReloadingChannel`` (what ``create_channel`` returns for a TLS channel) checks its files'
modification times and sizes at most once a second when a call starts, and when they changed makes
a new channel with the new credentials: new calls go over it, calls in flight finish on the old one,
which is closed once they have (or at ``close``). The dependency watch's health checks start a call
every second, so a rotated client certificate is taken within about a second even on an idle mesh.
A half-rotated pair is not taken, as on the server side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from talkmesh.common.aio import TaskSet
from talkmesh.common.config import ClientTLS, ConfigError, ServerTLS

log = logging.getLogger(__name__)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError.at(what, f"cannot read {path}: {exc.strerror or exc}") from None


def _stamp(paths: list[str]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


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


class ReloadingServerCertificates:
    """The certificate configuration of one server, re-read when its files change."""

    def __init__(self, tls: ServerTLS) -> None:
        if not tls.enabled:
            raise ValueError("TLS is not configured")
        self.tls = tls
        self._paths = [tls.cert_file, tls.key_file] + ([tls.client_ca_file] if tls.client_ca_file else [])
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[int, int], ...] = ()
        #: how many certificate configurations were loaded (1 at start, +1 per reload)
        self.loads = 0
        self.initial = self._load()
        if self.initial is None:
            raise ConfigError.at("tls.key_file", f"{tls.key_file} is not the key of the certificate {tls.cert_file}")

    def _load(self) -> grpc.ServerCertificateConfiguration | None:
        tls = self.tls
        try:
            stamp = _stamp(self._paths)
        except OSError as exc:
            if self.loads == 0:
                raise ConfigError.at("tls.cert_file", f"cannot read the TLS files: {exc}") from None
            log.warning("TLS files unreadable, keeping the loaded certificate: %s", exc)
            return None
        cert = _read(tls.cert_file, "tls.cert_file")
        key = _read(tls.key_file, "tls.key_file")
        ca = _read(tls.client_ca_file, "tls.client_ca_file") if tls.client_ca_file else None
        if not key_matches_certificate(key, cert):
            if self.loads:
                log.warning("TLS key and certificate do not match (rotation in progress?); keeping the loaded one")
            return None
        self._stamp = stamp
        self.loads += 1
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else None (keep the current)."""
        with self._lock:
            try:
                if _stamp(self._paths) == self._stamp:
                    return None
                config = self._load()
            except Exception:  # never let a bad file break the handshake thread
                log.exception("reloading the TLS certificate failed; keeping the loaded one")
                return None
            if config is not None:
                log.info("TLS certificate reloaded from %s", self.tls.cert_file)
            return config

    def credentials(self) -> grpc.ServerCredentials:
        tls = self.tls
        return grpc.dynamic_ssl_server_credentials(
            self.initial,
            self.fetch,
            require_client_authentication=bool(tls.client_ca_file) and tls.require_client_cert,
        )


# -- client side ---------------------------------------------------------------------------------
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
        self._paths = client_files(tls)
        self.check_seconds = check_seconds
        self._stamp = _stamp(self._paths)
        self._channel = make(tls.credentials())
        #: the underlying channel's generation: 0 at start, +1 per reload
        self.generation = 0
        self._checked = time.monotonic()
        self._retired: TaskSet | None = None
        self._old: list[grpc.aio.Channel] = []

    # the current channel, made again when the files changed
    def current(self) -> grpc.aio.Channel:
        now = time.monotonic()
        if now - self._checked >= self.check_seconds:
            self._checked = now
            self._maybe_reload()
        return self._channel

    def _maybe_reload(self) -> None:
        try:
            stamp = _stamp(self._paths)
            if stamp == self._stamp:
                return
            if self.tls.cert_file and not key_matches_certificate(
                Path(self.tls.key_file).read_bytes(), Path(self.tls.cert_file).read_bytes()
            ):
                log.warning("client TLS key and certificate do not match (rotation in progress?); keeping the old")
                return
            creds = self.tls.credentials()
        except Exception as exc:  # never let a bad file fail a call: the loaded credentials stay
            log.warning("client TLS files unreadable, keeping the loaded certificate: %s", exc)
            return
        old, self._channel = self._channel, self._make(creds)
        self._stamp = stamp
        self.generation += 1
        log.info("client TLS certificate reloaded from %s", self.tls.cert_file or self.tls.ca_file)
        self._retire(old)

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
        await self._channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

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
