"""Decoding an uploaded avatar: a photo (PNG, JPEG, WebP, BMP) or a short video, to BGR frames.

Nothing is decoded before the bytes say what they are: the format is sniffed from the magic
bytes (whatever the file name says) and must be on the allow-list (``IMAGE_FORMATS``,
``VIDEO_FORMATS``); a TIFF, GIF, SVG... named ``.png`` is refused without touching a decoder.
Image sizes are read from the header and checked before decoding (a small file can declare a
huge image); OpenCV's own limit (``CV_IO_MAX_IMAGE_PIXELS``) is set as a second line. A photo
larger than ``max_side`` is scaled down to it; one with transparency (an alpha channel) is
composited onto ``background`` (white by default), not shown on whatever colour its transparent
pixels hide. Videos are decoded frame by frame into one preallocated array, each frame downscaled
as it arrives so that all frames together fit ``max_video_bytes`` (and the longer side
``max_side``); more than ``max_frames`` frames is refused. So one upload within the limits holds
at most about ``max_upload_bytes`` (compressed, as received) + ``max_video_bytes`` (decoded) in
memory.
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# A backstop under the header checks below: OpenCV refuses to decode larger images. Read by
# OpenCV at its first image decode, so it is set before cv2 is used (not overriding an operator's).
os.environ.setdefault("CV_IO_MAX_IMAGE_PIXELS", str(4096 * 4096))

import cv2
import numpy as np

from services.renderer.config import AvatarConfig
from talkmesh.common.errors import InvalidArgument

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_EXTS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
IMAGE_FORMATS = ("png", "jpeg", "webp", "bmp")
VIDEO_FORMATS = ("mp4", "mov", "webm", "mkv", "avi")
#: An upload's bytes: as received (read in place from its memory mapping, services/renderer/uploads.py)
#: or a file's. Read with ``len``, slices (``bytes``), indexing, ``find`` and the buffer protocol only.
Data = bytes | bytearray | mmap.mmap
#: ISO base media ``ftyp`` brands read as QuickTime (the rest of ftyp files are MP4-family).
_QT_BRANDS = {b"qt  "}


def sniff(data: Data) -> str:
    """The format the bytes are in ("png", "jpeg", "webp", "bmp", "mp4", "mov", "webm", "mkv",
    "avi"), or "" when they are none of the allowed ones."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    if data[:2] == b"BM" and len(data) >= 26 and int.from_bytes(data[14:18], "little") in (12, 40, 52, 56, 108, 124):
        return "bmp"
    if data[4:8] == b"ftyp":
        return "mov" if data[8:12] in _QT_BRANDS else "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska or WebM
        return "webm" if b"webm" in data[:64] else "mkv"
    if data[4:8] in (b"moov", b"mdat", b"wide", b"free"):  # QuickTime without ftyp
        return "mov"
    return ""


@dataclass(frozen=True)
class Decoded:
    """An upload's frames as stored, and how they are scaled from the upload as it is shown."""

    frames: np.ndarray  # [N, H, W, 3] uint8 BGR
    #: stored pixels per pixel of the upload as shown (after its orientation): a point the user
    #: picked on the upload (AvatarMeta.face_point) is at ``(point - origin) * scale`` on the frames
    scale: float = 1.0
    #: the upload's pixel at the frames' top-left corner: (0, 0) unless decoded with a ``crop``
    origin: tuple[float, float] = (0.0, 0.0)

    @property
    def region(self) -> tuple[float, float, float, float]:
        """The part of the upload (as shown) the frames hold: x1, y1, x2, y2 in its pixels."""
        h, w = self.frames.shape[1:3]
        x, y = self.origin
        return x, y, x + w / self.scale, y + h / self.scale


#: Bytes ``sniff`` reads at most: an upload is refused on its first block when these say nothing
#: on the allow-list (the renderer checks them as the bytes arrive, before holding the rest).
SNIFF_BYTES = 64


#: Phones' own photo formats, which no decoder here reads: the refusal says how to get a JPEG.
PHONE_PHOTO_EXTS = frozenset({".heic", ".heif", ".avif"})


def check_filename_type(filename: str) -> None:
    """InvalidArgument naming ``meta.filename`` when its extension is of no allowed type."""
    ext = Path(filename).suffix.lower()
    if ext and ext not in IMAGE_EXTS | VIDEO_EXTS:
        hint = (
            " (convert it to JPEG or PNG first; an iPhone takes JPEGs with Settings > Camera > Formats > "
            "Most Compatible)"
            if ext in PHONE_PHOTO_EXTS
            else ""
        )
        raise InvalidArgument(
            "meta.filename",
            f"unsupported file type {ext}; images: "
            f"{', '.join(sorted(IMAGE_EXTS))}; videos: {', '.join(sorted(VIDEO_EXTS))}{hint}",
        )


