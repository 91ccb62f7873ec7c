from talkmesh.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_COMPLETED: _ClassVar[StopReason]
    STOP_REASON_INTERRUPTED: _ClassVar[StopReason]
    STOP_REASON_FAILED: _ClassVar[StopReason]
    STOP_REASON_SESSION_ENDED: _ClassVar[StopReason]

class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    END_REASON_UNSPECIFIED: _ClassVar[EndReason]
    END_REASON_CLIENT_CLOSED: _ClassVar[EndReason]
    END_REASON_IDLE_TIMEOUT: _ClassVar[EndReason]
    END_REASON_MAX_LENGTH: _ClassVar[EndReason]
    END_REASON_DRAINING: _ClassVar[EndReason]
    END_REASON_FAILED: _ClassVar[EndReason]
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_COMPLETED: StopReason
STOP_REASON_INTERRUPTED: StopReason
STOP_REASON_FAILED: StopReason
STOP_REASON_SESSION_ENDED: StopReason
END_REASON_UNSPECIFIED: EndReason
END_REASON_CLIENT_CLOSED: EndReason
END_REASON_IDLE_TIMEOUT: EndReason
END_REASON_MAX_LENGTH: EndReason
END_REASON_DRAINING: EndReason
END_REASON_FAILED: EndReason

class LiveConfig(_message.Message):
    __slots__ = ("request_id", "avatar_id", "voice", "voice_settings", "size", "renderer_backend", "audio_codec", "idle_timeout_seconds", "max_session_seconds", "text_format", "idle_motion")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    VOICE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    RENDERER_BACKEND_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CODEC_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    IDLE_MOTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    avatar_id: str
    voice: str
    voice_settings: _types_pb2.VoiceSettings
    size: str
    renderer_backend: str
    audio_codec: _types_pb2.AudioCodec
    idle_timeout_seconds: float
    max_session_seconds: float
    text_format: _types_pb2.TextFormat
    idle_motion: _types_pb2.IdleMotion
    def __init__(self, request_id: _Optional[str] = ..., avatar_id: _Optional[str] = ..., voice: _Optional[str] = ..., voice_settings: _Optional[_Union[_types_pb2.VoiceSettings, _Mapping]] = ..., size: _Optional[str] = ..., renderer_backend: _Optional[str] = ..., audio_codec: _Optional[_Union[_types_pb2.AudioCodec, str]] = ..., idle_timeout_seconds: _Optional[float] = ..., max_session_seconds: _Optional[float] = ..., text_format: _Optional[_Union[_types_pb2.TextFormat, str]] = ..., idle_motion: _Optional[_Union[_types_pb2.IdleMotion, str]] = ...) -> None: ...

class SpeakText(_message.Message):
    __slots__ = ("turn_id", "text", "final", "voice")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    text: str
    final: bool
    voice: str
    def __init__(self, turn_id: _Optional[str] = ..., text: _Optional[str] = ..., final: _Optional[bool] = ..., voice: _Optional[str] = ...) -> None: ...

class SpeakAudio(_message.Message):
    __slots__ = ("turn_id", "sample_rate", "pcm", "final")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    sample_rate: int
    pcm: bytes
    final: bool
    def __init__(self, turn_id: _Optional[str] = ..., sample_rate: _Optional[int] = ..., pcm: _Optional[bytes] = ..., final: _Optional[bool] = ...) -> None: ...

