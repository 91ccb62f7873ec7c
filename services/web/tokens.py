"""Browser access tokens: who may use a web edge that others can reach.

A site that embeds the page (a customer-service avatar, a tutor) signs in its own users; its
backend then mints a short-lived token for the visitor and hands it to the page. The edge checks
the token on every API request and WebSocket handshake, so the edge can face the internet without
a login proxy in front of it (docs/WEB.md "Access tokens").

The token is a JSON Web Token (RFC 7519) signed with HMAC-SHA256 (``alg`` HS256, RFC 7518), so any
backend's JWT library mints it: ``jwt.encode({"sub": "alice", "exp": now + 300}, secret,
algorithm="HS256")``. Claims read here:

- ``exp`` (required): when it stops being accepted (seconds since the epoch). A token that lives
  longer than ``web.token_max_ttl_seconds`` from now is refused (a forgotten "forever" token).
- ``nbf`` (optional): not before.
- ``sub`` (optional): who (put on the edge's span of the request as ``enduser.id``; at most 128
  characters).
- ``scope`` (optional): space-separated actions it allows, of ``SCOPES`` (other words, a site's
  own scopes, grant nothing here); without it, ``DEFAULT_SCOPES`` (everything but ``avatars``:
  uploading and deleting avatars must be granted by name).
  Lists (``GET /v1/voices``, ``GET /v1/avatars``) need a valid token of any scope.
- ``sessions`` (optional): live session ids (``SessionStarted.session_id``) its holder may watch
  although this edge did not open them for the same user: a backend that drives a session (an LLM
  agent through the gRPC API) lets its visitor's page watch it (``/v1/live/watch``; the token must
  allow ``watch``). At most ``MAX_TOKEN_SESSIONS``.

Only HS256 is accepted (never ``none``, never an algorithm the token names for itself). The secret
file holds one secret per line: tokens are minted with the first and accepted with any, so a new
secret is put first, the edges restarted, and the old one removed once its tokens expired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from talkmesh.common.names import MAX_SESSION_ID_CHARS

#: What a token may allow (its ``scope`` claim): the web edge's actions.
SCOPES = ("speak", "live", "watch", "avatars")
#: What a token without a ``scope`` claim allows: the page's use, not changing the avatars.
DEFAULT_SCOPES = ("speak", "live", "watch")
#: The only signature algorithm accepted.
ALGORITHM = "HS256"
#: Shortest secret accepted (characters of the file's line): HS256 wants a key of at least its
#: hash's 256 bits; 32 random characters of `talkmesh token secret` carry 192 bits or more.
MIN_SECRET_CHARS = 32
#: Longest token looked at (an Authorization header or a query parameter).
MAX_TOKEN_CHARS = 4096
#: Longest header segment looked at (a JWT's header is a few dozen characters).
MAX_HEADER_CHARS = 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
#: Most session ids a token's ``sessions`` claim may list.
MAX_TOKEN_SESSIONS = 16
#: Clock difference tolerated between the minting backend and the edge (seconds).
LEEWAY_SECONDS = 30.0
#: How often (at most) an edge looks at its token secret file for a change (seconds).
TOKEN_SECRETS_CHECK_SECONDS = 2.0


class TokenError(ValueError):
    """A token that is not accepted; the message says why (never anything of the secret)."""


@dataclass(frozen=True)
class Access:
    """What a checked token allows."""

    #: the token's ``sub``, cut to 128 characters: for spans and logs only (two subjects may share
    #: those 128: ``owner`` tells them apart)
    subject: str
    scopes: frozenset[str]
    expires: float
    #: who the token speaks for when it has no ``sub``: its ``jti`` if it has one, else the hash of
    #: its payload (every spelling of one token has the same; no token is kept in memory)
    identity: str = ""
    #: who the token speaks for, for ownership (Watch) and the per-user limits: the SHA-256 of its
    #: whole ``sub`` ("sub:<hex>"), else ``identity`` ("token:..."): never a cut ``sub``
    owner: str = ""
    #: the session ids it may watch whoever opened them (its ``sessions`` claim)
    sessions: frozenset[str] = frozenset()

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # only the alphabet (the decoder would skip other characters: one token, many spellings)
    if not _SEGMENT.fullmatch(text):
        raise TokenError("not a JWT (base64url segments)")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("not a JWT (base64url segments)") from None
    # canonical only: the decoder ignores the unused low bits of a last character, so each segment
    # would have up to 4 (or 16) spellings, each a "different" token to anything that counts tokens
    if _b64encode(data) != text:
        raise TokenError("not a JWT (a base64url segment is not in its canonical form)")
    return data


def _sign(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def read_secrets(path: str) -> list[bytes]:
    """The secrets of ``path`` (one per line; blank lines and ``#`` comments skipped), first the one
    that mints. Raises ``ValueError`` naming the problem (never a secret)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    found = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not found:
        raise ValueError(f"{path} holds no secret (one per line; `talkmesh token secret FILE` makes one)")
    for number, secret in enumerate(found, 1):
        if len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"{path}: secret {number} has {len(secret)} characters, fewer than {MIN_SECRET_CHARS} "
                "(`talkmesh token secret FILE` makes a random one)"
            )
    return [s.encode() for s in found]


