from talkmesh.v1 import common_pb2 as _common_pb2
from talkmesh.v1 import types_pb2 as _types_pb2
from talkmesh.v1 import types_pb2 as _types_pb2_1
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
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

class SynthesisConfig(_message.Message):
    __slots__ = ("request_id", "voice", "settings", "chunk_ms", "max_chunk_ms", "text_format")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    voice: str
    settings: _types_pb2_1.VoiceSettings
    chunk_ms: int
    max_chunk_ms: int
    text_format: _types_pb2_1.TextFormat
    def __init__(self, request_id: _Optional[str] = ..., voice: _Optional[str] = ..., settings: _Optional[_Union[_types_pb2_1.VoiceSettings, _Mapping]] = ..., chunk_ms: _Optional[int] = ..., max_chunk_ms: _Optional[int] = ..., text_format: _Optional[_Union[_types_pb2_1.TextFormat, str]] = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("config", "text")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    config: SynthesisConfig
    text: str
    def __init__(self, config: _Optional[_Union[SynthesisConfig, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class TextPiece(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "config", "text")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    config: SynthesisConfig
    text: str
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., config: _Optional[_Union[SynthesisConfig, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...
