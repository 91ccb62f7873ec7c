"""API keys at the gateway: ``authorization: Bearer <key>``, checked in a server interceptor.

Keys are stored hashed (SHA-256 of the key; keys are 256-bit random strings made by
``talkmesh keys new``, so a fast hash is enough: there is nothing to guess) in a YAML or JSON file
(``auth.api_keys_file``; in Kubernetes the Secret ``talkmesh-api-keys``)::

    defaults:                 # limits of keys that set none (these are the built-in defaults)
      concurrent_streams: 4
      requests_per_minute: 120
      uploads_per_hour: 20
      avatar_disk_bytes: 2147483648
    keys:
      - name: alice           # shown in logs and metrics, stored as the owner of her avatars
        role: user            # user | admin (admin: deletes and lists every avatar)
        sha256: 3f2a...       # sha256 hex of the key
        limits: {requests_per_minute: 600}

The file is read again when it changes (checked at most every ``auth.reload_check_seconds``); a
file that does not parse keeps the keys loaded before (logged). Per-key counters survive reloads.

Every call except health and reflection needs a key. Limits per key: streams and calls in flight
(``concurrent_streams``), calls per minute (a token bucket: bursts up to the per-minute number),
avatar uploads per hour (token bucket) and the avatars' bytes on disk (checked by the renderer,
which knows them). Over a limit: RESOURCE_EXHAUSTED with ``RetryInfo`` (when to try again) and
``QuotaFailure`` (which limit, whose key).

The counters are this replica's, in memory: with N gateway replicas a key can reach N times each
limit (docs/SECURITY.md, "Limits are per gateway replica", says why they are not divided by N).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import yaml

from talkmesh.common.config import ConfigError, build_config
from talkmesh.common.errors import ResourceExhausted, Unauthenticated
from talkmesh.common.files import WatchedFile
from talkmesh.common.principal import ROLES, USER, Principal, current_principal

log = logging.getLogger(__name__)

#: Calls that need no key: probes and tools.
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
#: Calls that count as an avatar upload.
UPLOAD_METHODS = ("/talkmesh.v1.Gateway/RegisterAvatar", "/talkmesh.v1.Gateway/RegisterAvatarWithProgress")
KEY_PREFIX = "tm_"


@dataclasses.dataclass(frozen=True)
class KeyLimits:
    """Limits of one API key on one gateway replica (0 = unlimited)."""

    # Calls in flight at once (a Speak stream, a live session, a list call...).
    concurrent_streams: int = 4
    # Calls started per minute (a token bucket holding up to this many).
    requests_per_minute: int = 120
    # Avatar registrations per hour (a token bucket holding up to this many).
    uploads_per_hour: int = 20
    # Bytes the key's avatars may take on a renderer's disk (stored frames and precomputes).
    avatar_disk_bytes: int = 2 * 1024**3

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ConfigError.at(f.name, "must not be negative (0 = unlimited)")


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    """API keys at the gateway (``auth``); off while ``api_keys_file`` is empty."""

    # YAML/JSON file of hashed keys (see services/gateway/auth.py); "" = no keys, every call allowed.
    api_keys_file: str = ""
    # A second keys file, same format, for the mesh's own clients (the web edge's key, which
    # `talkmesh up --api-keys` writes here so that the users' file is left as it is). Read only
    # while api_keys_file is set; a name in both files is one key's counters.
    service_keys_file: str = ""
    # How often (seconds) the file's modification time is checked for a reload.
    reload_check_seconds: float = 2.0

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys_file)

    def validate(self) -> None:
        if self.reload_check_seconds < 0:
            raise ConfigError.at("reload_check_seconds", "must not be negative")


@dataclasses.dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    role: str = USER
    limits: KeyLimits = dataclasses.field(default_factory=KeyLimits)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_keys(data: Any, where: str = "api keys") -> dict[str, ApiKey]:
    """The keys of a keys file's content, by hash; ConfigError naming the entry that is wrong."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: top level must be a mapping with 'keys'")
    unknown = set(data) - {"defaults", "keys"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    defaults = dataclasses.asdict(_limits(data.get("defaults") or {}, f"{where}: defaults"))
    out: dict[str, ApiKey] = {}
    names: set[str] = set()
    for i, entry in enumerate(data.get("keys") or []):
        at = f"{where}: keys[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}: expected a mapping")
        unknown = set(entry) - {"name", "role", "sha256", "limits"}
        if unknown:
            raise ConfigError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}")
        name, role, digest = str(entry.get("name", "")), str(entry.get("role", USER)), str(entry.get("sha256", ""))
        if not name or len(name) > 64 or not all(c.isalnum() or c in "-_.@" for c in name):
            raise ConfigError(f"{at}.name: 1..64 characters of letters, digits, -_.@")
        if name in names:
            raise ConfigError(f"{at}.name: {name!r} is used twice")
        if role not in ROLES:
            raise ConfigError(f"{at}.role: must be one of {', '.join(ROLES)}")
        digest = digest.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{at}.sha256: must be the 64 hex digits of sha256(key) (talkmesh keys new)")
        limits = _limits({**defaults, **(entry.get("limits") or {})}, f"{at}.limits")
        names.add(name)
        out[digest] = ApiKey(name=name, sha256=digest, role=role, limits=limits)
    return out


