"""Access tokens (services/web/tokens.py): HS256 JWTs checked against an independent reference
(RFC 7515's own example) and every way a token can be wrong."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from services.web import tokens
from services.web.config import WebSettings
from talkmesh.common.config import ConfigError

SECRET = b"s" * 40
NOW = 1_800_000_000.0

# RFC 7515, Appendix A.1: a JWS signed with HMAC SHA-256, its key (a JWK's "k") and its claims.
RFC_KEY = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
RFC_TOKEN = (
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
)
RFC_EXP = 1300819380


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_the_rfc_example_is_accepted_and_its_tampered_forms_are_not() -> None:
    key = base64.urlsafe_b64decode(RFC_KEY + "=" * (-len(RFC_KEY) % 4))
    access = tokens.check(RFC_TOKEN, [key], max_ttl_seconds=3600, now=RFC_EXP - 60)
    assert access.scopes == frozenset(tokens.DEFAULT_SCOPES) and access.subject == ""
    assert not access.allows("avatars"), "changing the avatars is granted by name only"
    assert access.expires == RFC_EXP
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.check(RFC_TOKEN, [key], max_ttl_seconds=3600, now=RFC_EXP + 120)
    with pytest.raises(tokens.TokenError, match="signature"):
        tokens.check(RFC_TOKEN, [key[:-1] + b"x"], max_ttl_seconds=3600, now=RFC_EXP - 60)
    header, _, signature = RFC_TOKEN.split(".")
    forged = _b64({"iss": "joe", "exp": RFC_EXP + 10**6, "http://example.com/is_root": True})
    with pytest.raises(tokens.TokenError, match="signature"):
        tokens.check(f"{header}.{forged}.{signature}", [key], max_ttl_seconds=10**7, now=RFC_EXP - 60)


def test_mint_and_check_round_trip_with_rotation() -> None:
    token = tokens.mint(SECRET, ttl_seconds=300, subject="alice", scopes=("speak",), now=NOW)
    access = tokens.check(token, [b"n" * 40, SECRET], max_ttl_seconds=3600, now=NOW + 10)
    assert access.subject == "alice" and access.allows("speak") and not access.allows("live")
    assert access.expires == NOW + 300
    with pytest.raises(tokens.TokenError, match="signature"):
        tokens.check(token, [b"n" * 40], max_ttl_seconds=3600, now=NOW)
    with pytest.raises(ValueError, match="scope: unknown"):
        tokens.mint(SECRET, ttl_seconds=60, scopes=("speek",))


def _signed(header: dict[str, object], claims: object, secret: bytes = SECRET) -> str:
    head, body = _b64(header), _b64(claims)
    sig = base64.urlsafe_b64encode(tokens._sign(secret, f"{head}.{body}".encode())).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


HS = {"alg": "HS256", "typ": "JWT"}


def _raw(header: bytes, payload: bytes) -> str:
    """A token signed with SECRET whose segments are these bytes as they are."""
    head, body = (base64.urlsafe_b64encode(x).rstrip(b"=").decode() for x in (header, payload))
    sig = base64.urlsafe_b64encode(tokens._sign(SECRET, f"{head}.{body}".encode())).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("", "not a JWT"),
        ("a.b", "not a JWT"),
        ("x" * 5000, "longer than"),
        (_signed({"alg": "none"}, {"exp": NOW + 60}), "HS256 only"),
        (_signed({"alg": "HS512"}, {"exp": NOW + 60}), "HS256 only"),
        (_signed({"typ": "JWT"}, {"exp": NOW + 60}), "HS256 only"),
        (_signed({**HS, "crit": ["exp"]}, {"exp": NOW + 60}), "critical extensions"),
        (_signed(HS, {"exp": NOW + 60}).rsplit(".", 1)[0] + ".", "not a JWT"),
        (_signed(HS, {"exp": NOW + 60}).rsplit(".", 1)[0], "not a JWT"),
        (_signed(HS, {"sub": "x"}), "no exp"),
        (_signed(HS, {"exp": "tomorrow"}), "not a number"),
        (_signed(HS, {"exp": True}), "not a number"),
        (_signed(HS, {"exp": float("nan")}), "not a number"),  # (Python's json writes and reads NaN)
        (_signed(HS, {"exp": 10**400}), "not a number"),  # (no float holds it)
        (_raw(b'{"alg":"HS256"}', b"[" * 3000), "not JSON"),  # deeper than the JSON parser goes
        (_raw(b"[" * 3000, b"{}"), "header is longer"),
        (_signed(HS, {"exp": NOW + 60}) + "!!!", "not a JWT"),  # one token, one spelling
        (_signed(HS, {"exp": NOW + 60, "nbf": float("nan")}), "not a number"),
        (_signed(HS, {"exp": NOW - 120}), "expired"),
        (_signed(HS, {"exp": NOW + 7 * 86400}), "longer than this edge accepts"),
        (_signed(HS, {"exp": NOW + 60, "nbf": NOW + 600}), "not valid before"),
        (_signed(HS, {"exp": NOW + 60, "sub": 7}), "sub claim"),
        (_signed(HS, {"exp": NOW + 60, "scope": ["speak"]}), "scope claim"),
        (_signed(HS, ["exp"]), "not a JSON object"),
        (_signed(HS, {"exp": NOW + 60}, secret=b"t" * 40), "signature"),
    ],
)
def test_refused_tokens_say_why(token: str, why: str) -> None:
    with pytest.raises(tokens.TokenError, match=why):
        tokens.check(token, [SECRET], max_ttl_seconds=86400, now=NOW)


def test_leeway_and_scopes_of_the_site() -> None:
    # a backend's clock a little ahead or behind: 30 s either way
    assert tokens.check(_signed(HS, {"exp": NOW - 10}), [SECRET], max_ttl_seconds=60, now=NOW)
    assert tokens.check(_signed(HS, {"exp": NOW + 60, "nbf": NOW + 10}), [SECRET], max_ttl_seconds=60, now=NOW)
    # a site's own scopes grant nothing here; ours are read among them
    access = tokens.check(
        _signed(HS, {"exp": NOW + 60, "scope": "openid profile live"}), [SECRET], max_ttl_seconds=60, now=NOW
    )
    assert access.scopes == {"live"}
    empty = tokens.check(_signed(HS, {"exp": NOW + 60, "scope": ""}), [SECRET], max_ttl_seconds=60, now=NOW)
    assert empty.scopes == set()


def test_the_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    assert WebSettings().token_secrets() == []
    for text, why in [
        ("", "holds no secret"),
        ("# only a comment\n\n", "holds no secret"),
        ("short\n", "secret 1 has 5 characters"),
        (f"{'a' * 40}\nshort\n", "secret 2 has 5 characters"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=why) as exc:
            WebSettings(token_secret_file=str(path)).token_secrets()
        assert "token_secret_file" in str(exc.value)
        assert "short" not in str(exc.value), "a secret is never in a message"
    with pytest.raises(ConfigError, match="No such file"):
        WebSettings(token_secret_file=str(tmp_path / "missing")).token_secrets()
    first, second = tokens.new_secret(), tokens.new_secret()
    assert first != second and len(first) >= tokens.MIN_SECRET_CHARS
    path.write_text(f"# current\n{first}\n  {second}  \n")
    assert WebSettings(token_secret_file=str(path)).token_secrets() == [first.encode(), second.encode()]
    with pytest.raises(ConfigError, match="token_max_ttl_seconds"):
        WebSettings(token_max_ttl_seconds=0).validate()


@pytest.mark.parametrize(
    ("claim", "why"),
    [("abc", "not a list of session ids"), ([""], "not a list"), (["s"] * 17, "lists 17 sessions, more than 16")],
)
def test_a_sessions_claim_that_is_not_a_short_list_of_ids_is_refused(claim: object, why: str) -> None:
    with pytest.raises(tokens.TokenError, match=why):
        tokens.check(_signed(HS, {"exp": NOW + 600, "sessions": claim}), [SECRET], max_ttl_seconds=3600, now=NOW)
    with pytest.raises(ValueError, match=why):  # (minted only as the edges accept it)
        tokens.mint(SECRET, ttl_seconds=600, sessions=tuple(claim) if isinstance(claim, list) else (claim, ""))
    token = tokens.mint(SECRET, ttl_seconds=600, sessions=("a.b.c",), now=NOW)
    assert tokens.check(token, [SECRET], max_ttl_seconds=3600, now=NOW).sessions == {"a.b.c"}
