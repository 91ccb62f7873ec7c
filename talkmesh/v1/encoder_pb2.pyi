from talkmesh.v1 import audio_features_pb2 as _audio_features_pb2
from talkmesh.v1 import common_pb2 as _common_pb2
from talkmesh.v1 import renderer_pb2 as _renderer_pb2
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
CONTAINER_UNSPECIFIED: Container
CONTAINER_FMP4: Container
CONTAINER_MPEGTS: Container
CONTAINER_MP4: Container
AUDIO_CODEC_UNSPECIFIED: AudioCodec
AUDIO_CODEC_AAC: AudioCodec
AUDIO_CODEC_OPUS: AudioCodec

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
    container: Container
    audio_codec: AudioCodec
    fragment_ms: int
    render: _renderer_pb2.RenderConfig
    def __init__(self, request_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., pixel_format: _Optional[_Union[_common_pb2.PixelFormat, str]] = ..., sample_rate: _Optional[int] = ..., container: _Optional[_Union[Container, str]] = ..., audio_codec: _Optional[_Union[AudioCodec, str]] = ..., fragment_ms: _Optional[int] = ..., render: _Optional[_Union[_renderer_pb2.RenderConfig, _Mapping]] = ...) -> None: ...

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
    stages: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    frames_inferred: int
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., data: _Optional[bytes] = ..., init_segment: _Optional[bool] = ..., mime_type: _Optional[str] = ..., frames_encoded: _Optional[int] = ..., video_encoder: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ..., frames_inferred: _Optional[int] = ...) -> None: ...