def check_format(head: Data, filename: str) -> str:
    """The format of an upload whose first bytes (at least ``SNIFF_BYTES`` of them, or all) are
    ``head``; InvalidArgument naming ``data`` when it is none of the allowed ones."""
    kind = sniff(bytes(head[:SNIFF_BYTES]))
    if not kind:
        # Whatever the name says: only formats on the allow-list reach a decoder.
        raise InvalidArgument(
            "data",
            f"{filename or 'upload'} is not a decodable image or video: its bytes are none of "
            f"{', '.join(IMAGE_FORMATS + VIDEO_FORMATS)} (corrupt, truncated or another format)",
        )
    return kind


#: A part of an upload as shown: x1, y1, x2, y2 in its pixels (``decode``'s ``crop``).
Crop = tuple[float, float, float, float]


def decode(data: Data, filename: str, cfg: AvatarConfig, crop: Crop | None = None) -> Decoded:
    """The upload's frames, or InvalidArgument with the reason. ``crop``: only that part of each
    frame (the head-and-shoulders framing), decoded at the resolution it deserves (a JPEG less
    reduced than for the whole picture, within the same memory limits) and stored at most
    ``max_side`` on its longer side like any picture."""
    if not data:
        raise InvalidArgument("data", "the upload is empty")
    check_filename_type(filename)
    kind = check_format(data[:SNIFF_BYTES], filename)
    what = filename or "upload"
    if kind in VIDEO_FORMATS:
        return _decode_video(data, kind, cfg, crop)
    dims = image_dimensions(data)
    if dims is None or dims[0] <= 0 or dims[1] <= 0:
        raise InvalidArgument("data", f"{what} is not a decodable image (unreadable {kind.upper()} header)")
    # checked on the header, before decoding: a small file can declare a huge image
    reduction, limit, held = 1, cfg.max_pixels, dims[0] * dims[1]
    whole = kind != "jpeg" or jpeg_held_whole(data)
    if kind == "jpeg":
        # (a crop's size is in the pixels as shown: a turned JPEG's header has them the other way
        # round, which only matters for the reduction, the larger side of either)
        part = (round(crop[2] - crop[0]), round(crop[3] - crop[1])) if crop else dims
        reduction = jpeg_reduction(part[0], part[1], cfg)
    if not whole:  # libjpeg holds a row of blocks, then the image scaled down
        limit = reduced_limit(cfg)
        held = math.ceil(dims[0] / reduction) * math.ceil(dims[1] / reduction)
        while crop and held > limit and reduction < MAX_REDUCTION:  # a crop: as sharp as the limit lets it
            reduction *= 2
            held = math.ceil(dims[0] / reduction) * math.ceil(dims[1] / reduction)
    if held > limit:
        raise InvalidArgument("data", _too_large(dims, kind, whole, reduction, cfg))
    if kind == "jpeg" and b"\xff\xd9" not in data[-4096:]:
        # some libjpeg builds decode a truncated file with a grey bottom and only a warning
        raise InvalidArgument("data", f"{what} is not a decodable image (truncated JPEG)")
    alpha = has_alpha(data)
    if alpha:  # (IMREAD_UNCHANGED does not turn it: turned below)
        img = _flattened(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cfg.background)
    elif kind == "webp":  # turned below, not by OpenCV: whether it reads a WebP's EXIF depends on its version
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    else:  # (IMREAD_COLOR also turns a JPEG or a PNG as its EXIF orientation says, a JPEG reduced or not)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[reduction])
    if img is not None and (alpha or kind == "webp"):  # (4.14 reads a WebP's EXIF, 4.10 does not)
        img = oriented(img, exif_orientation(data))
    if img is None:
        raise InvalidArgument("data", f"{what} is not a decodable image (corrupt or truncated)")
    if img.shape[0] * img.shape[1] > limit:
        raise InvalidArgument(
            "data", f"image has {img.shape[1]}x{img.shape[0]} pixels, over {limit} (avatars.max_pixels)"
        )
    origin = (0.0, 0.0)
    if crop is not None:  # (decoded as shown: the crop's pixels, divided by the reduction)
        x1, y1, x2, y2 = _crop_pixels(crop, reduction, img.shape[1], img.shape[0])
        img, origin = np.ascontiguousarray(img[y1:y2, x1:x2]), (float(x1 * reduction), float(y1 * reduction))
    h, w = img.shape[:2]
    shown_w = w * reduction  # (decoded as shown: turned by its orientation; libjpeg rounds up, < 1 px)
    if max(w, h) > cfg.max_side:  # a phone photo: stored (and analysed) at max_side
        scale = cfg.max_side / max(w, h)
        img = cv2.resize(img, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA)
    return Decoded(_even(img)[None], img.shape[1] / shown_w, origin)


