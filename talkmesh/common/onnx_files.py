"""ONNX model files as files: the external data files a graph names, and whether a model file is whole.

A model over 2 GB (MuseTalk's UNet) keeps its weights in an external data file beside the graph
(``unet.onnx.data``: tools/export_musetalk.py), which the graph names in its tensors'
``external_data`` ``location`` entries. Those are read from the serialized graph with the standard
library only (no onnx package, no ONNX Runtime, nothing loaded), so the Kubernetes ``check-models``
init containers (``python -m talkmesh.modelcheck``) run this in a few MiB, and the GPU budget
(talkmesh.common.gpu) counts a model's external data without opening it.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Mapping
from pathlib import Path

#: The metadata key of the MuseTalk release a model was exported for (tools/export_musetalk.py and
#: tools/export_whisper_encoder.py write it; the feature stage checks its Whisper encoder's).
MUSETALK_VERSION_KEY = "talkmesh.musetalk_version"
#: Graph files larger than this hold their weights inline (no external data to look for).
INLINE_WEIGHTS_ABOVE = 64 * 1024 * 1024
#: StringStringEntryProto(key="location", value=...) as serialized in TensorProto.external_data.
_LOCATION = re.compile(rb"\x0a\x08location\x12([\x01-\x7f])")
#: One TensorProto.external_data entry (field 13) with a short key and value: a tensor's entries
#: (location, offset, length, ...) are serialized one after another.
_ENTRY = re.compile(rb"\x6a([\x05-\x7f])\x0a([\x01-\x7f])(location|offset|length|checksum|basepath)\x12([\x00-\x7f])")


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` is what torch.save writes, not ONNX: a zip (PyTorch 1.6 and later) or a
    pickle (before, as the released Wav2Lip checkpoints)."""
    with path.open("rb") as f:
        head = f.read(2)
    return head == b"PK" or (head[:1] == b"\x80" and head[1:] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def metadata_value(path: Path, key: str) -> str | None:
    """The value of ``key`` in the model's ``metadata_props`` (``talkmesh.musetalk_version``, which
    tools/export_musetalk.py records), None when absent. Read from the end of the file, where they
    are serialized after the graph, without loading anything."""
    name = key.encode()
    needle = b"\x0a" + bytes([len(name)]) + name + b"\x12"
    try:
        if not path.is_file() or path.stat().st_size == 0 or len(name) > 127:
            return None
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            at = data.rfind(needle)
            if at < 0 or at + len(needle) >= len(data):
                return None
            start = at + len(needle) + 1
            n = data[start - 1]
            return None if n > 127 else data[start : start + n].decode("utf-8", "replace")
    except OSError:  # unreadable: the service that loads it says so
        return None


def external_data_locations(path: Path) -> list[str]:
    """The ``location`` of every external data file ``path``'s graph names, each once, in order;
    [] for a model with inline weights (or a file over INLINE_WEIGHTS_ABOVE: mapped, not read)."""
    size = path.stat().st_size
    if size == 0 or size > INLINE_WEIGHTS_ABOVE:
        return []
    found: dict[str, None] = {}
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for m in _LOCATION.finditer(data):
            n = m.group(1)[0]
            found[data[m.end() : m.end() + n].decode("utf-8", "replace")] = None
    return list(found)


def external_data_extents(path: Path) -> dict[str, int]:
    """The bytes each external data file ``path``'s graph names must hold at least (the largest
    ``offset + length`` of its tensors there), by ``location``; {} like external_data_locations."""
    size = path.stat().st_size
    if size == 0 or size > INLINE_WEIGHTS_ABOVE:
        return {}
    extents: dict[str, int] = {}
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        tensor: dict[str, str] = {}
        end = -1
        for m in _ENTRY.finditer(data):
            n, klen, key, vlen = m.group(1)[0], m.group(2)[0], m.group(3), m.group(4)[0]
            if klen != len(key) or n != 4 + klen + vlen:
                continue
            if m.start() != end:  # the first entry of the next tensor
                _extend(extents, tensor)
                tensor = {}
            tensor[key.decode()] = data[m.end() : m.end() + vlen].decode("utf-8", "replace")
            end = m.end() + vlen
        _extend(extents, tensor)
    return extents


def _extend(extents: dict[str, int], tensor: Mapping[str, str]) -> None:
    location = tensor.get("location")
    if location is None:
        return
    try:
        reach = int(tensor.get("offset") or 0) + int(tensor.get("length") or 0)
    except ValueError:
        reach = 0
    extents[location] = max(extents.get(location, 0), reach)


def _inside(directory: Path, location: str) -> Path | None:
    """``location`` resolved in ``directory``; None when it leads out of it (not followed)."""
    f = (directory / location).resolve()
    return f if directory.resolve() in f.parents else None


def external_data_files(path: Path) -> list[Path]:
    """The existing files holding ``path``'s external tensors, inside its directory; [] for a model
    with inline weights."""
    files = [_inside(path.parent, loc) for loc in external_data_locations(path)]
    return [f for f in files if f is not None and f.is_file()]


def model_file_problems(path: Path) -> list[str]:
    """Why ``path`` is not a whole model file, one line each naming the file: it is missing or
    empty, or an external data file its graph names is missing, empty, shorter than its tensors'
    offsets and lengths reach (an interrupted copy) or outside its directory.
    [] when it is whole (its contents are not checked: ONNX Runtime does that when it loads it)."""
    if not path.is_file():
        return [f"model file {path} is missing" + (" (a directory)" if path.is_dir() else "")]
    if path.stat().st_size == 0:
        return [f"model file {path} is empty"]
    problems = []
    extents = external_data_extents(path)
    for location in external_data_locations(path):
        data = _inside(path.parent, location)
        if data is None:
            problems.append(f"model file {path} names external data {location!r} outside its directory")
        elif not data.is_file() or data.stat().st_size == 0:
            problems.append(
                f"model file {path} keeps its weights in {location} beside it, which is missing or empty: "
                "copy the model's whole directory"
            )
        elif (have := data.stat().st_size) < (need := extents.get(location, 0)):
            problems.append(
                f"model file {path} keeps its weights in {location} beside it, which is cut short "
                f"({have} bytes; its graph reads {need}): copy the model's whole directory again"
            )
    return problems
