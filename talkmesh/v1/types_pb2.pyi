from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Container(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTAINER_UNSPECIFIED: _ClassVar[Container]
    CONTAINER_FMP4: _ClassVar[Container]
    CONTAINER_MPEGTS: _ClassVar[Container]
    CONTAINER_MP4: _ClassVar[Container]

class AudioCodec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_CODEC_UNSPECIFIED: _ClassVar[AudioCodec]
    AUDIO_CODEC_AAC: _ClassVar[AudioCodec]
    AUDIO_CODEC_OPUS: _ClassVar[AudioCodec]

class TextFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT_FORMAT_UNSPECIFIED: _ClassVar[TextFormat]
    TEXT_FORMAT_PLAIN: _ClassVar[TextFormat]
    TEXT_FORMAT_MARKDOWN: _ClassVar[TextFormat]

class IdleMotion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDLE_MOTION_UNSPECIFIED: _ClassVar[IdleMotion]
    IDLE_MOTION_ON: _ClassVar[IdleMotion]
    IDLE_MOTION_OFF: _ClassVar[IdleMotion]

class Framing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAMING_UNSPECIFIED: _ClassVar[Framing]
    FRAMING_AUTO: _ClassVar[Framing]
    FRAMING_AS_IS: _ClassVar[Framing]
    FRAMING_HEAD_AND_SHOULDERS: _ClassVar[Framing]
CONTAINER_UNSPECIFIED: Container
CONTAINER_FMP4: Container
CONTAINER_MPEGTS: Container
CONTAINER_MP4: Container
AUDIO_CODEC_UNSPECIFIED: AudioCodec
AUDIO_CODEC_AAC: AudioCodec
AUDIO_CODEC_OPUS: AudioCodec
TEXT_FORMAT_UNSPECIFIED: TextFormat
TEXT_FORMAT_PLAIN: TextFormat
TEXT_FORMAT_MARKDOWN: TextFormat
IDLE_MOTION_UNSPECIFIED: IdleMotion
IDLE_MOTION_ON: IdleMotion
IDLE_MOTION_OFF: IdleMotion
FRAMING_UNSPECIFIED: Framing
FRAMING_AUTO: Framing
FRAMING_AS_IS: Framing
FRAMING_HEAD_AND_SHOULDERS: Framing

class VoiceSettings(_message.Message):
    __slots__ = ("rate", "pitch", "volume")
    RATE_FIELD_NUMBER: _ClassVar[int]
    PITCH_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    rate: float
    pitch: float
    volume: float
    def __init__(self, rate: _Optional[float] = ..., pitch: _Optional[float] = ..., volume: _Optional[float] = ...) -> None: ...

class ListVoicesRequest(_message.Message):
    __slots__ = ("voice",)
    VOICE_FIELD_NUMBER: _ClassVar[int]
    voice: str
    def __init__(self, voice: _Optional[str] = ...) -> None: ...

class Voice(_message.Message):
    __slots__ = ("id", "name", "language", "engine", "sample_rate", "default")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    language: str
    engine: str
    sample_rate: int
    default: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., language: _Optional[str] = ..., engine: _Optional[str] = ..., sample_rate: _Optional[int] = ..., default: _Optional[bool] = ...) -> None: ...

class ListVoicesResponse(_message.Message):
    __slots__ = ("voices",)
    VOICES_FIELD_NUMBER: _ClassVar[int]
    voices: _containers.RepeatedCompositeFieldContainer[Voice]
    def __init__(self, voices: _Optional[_Iterable[_Union[Voice, _Mapping]]] = ...) -> None: ...

class AvatarUpload(_message.Message):
    __slots__ = ("meta", "data")
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    meta: AvatarMeta
    data: bytes
    def __init__(self, meta: _Optional[_Union[AvatarMeta, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AvatarMeta(_message.Message):
    __slots__ = ("name", "filename", "backends", "face_index", "face_point", "framing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    FACE_POINT_FIELD_NUMBER: _ClassVar[int]
    FRAMING_FIELD_NUMBER: _ClassVar[int]
    name: str
    filename: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    face_index: int
    face_point: ImagePoint
    framing: Framing
    def __init__(self, name: _Optional[str] = ..., filename: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ..., face_index: _Optional[int] = ..., face_point: _Optional[_Union[ImagePoint, _Mapping]] = ..., framing: _Optional[_Union[Framing, str]] = ...) -> None: ...

class ImagePoint(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class FaceReport(_message.Message):
    __slots__ = ("box", "confidence", "frames_kept", "frames_rejected", "faces_found", "face_index", "detector", "upload_box", "framed_box")
    BOX_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_KEPT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    FACES_FOUND_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_BOX_FIELD_NUMBER: _ClassVar[int]
    FRAMED_BOX_FIELD_NUMBER: _ClassVar[int]
    box: _containers.RepeatedScalarFieldContainer[float]
    confidence: float
    frames_kept: int
    frames_rejected: int
    faces_found: int
    face_index: int
    detector: str
    upload_box: _containers.RepeatedScalarFieldContainer[float]
    framed_box: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, box: _Optional[_Iterable[float]] = ..., confidence: _Optional[float] = ..., frames_kept: _Optional[int] = ..., frames_rejected: _Optional[int] = ..., faces_found: _Optional[int] = ..., face_index: _Optional[int] = ..., detector: _Optional[str] = ..., upload_box: _Optional[_Iterable[float]] = ..., framed_box: _Optional[_Iterable[float]] = ...) -> None: ...

class AvatarInfo(_message.Message):
    __slots__ = ("id", "name", "width", "height", "frame_count", "cached", "backends", "face", "names", "default")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    width: int
    height: int
    frame_count: int
    cached: bool
    backends: _containers.RepeatedScalarFieldContainer[str]
    face: FaceReport
    names: _containers.RepeatedScalarFieldContainer[str]
    default: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., frame_count: _Optional[int] = ..., cached: _Optional[bool] = ..., backends: _Optional[_Iterable[str]] = ..., face: _Optional[_Union[FaceReport, _Mapping]] = ..., names: _Optional[_Iterable[str]] = ..., default: _Optional[bool] = ...) -> None: ...

class AvatarProgress(_message.Message):
    __slots__ = ("stage", "done", "total")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class AvatarRegistration(_message.Message):
    __slots__ = ("progress", "avatar")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    AVATAR_FIELD_NUMBER: _ClassVar[int]
    progress: AvatarProgress
    avatar: AvatarInfo
    def __init__(self, progress: _Optional[_Union[AvatarProgress, _Mapping]] = ..., avatar: _Optional[_Union[AvatarInfo, _Mapping]] = ...) -> None: ...

class ListAvatarsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetAvatarRequest(_message.Message):
    __slots__ = ("avatar_id",)
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    def __init__(self, avatar_id: _Optional[str] = ...) -> None: ...

class ListAvatarsResponse(_message.Message):
    __slots__ = ("avatars",)
    AVATARS_FIELD_NUMBER: _ClassVar[int]
    avatars: _containers.RepeatedCompositeFieldContainer[AvatarInfo]
    def __init__(self, avatars: _Optional[_Iterable[_Union[AvatarInfo, _Mapping]]] = ...) -> None: ...

class DeleteAvatarRequest(_message.Message):
    __slots__ = ("avatar_id", "name")
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    name: str
    def __init__(self, avatar_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteAvatarResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("service", "stage", "seconds")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    service: str
    stage: str
    seconds: float
    def __init__(self, service: _Optional[str] = ..., stage: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...
