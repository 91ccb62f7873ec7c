from talkmesh.v1 import audio_features_pb2 as _audio_features_pb2
from talkmesh.v1 import common_pb2 as _common_pb2
from talkmesh.v1 import types_pb2 as _types_pb2
from talkmesh.v1 import live_pb2 as _live_pb2
from talkmesh.v1 import renderer_pb2 as _renderer_pb2
from talkmesh.v1 import types_pb2 as _types_pb2_1
from talkmesh.v1 import types_pb2 as _types_pb2_1_1
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
CONTAINER_UNSPECIFIED: _types_pb2_1_1.Container
CONTAINER_FMP4: _types_pb2_1_1.Container
CONTAINER_MPEGTS: _types_pb2_1_1.Container
CONTAINER_MP4: _types_pb2_1_1.Container
AUDIO_CODEC_UNSPECIFIED: _types_pb2_1_1.AudioCodec
AUDIO_CODEC_AAC: _types_pb2_1_1.AudioCodec
AUDIO_CODEC_OPUS: _types_pb2_1_1.AudioCodec
TEXT_FORMAT_UNSPECIFIED: _types_pb2_1_1.TextFormat
TEXT_FORMAT_PLAIN: _types_pb2_1_1.TextFormat
TEXT_FORMAT_MARKDOWN: _types_pb2_1_1.TextFormat
IDLE_MOTION_UNSPECIFIED: _types_pb2_1_1.IdleMotion
IDLE_MOTION_ON: _types_pb2_1_1.IdleMotion
IDLE_MOTION_OFF: _types_pb2_1_1.IdleMotion
FRAMING_UNSPECIFIED: _types_pb2_1_1.Framing
FRAMING_AUTO: _types_pb2_1_1.Framing
FRAMING_AS_IS: _types_pb2_1_1.Framing
FRAMING_HEAD_AND_SHOULDERS: _types_pb2_1_1.Framing

class LiveEncodeConfig(_message.Message):
    __slots__ = ("session_id", "request_id", "render", "fps", "sample_rate", "audio_codec", "lead_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RENDER_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CODEC_FIELD_NUMBER: _ClassVar[int]
    LEAD_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    request_id: str
    render: _renderer_pb2.RenderConfig
    fps: float
    sample_rate: int
    audio_codec: _types_pb2_1_1.AudioCodec
    lead_ms: int
    def __init__(self, session_id: _Optional[str] = ..., request_id: _Optional[str] = ..., render: _Optional[_Union[_renderer_pb2.RenderConfig, _Mapping]] = ..., fps: _Optional[float] = ..., sample_rate: _Optional[int] = ..., audio_codec: _Optional[_Union[_types_pb2_1_1.AudioCodec, str]] = ..., lead_ms: _Optional[int] = ...) -> None: ...

class TurnStart(_message.Message):
    __slots__ = ("source_sample_rate",)
    SOURCE_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    source_sample_rate: int
    def __init__(self, source_sample_rate: _Optional[int] = ...) -> None: ...

class TurnCaption(_message.Message):
    __slots__ = ("start_sample", "segment_index", "text")
    START_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    start_sample: int
    segment_index: int
    text: str
    def __init__(self, start_sample: _Optional[int] = ..., segment_index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class LiveEncodeRequest(_message.Message):
    __slots__ = ("turn_id", "config", "turn_start", "audio", "visemes", "features", "end_of_turn", "interrupt", "turn_failed", "end_session", "caption")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TURN_START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VISEMES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    TURN_FAILED_FIELD_NUMBER: _ClassVar[int]
    END_SESSION_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    config: LiveEncodeConfig
    turn_start: TurnStart
    audio: _common_pb2.AudioChunk
    visemes: _renderer_pb2.VisemeTrack
    features: _audio_features_pb2.FeatureChunk
    end_of_turn: bool
    interrupt: bool
    turn_failed: str
    end_session: bool
    caption: TurnCaption
    def __init__(self, turn_id: _Optional[str] = ..., config: _Optional[_Union[LiveEncodeConfig, _Mapping]] = ..., turn_start: _Optional[_Union[TurnStart, _Mapping]] = ..., audio: _Optional[_Union[_common_pb2.AudioChunk, _Mapping]] = ..., visemes: _Optional[_Union[_renderer_pb2.VisemeTrack, _Mapping]] = ..., features: _Optional[_Union[_audio_features_pb2.FeatureChunk, _Mapping]] = ..., end_of_turn: _Optional[bool] = ..., interrupt: _Optional[bool] = ..., turn_failed: _Optional[str] = ..., end_session: _Optional[bool] = ..., caption: _Optional[_Union[TurnCaption, _Mapping]] = ...) -> None: ...

class EncodeConfig(_message.Message):
    __slots__ = ("request_id", "width", "height", "fps", "pixel_format", "sample_rate", "container", "audio_codec", "fragment_ms", "render")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CODEC_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_MS_FIELD_NUMBER: _ClassVar[int]
    RENDER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    width: int
    height: int
    fps: float
    pixel_format: _common_pb2.PixelFormat
    sample_rate: int
    container: _types_pb2_1_1.Container
    audio_codec: _types_pb2_1_1.AudioCodec
    fragment_ms: int
    render: _renderer_pb2.RenderConfig
    def __init__(self, request_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., pixel_format: _Optional[_Union[_common_pb2.PixelFormat, str]] = ..., sample_rate: _Optional[int] = ..., container: _Optional[_Union[_types_pb2_1_1.Container, str]] = ..., audio_codec: _Optional[_Union[_types_pb2_1_1.AudioCodec, str]] = ..., fragment_ms: _Optional[int] = ..., render: _Optional[_Union[_renderer_pb2.RenderConfig, _Mapping]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "config", "frame", "audio", "visemes", "features")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    VISEMES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    config: EncodeConfig
    frame: _common_pb2.VideoFrame
    audio: _common_pb2.AudioChunk
    visemes: _renderer_pb2.VisemeTrack
    features: _audio_features_pb2.FeatureChunk
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., config: _Optional[_Union[EncodeConfig, _Mapping]] = ..., frame: _Optional[_Union[_common_pb2.VideoFrame, _Mapping]] = ..., audio: _Optional[_Union[_common_pb2.AudioChunk, _Mapping]] = ..., visemes: _Optional[_Union[_renderer_pb2.VisemeTrack, _Mapping]] = ..., features: _Optional[_Union[_audio_features_pb2.FeatureChunk, _Mapping]] = ...) -> None: ...

class MediaChunk(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "data", "init_segment", "mime_type", "frames_encoded", "video_encoder", "stages", "frames_inferred")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    INIT_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_ENCODED_FIELD_NUMBER: _ClassVar[int]
    VIDEO_ENCODER_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_INFERRED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    data: bytes
    init_segment: bool
    mime_type: str
    frames_encoded: int
    video_encoder: str
    stages: _containers.RepeatedCompositeFieldContainer[_types_pb2_1_1.StageTiming]
    frames_inferred: int
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., data: _Optional[bytes] = ..., init_segment: _Optional[bool] = ..., mime_type: _Optional[str] = ..., frames_encoded: _Optional[int] = ..., video_encoder: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[_types_pb2_1_1.StageTiming, _Mapping]]] = ..., frames_inferred: _Optional[int] = ...) -> None: ...