def _limits(data: Any, at: str) -> KeyLimits:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{at}: expected a mapping")
    try:
        return build_config(KeyLimits, [data])
    except ConfigError as exc:
        raise ConfigError(f"{at}: {exc}") from None


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity`` per ``period`` seconds."""

    def __init__(self, capacity: int, period: float, clock: Callable[[], float]) -> None:
        self.capacity = capacity
        self.rate = capacity / period
        self.tokens = float(capacity)
        self.clock = clock
        self.stamp = clock()

    def take(self) -> float:
        """Takes a token: 0.0, or the seconds until one is available (nothing taken)."""
        now = self.clock()
        self.tokens = min(float(self.capacity), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclasses.dataclass
class _Usage:
    """A key's counters (kept by name across reloads)."""

    active: int = 0
    calls: TokenBucket | None = None
    uploads: TokenBucket | None = None
    limits: KeyLimits | None = None


def read_keys_file(path: str) -> dict[str, ApiKey]:
    """The keys of the YAML (or JSON) file at ``path``; ConfigError when it does not parse."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_keys(data or {}, path)


class KeyStore:
    """The keys of ``auth.api_keys_file`` (and ``auth.service_keys_file``), each file read again
    when it changes (``talkmesh.common.files.WatchedFile``), and the keys' counters."""

    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._usage: dict[str, _Usage] = {}
        self.service: WatchedFile[dict[str, ApiKey]] | None = None
        if config.service_keys_file:
            self.service = self._watch("auth.service_keys_file", config.service_keys_file, read_keys_file)
        self._users = self._watch("auth.api_keys_file", config.api_keys_file, self._read_user_keys)
        log.info("API keys loaded from %s: %d key(s)", config.api_keys_file, len(self._users.value))

    def _watch(
        self, field: str, path: str, parse: Callable[[str], dict[str, ApiKey]]
    ) -> WatchedFile[dict[str, ApiKey]]:
        try:
            return WatchedFile(
                path, parse, check_seconds=self.config.reload_check_seconds, what="API keys file", clock=self.clock
            )
        except (OSError, ValueError) as exc:
            raise ConfigError.at(field, f"{exc}") from None

    def _read_user_keys(self, path: str) -> dict[str, ApiKey]:
        keys = read_keys_file(path)
        if self.service is not None:
            # a service key's name (the web edge's) owns what it registers and has its own
            # counters: a user key of the same name would share both
            clash = {k.name for k in keys.values()} & {k.name for k in self.service.value.values()}
            if clash:
                raise ConfigError(f"key name(s) {', '.join(sorted(clash))} are taken by auth.service_keys_file")
        return keys

    @property
    def reloads(self) -> int:
        """How many times the users' keys file was loaded (1 at start)."""
        return self._users.loads

    def lookup(self, key: str) -> ApiKey | None:
        digest = hash_key(key)
        found = self._users.get().get(digest)
        if found is None and self.service is not None:
            found = self.service.get().get(digest)
        return found

    def usage(self, key: ApiKey) -> _Usage:
        u = self._usage.setdefault(key.name, _Usage())
        if u.limits != key.limits:  # new key, or its limits changed in a reload
            lim = key.limits
            u.limits = lim
            u.calls = TokenBucket(lim.requests_per_minute, 60.0, self.clock) if lim.requests_per_minute else None
            u.uploads = TokenBucket(lim.uploads_per_hour, 3600.0, self.clock) if lim.uploads_per_hour else None
        return u


