"""The caller's own field names in the gateway's errors, for every stage's error.

The gateway makes each stage's config out of the caller's request (``SpeakRequest`` of Speak and
SpeakStream, a live session's ``LiveConfig``), and a stage names the offending field of its own
config: ``config.voice`` (TTS), ``config.settings.rate``, ``config.size`` (the renderer),
``config.audio_codec`` (the encoder). Before a status (or a live session's ``LiveError``) leaves
the gateway, that name becomes the one the caller wrote: ``voice``, ``voice_settings.rate``,
``output.size`` (``config.voice_settings.rate``, ``config.size`` in a live session). gRPC callers
and the web edge (whose JSON bodies are these messages) see the same names.

The table is derived from the protos: a stage config's field is the caller's field of the same
name, in ``SpeakRequest`` or its ``output``; only the two fields named differently are listed
(``STAGE_ALIASES``). A live session's name is the ``LiveConfig`` field of that name, under
``config.``. Fields the caller does not set (``config.fps``, ``config.sample_rate``) keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from google.protobuf.descriptor import Descriptor

from talkmesh.common.errors import TalkmeshError
from talkmesh.v1 import encoder_pb2 as epb
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import tts_pb2 as tpb

#: The stage configs the gateway fills from the caller's request (each stage calls it ``config``).
STAGE_CONFIGS: tuple[Descriptor, ...] = (
    tpb.SynthesisConfig.DESCRIPTOR,
    rpb.RenderConfig.DESCRIPTOR,
    epb.EncodeConfig.DESCRIPTOR,
    epb.LiveEncodeConfig.DESCRIPTOR,
)
#: Stage config fields whose caller's field has another name.
STAGE_ALIASES = {"settings": "voice_settings", "backend": "renderer_backend"}


def _speak_paths() -> dict[str, str]:
    """A SpeakRequest field's name -> its path (``size`` -> ``output.size``)."""
    req = gpb.SpeakRequest.DESCRIPTOR
    out = {f.name: f.name for f in req.fields if f.name != "output"}
    out.update({f.name: f"output.{f.name}" for f in req.fields_by_name["output"].message_type.fields})
    return out


def _stage_field_names(configs: Iterable[Descriptor]) -> set[str]:
    return {f.name for d in configs for f in d.fields}


def _derive() -> tuple[dict[str, str], dict[str, str]]:
    speak_paths = _speak_paths()
    live_fields = set(lpb.LiveConfig.DESCRIPTOR.fields_by_name)
    speak: dict[str, str] = {}
    live: dict[str, str] = {}
    for name in _stage_field_names(STAGE_CONFIGS):
        caller = STAGE_ALIASES.get(name, name)
        if caller in speak_paths:
            speak[f"config.{name}"] = speak_paths[caller]
        if caller in live_fields:
            live[f"config.{name}"] = f"config.{caller}"
    for stage, caller in STAGE_ALIASES.items():  # a renamed proto field must fail here, not silently
        assert f"config.{stage}" in speak, f"{stage} is in no stage config"
        assert caller in speak_paths, f"{caller} is no SpeakRequest field"
    return speak, live


#: A stage's field -> the SpeakRequest's (``config.settings`` -> ``voice_settings``).
SPEAK_FIELDS, LIVE_FIELDS = _derive()


def _renamer(table: dict[str, str]) -> Callable[[str], str | None]:
    def rename(field: str) -> str | None:
        # the longest entry that is the field or a message field above it (config.settings.rate)
        head = field
        while head:
            if head in table:
                return table[head] + field[len(head) :]
            head = head.rpartition(".")[0]
        return None

    return rename


#: The caller's name of a stage's field in Speak and SpeakStream (None: not one the caller set).
speak_field = _renamer(SPEAK_FIELDS)
#: The caller's name of a stage's field in a live session (under ``config.``).
live_field = _renamer(LIVE_FIELDS)


def in_speak_terms(exc: TalkmeshError) -> TalkmeshError:
    """``exc`` naming the SpeakRequest's field instead of a stage config's."""
    exc.rename_field(speak_field)
    return exc


def in_live_terms(exc: TalkmeshError) -> TalkmeshError:
    """``exc`` naming the LiveConfig's field (``config.voice_settings.rate``) instead of a stage's."""
    exc.rename_field(live_field)
    return exc
