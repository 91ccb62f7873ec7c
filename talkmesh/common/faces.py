"""How large a face must be in an avatar's picture to see it speak: one rule for the renderer's
advice when it finds no face, `talkmesh avatar add`'s hint and the web edge's upload answer (which
the page shows). (The detector itself has no fixed minimum: it searches large pictures in tiles,
and finds faces of a few dozen pixels; one that small is found but not seen speaking.)"""

from __future__ import annotations

from typing import Any

#: A face narrower than this in a video of the default size preset ("512": the longer side 512 px)
#: is too small to see it speak (a phone photo of a whole room, the face in a corner).
SMALL_FACE_PX = 64
#: The longer side of a video of the default size preset, "512".
DEFAULT_SIDE = 512
#: How to crop a picture whose face is small (or not found).
CROP_TO = "to the head and shoulders (the face about a third of its width)"
#: What a picture needs for its face to be found and seen speaking (the renderer's refusal when it
#: finds none says it).
NO_FACE_ADVICE = (
    "use a picture with a face turned to the camera, fully visible (not cut off by the edge, eyes and "
    f"mouth uncovered), at least 1/{DEFAULT_SIDE // SMALL_FACE_PX} of the picture's longer side wide "
    f"({SMALL_FACE_PX} px in a video of the default size): crop a wider picture {CROP_TO}"
)


def face_width_in_video(face_width: float, width: int, height: int) -> float:
    """Pixels a face ``face_width`` wide on frames of ``width`` x ``height`` is in a video of the
    default size."""
    return face_width * DEFAULT_SIDE / max(width, height, 1)


def small_face_hint(info: Any, then: str = "add that") -> str:
    """What to do when the face of ``info`` (an AvatarInfo: its FaceReport's box is on frames of
    its width x height) would be under SMALL_FACE_PX wide in a video of the default size, else "".
    ``then``: how the cropped picture is added ("add that", "upload that")."""
    box = list(info.face.box)
    if len(box) != 4 or not info.width or not info.height:
        return ""
    in_video = face_width_in_video(box[2] - box[0], info.width, info.height)
    if in_video >= SMALL_FACE_PX:
        return ""
    return (
        f"the face is small in the picture: about {in_video:.0f} px wide in a video of the default size "
        f"({DEFAULT_SIDE}), too small to see it speak; crop the picture {CROP_TO} and {then}"
    )
