from talkmesh.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
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
CONTAINER_UNSPECIFIED: _types_pb2.Container
CONTAINER_FMP4: _types_pb2.Container
CONTAINER_MPEGTS: _types_pb2.Container
CONTAINER_MP4: _types_pb2.Container
AUDIO_CODEC_UNSPECIFIED: _types_pb2.AudioCodec
AUDIO_CODEC_AAC: _types_pb2.AudioCodec
AUDIO_CODEC_OPUS: _types_pb2.AudioCodec
TEXT_FORMAT_UNSPECIFIED: _types_pb2.TextFormat
TEXT_FORMAT_PLAIN: _types_pb2.TextFormat
TEXT_FORMAT_MARKDOWN: _types_pb2.TextFormat
IDLE_MOTION_UNSPECIFIED: _types_pb2.IdleMotion
IDLE_MOTION_ON: _types_pb2.IdleMotion
IDLE_MOTION_OFF: _types_pb2.IdleMotion
FRAMING_UNSPECIFIED: _types_pb2.Framing
FRAMING_AUTO: _types_pb2.Framing
FRAMING_AS_IS: _types_pb2.Framing
FRAMING_HEAD_AND_SHOULDERS: _types_pb2.Framing

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_FLOAT32: _ClassVar[Dtype]
    DTYPE_FLOAT16: _ClassVar[Dtype]
    DTYPE_INT16: _ClassVar[Dtype]
    DTYPE_UINT8: _ClassVar[Dtype]
    DTYPE_INT64: _ClassVar[Dtype]

class Viseme(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VISEME_REST: _ClassVar[Viseme]
    VISEME_CLOSED: _ClassVar[Viseme]
    VISEME_OPEN: _ClassVar[Viseme]
    VISEME_SPREAD: _ClassVar[Viseme]
    VISEME_ROUNDED: _ClassVar[Viseme]
    VISEME_FV: _ClassVar[Viseme]
    VISEME_TH: _ClassVar[Viseme]
    VISEME_SZ: _ClassVar[Viseme]
    VISEME_L: _ClassVar[Viseme]
    VISEME_SH: _ClassVar[Viseme]
    VISEME_KG: _ClassVar[Viseme]
    VISEME_TD: _ClassVar[Viseme]
    VISEME_R: _ClassVar[Viseme]
    VISEME_MID: _ClassVar[Viseme]

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_I420: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB24: _ClassVar[PixelFormat]
DTYPE_UNSPECIFIED: Dtype
DTYPE_FLOAT32: Dtype
DTYPE_FLOAT16: Dtype
DTYPE_INT16: Dtype
DTYPE_UINT8: Dtype
DTYPE_INT64: Dtype
VISEME_REST: Viseme
VISEME_CLOSED: Viseme
VISEME_OPEN: Viseme
VISEME_SPREAD: Viseme
VISEME_ROUNDED: Viseme
VISEME_FV: Viseme
VISEME_TH: Viseme
VISEME_SZ: Viseme
VISEME_L: Viseme
VISEME_SH: Viseme
VISEME_KG: Viseme
VISEME_TD: Viseme
VISEME_R: Viseme
VISEME_MID: Viseme
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_I420: PixelFormat
PIXEL_FORMAT_RGB24: PixelFormat

class Tensor(_message.Message):
    __slots__ = ("data", "shape", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ...) -> None: ...

class VisemeEvent(_message.Message):
    __slots__ = ("viseme", "start_sample", "end_sample", "phoneme")
    VISEME_FIELD_NUMBER: _ClassVar[int]
    START_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    END_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    PHONEME_FIELD_NUMBER: _ClassVar[int]
    viseme: Viseme
    start_sample: int
    end_sample: int
    phoneme: str
    def __init__(self, viseme: _Optional[_Union[Viseme, str]] = ..., start_sample: _Optional[int] = ..., end_sample: _Optional[int] = ..., phoneme: _Optional[str] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "sample_rate", "sample_offset", "pcm", "visemes", "segment_index", "segment_text")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    VISEMES_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_TEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    sample_rate: int
    sample_offset: int
    pcm: bytes
    visemes: _containers.RepeatedCompositeFieldContainer[VisemeEvent]
    segment_index: int
    segment_text: str
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., sample_rate: _Optional[int] = ..., sample_offset: _Optional[int] = ..., pcm: _Optional[bytes] = ..., visemes: _Optional[_Iterable[_Union[VisemeEvent, _Mapping]]] = ..., segment_index: _Optional[int] = ..., segment_text: _Optional[str] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "frame_index", "width", "height", "pixel_format", "data", "part_index", "part_count", "inferred", "frames", "in_ring")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PART_INDEX_FIELD_NUMBER: _ClassVar[int]
    PART_COUNT_FIELD_NUMBER: _ClassVar[int]
    INFERRED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    IN_RING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    frame_index: int
    width: int
    height: int
    pixel_format: PixelFormat
    data: bytes
    part_index: int
    part_count: int
    inferred: bool
    frames: _containers.RepeatedCompositeFieldContainer[VideoFrame]
    in_ring: bool
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., frame_index: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., pixel_format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ..., part_index: _Optional[int] = ..., part_count: _Optional[int] = ..., inferred: _Optional[bool] = ..., frames: _Optional[_Iterable[_Union[VideoFrame, _Mapping]]] = ..., in_ring: _Optional[bool] = ...) -> None: ...

class FrameActivity(_message.Message):
    __slots__ = ("rms_dbfs", "voiced", "loudness")
    RMS_DBFS_FIELD_NUMBER: _ClassVar[int]
    VOICED_FIELD_NUMBER: _ClassVar[int]
    LOUDNESS_FIELD_NUMBER: _ClassVar[int]
    rms_dbfs: float
    voiced: bool
    loudness: float
    def __init__(self, rms_dbfs: _Optional[float] = ..., voiced: _Optional[bool] = ..., loudness: _Optional[float] = ...) -> None: ...
