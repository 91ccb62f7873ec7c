"""numpy arrays <-> talkmesh.v1.Tensor."""

from __future__ import annotations

import numpy as np

from talkmesh.common.errors import InvalidArgument
from talkmesh.v1 import common_pb2 as pb

_TO_NP: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_INT16: np.dtype("<i2"),
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_INT64: np.dtype("<i8"),
}
_FROM_NP = {v: k for k, v in _TO_NP.items()}


def to_tensor(array: np.ndarray) -> pb.Tensor:
    dt = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = _FROM_NP.get(np.dtype(dt))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no talkmesh.v1.Dtype")
    data = np.ascontiguousarray(array, dtype=_TO_NP[code]).tobytes()
    return pb.Tensor(data=data, shape=list(array.shape), dtype=code)  # type: ignore[arg-type]


def from_tensor(tensor: pb.Tensor, field: str = "tensor") -> np.ndarray:
    dt = _TO_NP.get(tensor.dtype)
    if dt is None:
        raise InvalidArgument(f"{field}.dtype", f"unsupported dtype {tensor.dtype}")
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise InvalidArgument(f"{field}.shape", f"negative dimension in {shape}")
    count = int(np.prod(shape)) if shape else 1
    if count * dt.itemsize != len(tensor.data):
        raise InvalidArgument(f"{field}.data", f"{len(tensor.data)} bytes do not match shape {shape} of {dt.name}")
    return np.frombuffer(tensor.data, dtype=dt).reshape(shape)