def bearer(metadata: Any) -> str:
    """The key of an ``authorization: Bearer <key>`` entry ("" when there is none)."""
    for k, v in metadata or ():
        if k == "authorization" and isinstance(v, str):
            scheme, _, token = v.strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call (but health and reflection) and applies the key's limits.

    Runs inside the common interceptor (talkmesh.common.interceptors), so its errors become
    statuses with rich details, counted and traced like a handler's. The key's principal is in
    ``current_principal`` for the handler (avatar owners, live session owners).
    """

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        upload = method in UPLOAD_METHODS
        kinds = {
            (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
            (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
            (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
            (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
        }
        attr, make, streaming = kinds[(handler.request_streaming, handler.response_streaming)]
        behavior = getattr(handler, attr)
        wrapped = self._stream(behavior, upload) if streaming else self._unary(behavior, upload)
        return make(  # type: ignore[no-any-return]
            wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    def _admit(self, context: grpc.aio.ServicerContext, upload: bool) -> _Usage:
        md = context.invocation_metadata()
        token = bearer(md)
        if not token:
            sent = any(k == "authorization" for k, _ in md or ())
            what = "expected 'Bearer <key>'" if sent else "missing API key"
            raise Unauthenticated(f"authorization: {what} (send the metadata 'authorization: Bearer <key>')")
        key = self.keys.lookup(token)
        if key is None:
            raise Unauthenticated("authorization: unknown API key")
        usage = self.keys.usage(key)
        lim = key.limits
        if lim.concurrent_streams and usage.active >= lim.concurrent_streams:
            raise ResourceExhausted(
                f"API key {key.name!r}: {usage.active} calls in flight (limit {lim.concurrent_streams})",
                retry_after=1.0,
                quota="concurrent_streams",
                subject=f"api_key:{key.name}",
            )
        for bucket, what, limit in (
            (usage.calls, "requests_per_minute", lim.requests_per_minute),
            (usage.uploads if upload else None, "uploads_per_hour", lim.uploads_per_hour),
        ):
            wait = bucket.take() if bucket is not None else 0.0
            if wait > 0:
                raise ResourceExhausted(
                    f"API key {key.name!r}: over {limit} {what.replace('_', ' ')}; retry in {wait:.1f} s",
                    retry_after=wait,
                    quota=what,
                    subject=f"api_key:{key.name}",
                )
        authorization = next((v for k, v in md or () if k == "authorization" and isinstance(v, str)), "")
        current_principal.set(
            Principal(
                name=key.name, role=key.role, avatar_disk_bytes=lim.avatar_disk_bytes, authorization=authorization
            )
        )
        usage.active += 1
        return usage

    def _unary(self, behavior: Callable[..., Awaitable[Any]], upload: bool) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            usage = self._admit(context, upload)
            try:
                return await behavior(request, context)
            finally:
                usage.active -= 1

        return wrapper

    def _stream(self, behavior: Callable[..., AsyncGenerator[Any, None]], upload: bool) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            usage = self._admit(context, upload)
            try:
                async with contextlib.aclosing(behavior(request, context)) as items:
                    async for item in items:
                        yield item
            finally:
                usage.active -= 1

        return wrapper