def new_secret() -> str:
    """A random secret for the secret file (256 bits, base64url)."""
    return secrets.token_urlsafe(32)


def mint(
    secret: bytes,
    *,
    ttl_seconds: float,
    subject: str = "",
    scopes: tuple[str, ...] | None = None,
    sessions: tuple[str, ...] = (),
    now: float | None = None,
) -> str:
    """A token valid for ``ttl_seconds`` from ``now`` (what a site's backend does with its JWT
    library; here for `talkmesh token` and the tests)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"iat": issued, "exp": issued + max(1, round(ttl_seconds))}
    if subject:
        claims["sub"] = subject
    if scopes is not None:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise ValueError(f"scope: unknown {', '.join(unknown)} (known: {', '.join(SCOPES)})")
        claims["scope"] = " ".join(scopes)
    if sessions:
        claims["sessions"] = _checked_sessions(list(sessions), ValueError)
    header = _b64encode(json.dumps({"alg": ALGORITHM, "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64encode(_sign(secret, signing_input))}"


def _json_object(segment: str, what: str) -> dict[str, object]:
    try:
        value = json.loads(_b64decode(segment), parse_constant=_no_constant)
    except TokenError:
        raise
    except (ValueError, RecursionError):  # (deeply nested arrays: RecursionError)
        raise TokenError(f"its {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"its {what} is not a JSON object")
    return value


def _no_constant(name: str) -> object:
    raise TokenError(f"{name} is not a number (seconds since 1970)")


def _number(claims: dict[str, object], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError
        return float(value)
    except (ValueError, OverflowError):  # (an integer of 400 digits)
        raise TokenError(f"its {name} claim is not a number (seconds since 1970)") from None


def _checked_sessions(sessions: object, error: type[ValueError]) -> list[str]:
    """A ``sessions`` claim: a list of at most MAX_TOKEN_SESSIONS session ids, else ``error``."""
    if not isinstance(sessions, list) or not all(
        isinstance(s, str) and 0 < len(s) <= MAX_SESSION_ID_CHARS for s in sessions
    ):
        raise error("its sessions claim is not a list of session ids")
    if len(sessions) > MAX_TOKEN_SESSIONS:
        raise error(f"its sessions claim lists {len(sessions)} sessions, more than {MAX_TOKEN_SESSIONS}")
    return sessions


def check(token: str, secret_list: list[bytes], *, max_ttl_seconds: float, now: float | None = None) -> Access:
    """What ``token`` allows, or ``TokenError`` saying why it is not accepted."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(f"longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("not a JWT (header.payload.signature)")
    if len(parts[0]) > MAX_HEADER_CHARS:
        raise TokenError(f"its header is longer than {MAX_HEADER_CHARS} characters")
    header = _json_object(parts[0], "header")
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"signed with {str(header.get('alg'))[:20]!r}; this edge accepts {ALGORITHM} only")
    if "crit" in header:  # extensions it must understand (RFC 7515 4.1.11): none are
        raise TokenError("its header names critical extensions (crit) this edge does not know")
    signature = _b64decode(parts[2])
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
    # every secret is tried (no early exit that would time which one matched)
    matched = False
    for secret in secret_list:
        matched |= hmac.compare_digest(_sign(secret, signing_input), signature)
    if not matched:
        raise TokenError("its signature does not match this edge's secret (web.token_secret_file)")
    claims = _json_object(parts[1], "payload")
    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        identity = "jti:" + hashlib.sha256(jti.encode("utf-8", "replace")).hexdigest()
    else:
        identity = "payload:" + hashlib.sha256(_b64decode(parts[1])).hexdigest()
    now = time.time() if now is None else now
    expires = _number(claims, "exp")
    if expires is None:
        raise TokenError("it has no exp claim (every token must expire)")
    if expires + LEEWAY_SECONDS <= now:
        raise TokenError(f"it expired {now - expires:.0f} s ago: get a new one from the site")
    if expires - now > max_ttl_seconds + LEEWAY_SECONDS:
        raise TokenError(
            f"it is valid for {expires - now:.0f} s more, longer than this edge accepts "
            f"(web.token_max_ttl_seconds {max_ttl_seconds:.0f})"
        )
    not_before = _number(claims, "nbf")
    if not_before is not None and not_before - LEEWAY_SECONDS > now:
        raise TokenError(f"it is not valid before {not_before - now:.0f} s from now (nbf)")
    subject = claims.get("sub", "")
    if not isinstance(subject, str):
        raise TokenError("its sub claim is not a string")
    scope = claims.get("scope")
    if scope is None:
        scopes = frozenset(DEFAULT_SCOPES)
    elif isinstance(scope, str):
        scopes = frozenset(scope.split()) & frozenset(SCOPES)  # others (a site's own) grant nothing here
    else:
        raise TokenError("its scope claim is not a string (space-separated scopes)")
    if subject:
        owner = "sub:" + hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()
    else:
        owner = f"token:{identity}"
    sessions = _checked_sessions(claims.get("sessions", []), TokenError)
    return Access(
        subject=subject[:128],
        scopes=scopes,
        expires=expires,
        identity=identity,
        owner=owner,
        sessions=frozenset(sessions),
    )
