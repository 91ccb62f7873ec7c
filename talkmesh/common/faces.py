"""How large a face must be in an avatar's picture to see it speak, and how a picture is framed to
the head and shoulders: one rule for the renderer's advice when it finds no face, its automatic
framing at registration (AvatarMeta.framing), `talkmesh avatar add`'s hint and the web edge's
upload answer (which the page shows). (The detector itself has no fixed minimum: it searches large
pictures in tiles, and finds faces of a few dozen pixels; one that small is found but not seen
speaking.)"""

from __future__ import annotations

from typing import Any

#: A face narrower than this in a video of the default size preset ("512": the longer side 512 px)
#: is too small to see it speak (a phone photo of a whole room, the face in a corner).
SMALL_FACE_PX = 64
#: The longer side of a video of the default size preset, "512".
DEFAULT_SIDE = 512
#: The head-and-shoulders crop is this many face widths wide (the face about a third of its width)
CROP_FACE_WIDTHS = 3
#: and 4/3 of its width high (a 3:4 portrait: every size preset keeps an avatar's shape)
CROP_ASPECT = 4 / 3
#: The face's centre is this fraction of the crop's height from its top (room above the head, the
#: shoulders below).
CROP_FACE_CENTRE = 0.36
#: Changes when the crop's rule does (a framed avatar's id hashes it: a new rule makes new crops).
CROP_RULE_VERSION = 2
#: How to crop a picture whose face is small (or not found).
CROP_TO = (
    "to the head and shoulders (the face about "
    f"{ {2: 'half', 3: 'a third', 4: 'a quarter'}.get(CROP_FACE_WIDTHS, f'1/{CROP_FACE_WIDTHS}')} of its width)"
)
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


def face_is_small(face_width: float, width: int, height: int) -> bool:
    """Whether a face ``face_width`` wide on frames of ``width`` x ``height`` is under SMALL_FACE_PX
    in a video of the default size: when the hint below is given, and when automatic framing crops."""
    return face_width_in_video(face_width, width, height) < SMALL_FACE_PX


Box = tuple[float, float, float, float]


def head_and_shoulders(face: Box, width: int, height: int, cover: Box | None = None) -> Box:
    """The head-and-shoulders crop (x1, y1, x2, y2) of a ``width`` x ``height`` picture whose face
    has the box ``face``: CROP_FACE_WIDTHS face widths wide, CROP_ASPECT as high, the face centred
    across and CROP_FACE_CENTRE down. ``cover``: a box the crop also holds with the same margins
    (a video's face track over its frames: the head moves), widened or lengthened downwards to the
    aspect. A crop larger than the picture is shrunk to fit, keeping its aspect and the face's
    place as far as it can, then moved inside the picture; should that leave out part of the face
    or of ``cover``, the aspect gives way: the crop is widened (or lengthened) to hold them."""
    fx1, fy1, fx2, fy2 = face
    fw, fh = max(fx2 - fx1, 1.0), max(fy2 - fy1, 1.0)
    cw = CROP_FACE_WIDTHS * fw
    ch = cw * CROP_ASPECT
    side = (cw - fw) / 2
    above = max(CROP_FACE_CENTRE * ch - fh / 2, 0.0)
    below = max(ch - above - fh, 0.0)
    # what the crop must hold: the face, and a moving head's whole path
    cx1, cy1, cx2, cy2 = cover if cover is not None else face
    hx1, hy1, hx2, hy2 = min(cx1, fx1), min(cy1, fy1), max(cx2, fx2), max(cy2, fy2)
    x1, x2 = hx1 - side, hx2 + side
    y1, y2 = hy1 - above, hy2 + below
    w, h = x2 - x1, y2 - y1
    if h < w * CROP_ASPECT:  # (a head moving sideways) more below: the shoulders
        y2 = y1 + w * CROP_ASPECT
    else:  # (a head moving up and down) wider on both sides
        grow = (h / CROP_ASPECT - w) / 2
        x1, x2 = x1 - grow, x2 + grow
    w, h = x2 - x1, y2 - y1
    shrink = min(1.0, width / w, height / h)
    if shrink < 1.0:  # keep the face's place: the centre across, the same share above the face
        centre = (x1 + x2) / 2
        w, h = w * shrink, h * shrink
        x1, y1 = centre - w / 2, hy1 - (hy1 - y1) * shrink
    x1 = min(max(x1, 0.0), width - w)
    y1 = min(max(y1, 0.0), height - h)
    # what it must hold stays in, whatever the aspect
    x1, y1, x2, y2 = min(x1, hx1), min(y1, hy1), max(x1 + w, hx2), max(y1 + h, hy2)
    return (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))


def framing_note(info: Any) -> str:
    """What to say of an avatar the server framed (``info``: an AvatarInfo whose FaceReport has a
    framed_box), else ""."""
    box = list(info.face.framed_box)
    if len(box) != 4:
        return ""
    return (
        f"framed {CROP_TO}: the avatar shows {box[2] - box[0]:.0f}x{box[3] - box[1]:.0f} px at "
        f"({box[0]:.0f}, {box[1]:.0f}) of the picture"
    )


def small_face_hint(info: Any, then: str = "add that", or_frame: str = "") -> str:
    """What to do when the face of ``info`` (an AvatarInfo: its FaceReport's box is on frames of
    its width x height) would be under SMALL_FACE_PX wide in a video of the default size, else "".
    ``then``: how the cropped picture is added ("add that", "upload that"); ``or_frame``: how to
    have the server frame it instead (e.g. "or add it with --framing auto"). An avatar the server
    framed gets no hint (``framing_note`` says it)."""
    box = list(info.face.box)
    if len(box) != 4 or not info.width or not info.height or len(info.face.framed_box) == 4:
        return ""
    if not face_is_small(box[2] - box[0], info.width, info.height):
        return ""
    in_video = face_width_in_video(box[2] - box[0], info.width, info.height)
    return (
        f"the face is small in the picture: about {in_video:.0f} px wide in a video of the default size "
        f"({DEFAULT_SIDE}), too small to see it speak; crop the picture {CROP_TO} and {then}"
        + (f", {or_frame}" if or_frame else "")
    )
