from talkmesh.v1 import common_pb2 as _common_pb2
from talkmesh.v1 import audio_features_pb2 as _audio_features_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RenderConfig(_message.Message):
    __slots__ = ("request_id", "avatar_id", "backend", "size", "fps", "pixel_format", "sample_rate", "session_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    avatar_id: str
    backend: str
    size: str
    fps: float
    pixel_format: _common_pb2.PixelFormat
    sample_rate: int
    session_id: str
    def __init__(self, request_id: _Optional[str] = ..., avatar_id: _Optional[str] = ..., backend: _Optional[str] = ..., size: _Optional[str] = ..., fps: _Optional[float] = ..., pixel_format: _Optional[_Union[_common_pb2.PixelFormat, str]] = ..., sample_rate: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class VisemeTrack(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.VisemeEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.VisemeEvent, _Mapping]]] = ...) -> None: ...

class RenderRequest(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "config", "visemes", "features")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    VISEMES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    config: RenderConfig
    visemes: VisemeTrack
    features: _audio_features_pb2.FeatureChunk
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., config: _Optional[_Union[RenderConfig, _Mapping]] = ..., visemes: _Optional[_Union[VisemeTrack, _Mapping]] = ..., features: _Optional[_Union[_audio_features_pb2.FeatureChunk, _Mapping]] = ...) -> None: ...

class AvatarUpload(_message.Message):
    __slots__ = ("meta", "data")
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    meta: AvatarMeta
    data: bytes
    def __init__(self, meta: _Optional[_Union[AvatarMeta, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AvatarMeta(_message.Message):
    __slots__ = ("name", "filename", "backends", "face_index", "face_point")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    FACE_POINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    filename: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    face_index: int
    face_point: ImagePoint
    def __init__(self, name: _Optional[str] = ..., filename: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ..., face_index: _Optional[int] = ..., face_point: _Optional[_Union[ImagePoint, _Mapping]] = ...) -> None: ...

class ImagePoint(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class FaceReport(_message.Message):
    __slots__ = ("box", "confidence", "frames_kept", "frames_rejected", "faces_found", "face_index", "detector")
    BOX_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_KEPT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    FACES_FOUND_FIELD_NUMBER: _ClassVar[int]
    FACE_INDEX_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    box: _containers.RepeatedScalarFieldContainer[float]
    confidence: float
    frames_kept: int
    frames_rejected: int
    faces_found: int
    face_index: int
    detector: str
    def __init__(self, box: _Optional[_Iterable[float]] = ..., confidence: _Optional[float] = ..., frames_kept: _Optional[int] = ..., frames_rejected: _Optional[int] = ..., faces_found: _Optional[int] = ..., face_index: _Optional[int] = ..., detector: _Optional[str] = ...) -> None: ...

class AvatarInfo(_message.Message):
    __slots__ = ("id", "name", "width", "height", "frame_count", "cached", "backends", "face")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    width: int
    height: int
    frame_count: int
    cached: bool
    backends: _containers.RepeatedScalarFieldContainer[str]
    face: FaceReport
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., frame_count: _Optional[int] = ..., cached: _Optional[bool] = ..., backends: _Optional[_Iterable[str]] = ..., face: _Optional[_Union[FaceReport, _Mapping]] = ...) -> None: ...

class ListAvatarsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAvatarsResponse(_message.Message):
    __slots__ = ("avatars",)
    AVATARS_FIELD_NUMBER: _ClassVar[int]
    avatars: _containers.RepeatedCompositeFieldContainer[AvatarInfo]
    def __init__(self, avatars: _Optional[_Iterable[_Union[AvatarInfo, _Mapping]]] = ...) -> None: ...

class DeleteAvatarRequest(_message.Message):
    __slots__ = ("avatar_id",)
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    avatar_id: str
    def __init__(self, avatar_id: _Optional[str] = ...) -> None: ...

class DeleteAvatarResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...
