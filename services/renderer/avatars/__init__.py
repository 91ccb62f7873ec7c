"""Avatars: decoding uploads (``decode``), finding the face (``face_models``, ``analysis``) and the
content-addressed precompute cache (``store``)."""

from services.renderer.avatars.analysis import FaceChoice
from services.renderer.avatars.store import DEFAULT_ALIAS, AvatarStore, AvatarSummary

__all__ = ["DEFAULT_ALIAS", "AvatarStore", "AvatarSummary", "FaceChoice"]
