from talkmesh.v1 import common_pb2 as _common_pb2
from talkmesh.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_TYPE_UNSPECIFIED: _ClassVar[FeatureType]
    FEATURE_TYPE_WHISPER_LOG_MEL: _ClassVar[FeatureType]
    FEATURE_TYPE_WAV2LIP_MEL: _ClassVar[FeatureType]
    FEATURE_TYPE_WHISPER_EMBEDDING: _ClassVar[FeatureType]
    FEATURE_TYPE_ACTIVITY: _ClassVar[FeatureType]
FEATURE_TYPE_UNSPECIFIED: FeatureType
FEATURE_TYPE_WHISPER_LOG_MEL: FeatureType
FEATURE_TYPE_WAV2LIP_MEL: FeatureType
FEATURE_TYPE_WHISPER_EMBEDDING: FeatureType
FEATURE_TYPE_ACTIVITY: FeatureType

class FeatureConfig(_message.Message):
    __slots__ = ("request_id", "feature_type", "fps", "batch_frames", "activity_state")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FRAMES_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_STATE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    feature_type: FeatureType
    fps: float
    batch_frames: bool
    activity_state: ActivityState
    def __init__(self, request_id: _Optional[str] = ..., feature_type: _Optional[_Union[FeatureType, str]] = ..., fps: _Optional[float] = ..., batch_frames: _Optional[bool] = ..., activity_state: _Optional[_Union[ActivityState, _Mapping]] = ...) -> None: ...

class ActivityState(_message.Message):
    __slots__ = ("levels", "peak_dbfs")
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    PEAK_DBFS_FIELD_NUMBER: _ClassVar[int]
    levels: _containers.RepeatedScalarFieldContainer[float]
    peak_dbfs: float
    def __init__(self, levels: _Optional[_Iterable[float]] = ..., peak_dbfs: _Optional[float] = ...) -> None: ...

class FeatureRequest(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "config", "audio")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    config: FeatureConfig
    audio: _common_pb2.AudioChunk
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., config: _Optional[_Union[FeatureConfig, _Mapping]] = ..., audio: _Optional[_Union[_common_pb2.AudioChunk, _Mapping]] = ...) -> None: ...

class FeatureChunk(_message.Message):
    __slots__ = ("request_id", "seq", "end_of_stream", "frame_index", "features", "activity", "frame_count", "frames", "activity_state", "musetalk_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    END_OF_STREAM_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_STATE_FIELD_NUMBER: _ClassVar[int]
    MUSETALK_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    seq: int
    end_of_stream: bool
    frame_index: int
    features: _common_pb2.Tensor
    activity: _common_pb2.FrameActivity
    frame_count: int
    frames: _containers.RepeatedCompositeFieldContainer[FeatureChunk]
    activity_state: ActivityState
    musetalk_version: str
    def __init__(self, request_id: _Optional[str] = ..., seq: _Optional[int] = ..., end_of_stream: _Optional[bool] = ..., frame_index: _Optional[int] = ..., features: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., activity: _Optional[_Union[_common_pb2.FrameActivity, _Mapping]] = ..., frame_count: _Optional[int] = ..., frames: _Optional[_Iterable[_Union[FeatureChunk, _Mapping]]] = ..., activity_state: _Optional[_Union[ActivityState, _Mapping]] = ..., musetalk_version: _Optional[str] = ...) -> None: ...
