"""Live session ids: the owning replica's address, for the replicas that share the secret only."""

from __future__ import annotations

import base64

from services.gateway.live import SessionIds


def test_replicas_with_the_secret_recover_the_owner_and_a_client_learns_nothing_from_the_id() -> None:
    owner = SessionIds("10.42.7.19:50051", b"shared")
    other = SessionIds("10.42.3.2:50051", b"shared")
    ids = {owner.new() for _ in range(50)}
    assert len(ids) == 50
    for sid in ids:
        assert other.owner(sid) == "10.42.7.19:50051"
        sealed = sid.split(".")[0]
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        assert b"10.42" not in raw and b"50051" not in raw, "the address is not readable in the id"
    assert len({sid.split(".")[0] for sid in ids}) == 50, "each id seals the address with its own nonce"


def test_a_forged_or_foreign_id_names_no_owner() -> None:
    owner = SessionIds("10.42.7.19:50051", b"shared")
    sid = owner.new()
    sealed, nonce, mac = sid.split(".")
    plain = base64.urlsafe_b64encode(b"203.0.113.9:22").decode().rstrip("=")
    assert SessionIds("x:1", b"another secret").owner(sid) is None
    assert owner.owner(f"{plain}.{nonce}.{mac}") is None, "an address of the client's choosing"
    tampered = nonce[:-1] + ("1" if nonce.endswith("0") else "0")
    assert owner.owner(f"{sealed}.{tampered}.{mac}") is None
    assert owner.owner("not-an-id") is None and owner.owner("a.b.c") is None
    assert owner.owner(f"{sealed}.{nonce}.{mac[:-1]}\u00e9") is None, "any characters: not found, not a crash"
    assert owner.owner(sid + "x" * 300) is None
