"""Avatars: decoding uploads (``decode``), finding the face (``face_models``, ``analysis``) and the
content-addressed precompute cache (``store``)."""

from services.renderer.avatars.analysis import FaceChoice
from services.renderer.avatars.store import (
    DEFAULT_ALIAS,
    DEFAULT_AVATAR_FILE,
    AvatarStore,
    AvatarSummary,
    default_avatar_bytes,
)

__all__ = ["DEFAULT_ALIAS", "DEFAULT_AVATAR_FILE", "AvatarStore", "AvatarSummary", "FaceChoice", "default_avatar_bytes"]
