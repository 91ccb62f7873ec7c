from talkmesh.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputOptions(_message.Message):
    __slots__ = ("size", "container", "audio_codec", "renderer_backend", "fragment_ms", "idle_motion")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CODEC_FIELD_NUMBER: _ClassVar[int]
    RENDERER_BACKEND_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_MS_FIELD_NUMBER: _ClassVar[int]
    IDLE_MOTION_FIELD_NUMBER: _ClassVar[int]
    size: str
    container: _types_pb2.Container
    audio_codec: _types_pb2.AudioCodec
    renderer_backend: str
    fragment_ms: int
    idle_motion: _types_pb2.IdleMotion
    def __init__(self, size: _Optional[str] = ..., container: _Optional[_Union[_types_pb2.Container, str]] = ..., audio_codec: _Optional[_Union[_types_pb2.AudioCodec, str]] = ..., renderer_backend: _Optional[str] = ..., fragment_ms: _Optional[int] = ..., idle_motion: _Optional[_Union[_types_pb2.IdleMotion, str]] = ...) -> None: ...

class SpeakRequest(_message.Message):
    __slots__ = ("request_id", "text", "avatar_id", "voice", "voice_settings", "output", "session_id", "text_format")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    VOICE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    avatar_id: str
    voice: str
    voice_settings: _types_pb2.VoiceSettings
    output: OutputOptions
    session_id: str
    text_format: _types_pb2.TextFormat
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., avatar_id: _Optional[str] = ..., voice: _Optional[str] = ..., voice_settings: _Optional[_Union[_types_pb2.VoiceSettings, _Mapping]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., session_id: _Optional[str] = ..., text_format: _Optional[_Union[_types_pb2.TextFormat, str]] = ...) -> None: ...

class SpeakStreamRequest(_message.Message):
    __slots__ = ("start", "text", "audio")
    START_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    start: SpeakRequest
    text: str
    audio: AudioPiece
    def __init__(self, start: _Optional[_Union[SpeakRequest, _Mapping]] = ..., text: _Optional[str] = ..., audio: _Optional[_Union[AudioPiece, _Mapping]] = ...) -> None: ...

class AudioPiece(_message.Message):
    __slots__ = ("sample_rate", "pcm", "total_samples")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    sample_rate: int
    pcm: bytes
    total_samples: int
    def __init__(self, sample_rate: _Optional[int] = ..., pcm: _Optional[bytes] = ..., total_samples: _Optional[int] = ...) -> None: ...

class SpeakTimeline(_message.Message):
    __slots__ = ("received", "first_audio", "last_audio", "first_frame", "first_fragment", "last_fragment")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    FIRST_AUDIO_FIELD_NUMBER: _ClassVar[int]
    LAST_AUDIO_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    LAST_FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    received: float
    first_audio: float
    last_audio: float
    first_frame: float
    first_fragment: float
    last_fragment: float
    def __init__(self, received: _Optional[float] = ..., first_audio: _Optional[float] = ..., last_audio: _Optional[float] = ..., first_frame: _Optional[float] = ..., first_fragment: _Optional[float] = ..., last_fragment: _Optional[float] = ...) -> None: ...

class SpeakSummary(_message.Message):
    __slots__ = ("request_id", "stages", "time_to_first_audio_seconds", "time_to_first_frame_seconds", "time_to_first_fragment_seconds", "audio_seconds", "frames", "total_seconds", "timeline", "video_encoder", "inferred_frames", "warnings", "voice")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_FRAME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_FRAGMENT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_ENCODER_FIELD_NUMBER: _ClassVar[int]
    INFERRED_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    stages: _containers.RepeatedCompositeFieldContainer[_types_pb2.StageTiming]
    time_to_first_audio_seconds: float
    time_to_first_frame_seconds: float
    time_to_first_fragment_seconds: float
    audio_seconds: float
    frames: int
    total_seconds: float
    timeline: SpeakTimeline
    video_encoder: str
    inferred_frames: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    voice: str
    def __init__(self, request_id: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[_types_pb2.StageTiming, _Mapping]]] = ..., time_to_first_audio_seconds: _Optional[float] = ..., time_to_first_frame_seconds: _Optional[float] = ..., time_to_first_fragment_seconds: _Optional[float] = ..., audio_seconds: _Optional[float] = ..., frames: _Optional[int] = ..., total_seconds: _Optional[float] = ..., timeline: _Optional[_Union[SpeakTimeline, _Mapping]] = ..., video_encoder: _Optional[str] = ..., inferred_frames: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., voice: _Optional[str] = ...) -> None: ...

class SpeakChunk(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "media", "summary")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    media: VideoChunk
    summary: SpeakSummary
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., media: _Optional[_Union[VideoChunk, _Mapping]] = ..., summary: _Optional[_Union[SpeakSummary, _Mapping]] = ...) -> None: ...

class VideoChunk(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "data", "init_segment", "mime_type", "frames_encoded", "video_encoder")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    INIT_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_ENCODED_FIELD_NUMBER: _ClassVar[int]
    VIDEO_ENCODER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    data: bytes
    init_segment: bool
    mime_type: str
    frames_encoded: int
    video_encoder: str
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., data: _Optional[bytes] = ..., init_segment: _Optional[bool] = ..., mime_type: _Optional[str] = ..., frames_encoded: _Optional[int] = ..., video_encoder: _Optional[str] = ...) -> None: ...