def _crop_pixels(crop: Crop, reduction: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``crop`` (pixels of the upload as shown) in pixels of frames ``width`` x ``height`` decoded
    at 1/``reduction``: whole pixels, inside the frames, at least 2 x 2."""
    x1 = min(max(int(crop[0] / reduction), 0), max(width - 2, 0))
    y1 = min(max(int(crop[1] / reduction), 0), max(height - 2, 0))
    x2 = min(max(math.ceil(crop[2] / reduction), x1 + 2), width)
    y2 = min(max(math.ceil(crop[3] / reduction), y1 + 2), height)
    return x1, y1, x2, y2


#: JPEGs are decoded scaled down by libjpeg itself (a phone photo of 24 or 48 Mpixel never exists
#: in memory at full size): the flag for each factor.
_REDUCED = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
MAX_REDUCTION = max(_REDUCED)


def jpeg_reduction(w: int, h: int, cfg: AvatarConfig) -> int:
    """The factor (1, 2, 4 or 8) a w x h JPEG is decoded at: the largest that still leaves
    ``max_side`` pixels on its longer side (the store keeps no more: decoding more is time and
    memory for nothing)."""
    d = 1
    while d < MAX_REDUCTION and max(math.ceil(w / (2 * d)), math.ceil(h / (2 * d))) >= cfg.max_side:
        d *= 2
    return d


def reduced_limit(cfg: AvatarConfig) -> int:
    """Pixels a JPEG decoded scaled down may have: ``max_pixels``, or twice ``max_side`` on each
    side when that is more (``jpeg_reduction`` leaves less than that, but for images over 8 times
    it). A 48-Mpixel phone photo is decoded at 1/4, 1512x2016."""
    return max(cfg.max_pixels, 4 * cfg.max_side * cfg.max_side)


def jpeg_held_whole(data: Data) -> bool:
    """Whether libjpeg holds the whole image's coefficients (2 bytes per sample) however small it
    decodes it: a progressive JPEG, or one whose first scan has fewer components than the image
    (libjpeg's own test for several scans). Such a JPEG is held to ``max_pixels`` at its full size;
    a baseline one only once decoded. What follows the image (an Ultra HDR gain map, a motion
    photo's video) is not read."""
    sof = _jpeg_sof(data)
    if sof is None or sof[1] in _JPEG_PROGRESSIVE or sof[0] + 9 >= len(data):
        return True
    components = data[sof[0] + 9]
    for at, marker in _jpeg_markers(data, sof[0]):
        if marker == 0xDA and at + 4 < len(data):  # the first scan: its component count
            return data[at + 4] < components
    return True  # no scan where one must be: the strict limit


def _too_large(dims: tuple[int, int], kind: str, whole: bool, reduction: int, cfg: AvatarConfig) -> str:
    w, h = dims
    if kind != "jpeg":
        return (
            f"image is {w}x{h}: larger than the limit of {cfg.max_pixels} pixels (avatars.max_pixels; a "
            "baseline JPEG may be larger, it is decoded scaled down); scale it down first"
        )
    if whole:
        return (
            f"image is {w}x{h}: larger than the limit of {cfg.max_pixels} pixels (avatars.max_pixels) for a "
            "progressive JPEG (its decoder holds it whole); scale it down or save it as a baseline JPEG"
        )
    return (
        f"image is {w}x{h}: larger than the limit of {reduced_limit(cfg)} pixels once decoded at 1/{reduction} "
        "(avatars.max_pixels, or twice avatars.max_side on each side); scale it down first"
    )


def has_alpha(data: Data) -> bool:
    """Whether the image's header declares transparency: a PNG with an alpha channel (colour type
    4 or 6) or a ``tRNS`` chunk, a WebP with alpha (VP8X's flag, or lossless VP8L's)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 26:
        if data[25] in (4, 6):
            return True
        idat = data.find(b"IDAT")
        return b"tRNS" in data[: idat if idat >= 0 else len(data)]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 25:
        if data[12:16] == b"VP8X":
            return bool(data[20] & 0x10)
        if data[12:16] == b"VP8L":
            return bool(int.from_bytes(data[21:25], "little") >> 28 & 1)
    return False


#: The most chunks of a PNG or WebP looked at for its EXIF (``exif_orientation``): as many as a
#: 512 MiB PNG in libpng's 8 KiB IDAT chunks has (avatars.max_upload_bytes: 200 MiB by default),
#: so that an upload of millions of empty chunks costs milliseconds, not seconds.
MAX_EXIF_CHUNKS = 1 << 16
#: How much of an EXIF chunk is read for its orientation (in the first IFD, at its start): as much
#: EXIF as a JPEG can carry (one APP1 segment), not a copy of a chunk as large as the upload.
MAX_EXIF_BYTES = 64 * 1024


def exif_orientation(data: Data) -> int:
    """The EXIF orientation (1-8) a PNG's ``eXIf`` chunk (before or after its image data, as
    OpenCV reads it) or a WebP's ``EXIF`` chunk (when its VP8X header's EXIF flag says it has one,
    as OpenCV and libwebp read it) declares: how its stored pixels are turned to be shown; 1 (as
    stored) when it declares none or its EXIF is unreadable. (Read for every WebP and for a PNG
    with transparency: OpenCV decodes one with transparency unturned, and whether it reads a
    WebP's EXIF depends on its version.)"""
    exif = b""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        at, chunks = 8, 0
        while at + 8 <= len(data) and not exif and chunks < MAX_EXIF_CHUNKS:
            chunks += 1
            size, kind = int.from_bytes(data[at : at + 4], "big"), bytes(data[at + 4 : at + 8])
            if kind == b"IEND":
                break
            exif = bytes(data[at + 8 : at + 8 + min(size, MAX_EXIF_BYTES)]) if kind == b"eXIf" else b""
            at += 12 + size
    elif data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8X" and len(data) > 20 and data[20] & 0x08:  # (its EXIF flag)
        at, chunks = 12, 0
        while at + 8 <= len(data) and not exif and chunks < MAX_EXIF_CHUNKS:
            chunks += 1
            kind, size = bytes(data[at : at + 4]), int.from_bytes(data[at + 4 : at + 8], "little")
            exif = bytes(data[at + 8 : at + 8 + min(size, MAX_EXIF_BYTES)]) if kind == b"EXIF" else b""
            at += 8 + size + size % 2
    return _tiff_orientation(exif)  # (one that starts with JPEG's "Exif\0\0" instead: invalid to libpng, unread)


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block's first IFD (a TIFF header, either byte
    order), or 1."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    for at in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[at : at + 2], order) == 0x0112:
            value = int.from_bytes(tiff[at + 8 : at + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def oriented(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img`` as stored, turned (and mirrored) as EXIF ``orientation`` says, to be shown."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(img), -1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def background_bgr(colour: str) -> tuple[int, int, int]:
    """The colour "#rrggbb" (AvatarConfig.background) as OpenCV's (blue, green, red)."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return b, g, r


def _flattened(img: np.ndarray | None, background: str) -> np.ndarray | None:
    """An image decoded as it is stored (IMREAD_UNCHANGED: 8 or 16 bits, grey or colour, with or
    without alpha) as 8-bit BGR, its transparent pixels composited onto ``background``: a cutout
    whose hidden pixels are black (or anything else) shows the background, not what is hidden."""
    if img is None:
        return None
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        return None
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 2:  # grey + alpha (not produced by every OpenCV build; handled anyway)
        img = np.dstack([img[..., 0], img[..., 0], img[..., 0], img[..., 1]])
    if img.shape[2] == 3:
        return img
    alpha = img[..., 3:4].astype(np.uint16)
    back = np.array(background_bgr(background), np.uint16)
    out = (img[..., :3].astype(np.uint16) * alpha + back * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


def _jpeg_markers(data: Data, start: int) -> Iterator[tuple[int, int]]:
    """(offset, marker) of a JPEG's markers from ``start`` (a marker), segment by segment, skipping
    each segment's content (an EXIF thumbnail is a JPEG of its own inside APP1); ends where no
    marker is where one must be, or at the end of the bytes."""
    i = start
    while i + 3 < len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        yield i, marker
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")


def _jpeg_sof(data: Data) -> tuple[int, int] | None:
    """(offset, marker) of a JPEG's frame header (SOFn), past its APPn segments; None if there is
    none (or its header is cut short)."""
    if data[:2] != b"\xff\xd8":
        return None
    for at, marker in _jpeg_markers(data, 2):
        if marker in _JPEG_SOF:
            return (at, marker) if at + 9 < len(data) else None
    return None


def image_dimensions(data: Data) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, WebP or BMP header without decoding; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        sof = _jpeg_sof(data)
        if sof is None:
            return None
        i = sof[0]
        return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if chunk == b"VP8 ":
            return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
        return None
    if data[:2] == b"BM" and len(data) >= 26:
        return int.from_bytes(data[18:22], "little", signed=True), abs(
            int.from_bytes(data[22:26], "little", signed=True)
        )
    return None


def _even(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % 2, : w - w % 2]


def video_frame_size(w: int, h: int, frames: int, cfg: AvatarConfig) -> tuple[int, int]:
    """(width, height) each frame is stored at: the longer side at most ``max_side`` and
    ``frames`` frames within ``max_video_bytes``; even sizes, never upscaled."""
    scale = min(1.0, cfg.max_side / max(w, h))
    per_frame = cfg.max_video_bytes / max(1, frames) / 3
    scale = min(scale, math.sqrt(per_frame / (w * h)))
    ow, oh = max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)
    return min(ow, w - w % 2), min(oh, h - h % 2)


def _decode_video(data: Data, kind: str, cfg: AvatarConfig, crop: Crop | None = None) -> Decoded:
    # The compressed upload is what goes to disk (a temporary file OpenCV can read); frames are
    # decoded one at a time into a preallocated array, downscaled on the way.
    with tempfile.NamedTemporaryFile(suffix=f".{kind}") as tmp:
        tmp.write(data)
        tmp.flush()
        cap = cv2.VideoCapture(tmp.name)
        try:
            if not cap.isOpened():
                raise InvalidArgument("data", "not a decodable video (corrupt, truncated or unknown codec)")
            # a phone's portrait video is stored sideways with a rotation: frames and sizes as shown
            # (OpenCV's default with its FFmpeg backend; asked for here rather than left to the default)
            cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
            w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if w <= 0 or h <= 0:
                raise InvalidArgument("data", "not a decodable video (no video track)")
            if w * h > cfg.max_pixels:
                raise InvalidArgument(
                    "data",
                    f"video frames have {w}x{h} pixels, over {cfg.max_pixels} (avatars.max_pixels); "
                    "scale it down first",
                )
            declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if declared > cfg.max_frames:
                fps = cap.get(cv2.CAP_PROP_FPS)
                length = f" ({declared / fps:.1f} s at {fps:g} fps)" if fps > 0 else ""
                raise InvalidArgument(
                    "data",
                    f"video has {declared} frames{length}, more than {cfg.max_frames} (avatars.max_frames); "
                    "trim it first",
                )
            capacity = declared if declared > 0 else cfg.max_frames
            if crop is not None:  # one box on every frame (in the frames' pixels as decoded: shown)
                cut = _crop_pixels(crop, 1, w, h)
                w, h = cut[2] - cut[0], cut[3] - cut[1]
            ow, oh = video_frame_size(w, h, capacity, cfg)
            out = np.empty((capacity, oh, ow, 3), np.uint8)
            n = shown_w = 0
            origin = (0.0, 0.0)
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if n >= capacity:
                    if n >= cfg.max_frames:
                        raise InvalidArgument(
                            "data", f"video has more than {cfg.max_frames} frames (avatars.max_frames); trim it first"
                        )
                    # more frames than the container declared: grow, keeping within the budget
                    capacity = min(cfg.max_frames, capacity * 2)
                    ow2, oh2 = video_frame_size(w, h, capacity, cfg)
                    grown = np.empty((capacity, oh2, ow2, 3), np.uint8)
                    for i in range(n):
                        grown[i] = out[i] if (ow2, oh2) == (ow, oh) else cv2.resize(out[i], (ow2, oh2))
                    out, ow, oh = grown, ow2, oh2
                if crop is not None:
                    cut = _crop_pixels(crop, 1, frame.shape[1], frame.shape[0])
                    frame = frame[cut[1] : cut[3], cut[0] : cut[2]]
                    origin = (float(cut[0]), float(cut[1]))
                fh, fw = frame.shape[:2]
                shown_w = shown_w or fw  # (decoded frames are turned as the video's rotation says)
                if (fw, fh) == (ow, oh):
                    out[n] = frame
                elif fw - fw % 2 == ow and fh - fh % 2 == oh:
                    out[n] = frame[:oh, :ow]
                else:
                    out[n] = cv2.resize(frame, (ow, oh), interpolation=cv2.INTER_AREA)
                n += 1
        finally:
            cap.release()
    if not n:
        raise InvalidArgument("data", "not a decodable video (no frames could be read)")
    return Decoded(out[:n], ow / shown_w, origin)
