"""Who a call is for: the API key the gateway authenticated, carried to the stages in metadata.

The gateway authenticates the client's ``authorization: Bearer <key>`` (services/gateway/auth.py)
and calls every stage with the key's *name*, role and avatar disk quota in the metadata below (the
encoder passes them on to the renderer); the renderer stores avatars' owners by that name. The
gateway never forwards a client's own metadata, so a client of the gateway cannot set them.

**The entries are only as trustworthy as the stages' ports.** Anyone who can open a connection to
a stage can write them (claim any key, even an admin's). With API keys the stages therefore run
with ``server.require_principal`` (``talkmesh up --api-keys``, the Kubernetes mtls component): a
call without a principal is refused (UNAUTHENTICATED), not served as "keys are off". That stops a
caller who sends nothing; only mutual TLS (client certificates of the mesh CA) and NetworkPolicies
stop one who forges them. Without API keys no entry is sent and nothing is checked.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

PRINCIPAL_KEY = "x-talkmesh-principal"
ROLE_KEY = "x-talkmesh-role"
DISK_QUOTA_KEY = "x-talkmesh-avatar-disk-bytes"

USER, ADMIN = "user", "admin"
ROLES = (USER, ADMIN)


@dataclass(frozen=True)
class Principal:
    """An authenticated API key: its name (never the key), role and avatar disk quota (0 = none)."""

    name: str
    role: str = USER
    avatar_disk_bytes: int = 0
    #: the client's own ``authorization`` value, to forward a Watch to the replica that owns the
    #: session (never logged, never sent to a stage)
    authorization: str = ""

    @property
    def admin(self) -> bool:
        return self.role == ADMIN

    def metadata(self) -> list[tuple[str, str]]:
        """The entries a stage reads with ``principal_of``."""
        return [
            (PRINCIPAL_KEY, self.name),
            (ROLE_KEY, self.role),
            (DISK_QUOTA_KEY, str(self.avatar_disk_bytes)),
        ]


def restricted(who: Principal | None) -> TypeGuard[Principal]:
    """True for a user key: it reaches only its own avatars and sessions (False without API keys,
    where every caller may do everything, and for an admin key)."""
    return who is not None and not who.admin


#: The principal of the call being served (set by the gateway's auth interceptor for its task).
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("talkmesh_principal", default=None)


def principal_metadata() -> list[tuple[str, str]]:
    """The current call's principal as metadata for a stage ([] without API keys)."""
    p = current_principal.get()
    return p.metadata() if p is not None else []


def principal_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal | None:
    """The principal the gateway sent (None: no API keys, every caller is trusted alike; a stage
    with ``server.require_principal`` refuses such a call before its handler runs)."""
    md = {k: v for k, v in metadata or () if isinstance(v, str)}
    name = md.get(PRINCIPAL_KEY, "")
    if not name:
        return None
    role = md.get(ROLE_KEY, USER)
    try:
        quota = max(0, int(md.get(DISK_QUOTA_KEY, "0")))
    except ValueError:
        quota = 0
    return Principal(name=name, role=role if role in ROLES else USER, avatar_disk_bytes=quota)