class EndOfTurn(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class Interrupt(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class KeepAlive(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LiveClientMessage(_message.Message):
    __slots__ = ("config", "text", "audio", "end_of_turn", "interrupt", "keep_alive")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    config: LiveConfig
    text: SpeakText
    audio: SpeakAudio
    end_of_turn: EndOfTurn
    interrupt: Interrupt
    keep_alive: KeepAlive
    def __init__(self, config: _Optional[_Union[LiveConfig, _Mapping]] = ..., text: _Optional[_Union[SpeakText, _Mapping]] = ..., audio: _Optional[_Union[SpeakAudio, _Mapping]] = ..., end_of_turn: _Optional[_Union[EndOfTurn, _Mapping]] = ..., interrupt: _Optional[_Union[Interrupt, _Mapping]] = ..., keep_alive: _Optional[_Union[KeepAlive, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "width", "height", "fps_numerator", "fps_denominator", "sample_rate", "mime_type", "frame0_unix_seconds", "video_encoder", "avatar_id", "request_id", "max_text_chars", "max_pending_turns")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_NUMERATOR_FIELD_NUMBER: _ClassVar[int]
    FPS_DENOMINATOR_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    FRAME0_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_ENCODER_FIELD_NUMBER: _ClassVar[int]
    AVATAR_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_TURNS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    width: int
    height: int
    fps_numerator: int
    fps_denominator: int
    sample_rate: int
    mime_type: str
    frame0_unix_seconds: float
    video_encoder: str
    avatar_id: str
    request_id: str
    max_text_chars: int
    max_pending_turns: int
    def __init__(self, session_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps_numerator: _Optional[int] = ..., fps_denominator: _Optional[int] = ..., sample_rate: _Optional[int] = ..., mime_type: _Optional[str] = ..., frame0_unix_seconds: _Optional[float] = ..., video_encoder: _Optional[str] = ..., avatar_id: _Optional[str] = ..., request_id: _Optional[str] = ..., max_text_chars: _Optional[int] = ..., max_pending_turns: _Optional[int] = ...) -> None: ...

class LiveMedia(_message.Message):
    __slots__ = ("data", "init_segment", "first_frame", "frame_count", "first_sample", "sample_count", "keyframe", "turn_id", "underrun")
    DATA_FIELD_NUMBER: _ClassVar[int]
    INIT_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    UNDERRUN_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    init_segment: bool
    first_frame: int
    frame_count: int
    first_sample: int
    sample_count: int
    keyframe: bool
    turn_id: str
    underrun: bool
    def __init__(self, data: _Optional[bytes] = ..., init_segment: _Optional[bool] = ..., first_frame: _Optional[int] = ..., frame_count: _Optional[int] = ..., first_sample: _Optional[int] = ..., sample_count: _Optional[int] = ..., keyframe: _Optional[bool] = ..., turn_id: _Optional[str] = ..., underrun: _Optional[bool] = ...) -> None: ...

class SpeakingStarted(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...

class Caption(_message.Message):
    __slots__ = ("turn_id", "segment_index", "text")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    segment_index: int
    text: str
    def __init__(self, turn_id: _Optional[str] = ..., segment_index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class SpeakingStopped(_message.Message):
    __slots__ = ("turn_id", "reason", "samples_played", "sample_rate", "frames_played", "warnings", "voice")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PLAYED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PLAYED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    reason: StopReason
    samples_played: int
    sample_rate: int
    frames_played: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    voice: str
    def __init__(self, turn_id: _Optional[str] = ..., reason: _Optional[_Union[StopReason, str]] = ..., samples_played: _Optional[int] = ..., sample_rate: _Optional[int] = ..., frames_played: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., voice: _Optional[str] = ...) -> None: ...

class InterruptAcknowledged(_message.Message):
    __slots__ = ("turn_id", "stopped_turn_ids")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    STOPPED_TURN_IDS_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    stopped_turn_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, turn_id: _Optional[str] = ..., stopped_turn_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Underrun(_message.Message):
    __slots__ = ("turn_id", "turn_frame")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_FRAME_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    turn_frame: int
    def __init__(self, turn_id: _Optional[str] = ..., turn_frame: _Optional[int] = ...) -> None: ...

class SessionEnding(_message.Message):
    __slots__ = ("reason", "seconds_left")
    REASON_FIELD_NUMBER: _ClassVar[int]
    SECONDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    reason: EndReason
    seconds_left: float
    def __init__(self, reason: _Optional[_Union[EndReason, str]] = ..., seconds_left: _Optional[float] = ...) -> None: ...

class LiveEvent(_message.Message):
    __slots__ = ("unix_seconds", "frame", "speaking_started", "speaking_stopped", "interrupt_acknowledged", "underrun", "session_ending", "caption")
    UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_STARTED_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_STOPPED_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    UNDERRUN_FIELD_NUMBER: _ClassVar[int]
    SESSION_ENDING_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    unix_seconds: float
    frame: int
    speaking_started: SpeakingStarted
    speaking_stopped: SpeakingStopped
    interrupt_acknowledged: InterruptAcknowledged
    underrun: Underrun
    session_ending: SessionEnding
    caption: Caption
    def __init__(self, unix_seconds: _Optional[float] = ..., frame: _Optional[int] = ..., speaking_started: _Optional[_Union[SpeakingStarted, _Mapping]] = ..., speaking_stopped: _Optional[_Union[SpeakingStopped, _Mapping]] = ..., interrupt_acknowledged: _Optional[_Union[InterruptAcknowledged, _Mapping]] = ..., underrun: _Optional[_Union[Underrun, _Mapping]] = ..., session_ending: _Optional[_Union[SessionEnding, _Mapping]] = ..., caption: _Optional[_Union[Caption, _Mapping]] = ...) -> None: ...

class LiveError(_message.Message):
    __slots__ = ("code", "message", "field", "turn_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    turn_id: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., turn_id: _Optional[str] = ...) -> None: ...

class LiveServerMessage(_message.Message):
    __slots__ = ("seq", "started", "media", "event", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    started: SessionStarted
    media: LiveMedia
    event: LiveEvent
    error: LiveError
    def __init__(self, seq: _Optional[int] = ..., started: _Optional[_Union[SessionStarted, _Mapping]] = ..., media: _Optional[_Union[LiveMedia, _Mapping]] = ..., event: _Optional[_Union[LiveEvent, _Mapping]] = ..., error: _Optional[_Union[LiveError, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...
