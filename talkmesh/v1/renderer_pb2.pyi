from talkmesh.v1 import audio_features_pb2 as _audio_features_pb2
from talkmesh.v1 import common_pb2 as _common_pb2
from talkmesh.v1 import types_pb2 as _types_pb2
from talkmesh.v1 import types_pb2 as _types_pb2_1
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union
from talkmesh.v1.types_pb2 import VoiceSettings as VoiceSettings
from talkmesh.v1.types_pb2 import ListVoicesRequest as ListVoicesRequest
from talkmesh.v1.types_pb2 import Voice as Voice
from talkmesh.v1.types_pb2 import ListVoicesResponse as ListVoicesResponse
from talkmesh.v1.types_pb2 import AvatarUpload as AvatarUpload
from talkmesh.v1.types_pb2 import AvatarMeta as AvatarMeta
from talkmesh.v1.types_pb2 import ImagePoint as ImagePoint
from talkmesh.v1.types_pb2 import FaceReport as FaceReport
from talkmesh.v1.types_pb2 import AvatarInfo as AvatarInfo
from talkmesh.v1.types_pb2 import AvatarProgress as AvatarProgress
from talkmesh.v1.types_pb2 import AvatarRegistration as AvatarRegistration
from talkmesh.v1.types_pb2 import ListAvatarsRequest as ListAvatarsRequest
from talkmesh.v1.types_pb2 import GetAvatarRequest as GetAvatarRequest
from talkmesh.v1.types_pb2 import ListAvatarsResponse as ListAvatarsResponse
from talkmesh.v1.types_pb2 import DeleteAvatarRequest as DeleteAvatarRequest
from talkmesh.v1.types_pb2 import DeleteAvatarResponse as DeleteAvatarResponse
from talkmesh.v1.types_pb2 import StageTiming as StageTiming
from talkmesh.v1.types_pb2 import Container as Container
from talkmesh.v1.types_pb2 import AudioCodec as AudioCodec
from talkmesh.v1.types_pb2 import TextFormat as TextFormat
from talkmesh.v1.types_pb2 import IdleMotion as IdleMotion
from talkmesh.v1.types_pb2 import Framing as Framing

DESCRIPTOR: _descriptor.FileDescriptor
CONTAINER_UNSPECIFIED: _types_pb2_1.Container
CONTAINER_FMP4: _types_pb2_1.Container
CONTAINER_MPEGTS: _types_pb2_1.Container
CONTAINER_MP4: _types_pb2_1.Container
AUDIO_CODEC_UNSPECIFIED: _types_pb2_1.AudioCodec
AUDIO_CODEC_AAC: _types_pb2_1.AudioCodec
AUDIO_CODEC_OPUS: _types_pb2_1.AudioCodec
TEXT_FORMAT_UNSPECIFIED: _types_pb2_1.TextFormat
TEXT_FORMAT_PLAIN: _types_pb2_1.TextFormat
TEXT_FORMAT_MARKDOWN: _types_pb2_1.TextFormat
IDLE_MOTION_UNSPECIFIED: _types_pb2_1.IdleMotion
IDLE_MOTION_ON: _types_pb2_1.IdleMotion
IDLE_MOTION_OFF: _types_pb2_1.IdleMotion
FRAMING_UNSPECIFIED: _types_pb2_1.Framing
FRAMING_AUTO: _types_pb2_1.Framing
FRAMING_AS_IS: _types_pb2_1.Framing
FRAMING_HEAD_AND_SHOULDERS: _types_pb2_1.Framing

class RenderConfig(_message.Message):
    __slots__ = ("request_id", "avatar_id", "backend", "size", "fps", "pixel_format", "sample_rate", "session_id", "batch_frames", "idle_motion")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FRAMES_FIELD_NUMBER: _ClassVar[int]
    IDLE_MOTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    avatar_id: str
    backend: str
    size: str
    fps: float
    pixel_format: _common_pb2.PixelFormat
    sample_rate: int
    session_id: str
    batch_frames: bool
    idle_motion: _types_pb2_1.IdleMotion
    def __init__(self, request_id: _Optional[str] = ..., avatar_id: _Optional[str] = ..., backend: _Optional[str] = ..., size: _Optional[str] = ..., fps: _Optional[float] = ..., pixel_format: _Optional[_Union[_common_pb2.PixelFormat, str]] = ..., sample_rate: _Optional[int] = ..., session_id: _Optional[str] = ..., batch_frames: _Optional[bool] = ..., idle_motion: _Optional[_Union[_types_pb2_1.IdleMotion, str]] = ...) -> None: ...

class VisemeTrack(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.VisemeEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.VisemeEvent, _Mapping]]] = ...) -> None: ...

class RenderRequest(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "config", "visemes", "features", "frame_ring")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    VISEMES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FRAME_RING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    config: RenderConfig
    visemes: VisemeTrack
    features: _audio_features_pb2.FeatureChunk
    frame_ring: FrameRing
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., config: _Optional[_Union[RenderConfig, _Mapping]] = ..., visemes: _Optional[_Union[VisemeTrack, _Mapping]] = ..., features: _Optional[_Union[_audio_features_pb2.FeatureChunk, _Mapping]] = ..., frame_ring: _Optional[_Union[FrameRing, _Mapping]] = ...) -> None: ...

class FrameRing(_message.Message):
    __slots__ = ("name", "slots", "slot_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SLOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    slots: int
    slot_bytes: int
    def __init__(self, name: _Optional[str] = ..., slots: _Optional[int] = ..., slot_bytes: _Optional[int] = ...) -> None: ...
