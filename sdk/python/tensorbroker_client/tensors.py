"""numpy arrays <-> raw tensor frames of the broker (KServe v2 datatypes).

Frames hold the elements little-endian, row-major, without padding. BYTES
elements are a 4-byte little-endian length followed by the bytes; on the numpy
side they are object arrays of ``bytes`` (``str`` elements and ``S``/``U``
arrays are accepted as input and encoded as UTF-8).
"""
from __future__ import annotations

import struct
from typing import Any, Tuple

import numpy as np

#: KServe datatype -> numpy dtype (little-endian). BYTES and BF16 have none.
DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}

#: Every datatype the broker knows. BF16 outputs come back as uint16 arrays of the raw bits.
DATATYPES = tuple(DTYPES) + ("BYTES", "BF16")

_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DTYPES.items()}

_LEN = struct.Struct("<I")


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype of a numpy array (object, bytes and str arrays are BYTES)."""
    dt = array.dtype
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    name = _BY_KIND.get((dt.kind, dt.itemsize))
    if name is None:
        raise TypeError(f"numpy dtype {dt} has no KServe datatype")
    return name


def _element_bytes(v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, str):
        return v.encode("utf-8")
    raise TypeError(f"BYTES elements must be bytes or str, got {type(v).__name__}")


def encode_bytes(array: np.ndarray) -> bytes:
    """Encodes a BYTES tensor: per element a uint32 LE length, then the bytes."""
    parts = []
    for v in array.reshape(-1):
        b = _element_bytes(v.item() if isinstance(v, np.generic) else v)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def decode_bytes(buf: Any, count: int) -> np.ndarray:
    """Decodes ``count`` BYTES elements into a 1-D object array of bytes."""
    mv = memoryview(buf).cast("B")
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(mv):
            raise ValueError(f"BYTES element {i} is truncated")
        (n,) = _LEN.unpack_from(mv, pos)
        pos += 4
        if pos + n > len(mv):
            raise ValueError(f"BYTES element {i} is truncated")
        out[i] = bytes(mv[pos:pos + n])
        pos += n
    if pos != len(mv):
        raise ValueError(f"BYTES data has {len(mv) - pos} trailing bytes")
    return out


def to_frame(array: Any, datatype: str | None = None) -> Tuple[str, list, Any]:
    """(datatype, shape, buffer) for an array. Numeric data is sent without a copy
    when it is already little-endian and C-contiguous."""
    arr = np.asarray(array)
    dt = datatype or datatype_of(arr)
    shape = list(arr.shape)
    if dt == "BYTES":
        return dt, shape, encode_bytes(arr)
    if dt == "BF16":
        if arr.dtype != np.dtype("<u2") and arr.dtype != np.dtype("u2"):
            raise TypeError("BF16 inputs must be given as uint16 arrays of the raw bits")
        target = np.dtype("<u2")
    else:
        target = DTYPES.get(dt)
        if target is None:
            raise ValueError(f"unknown datatype {dt!r}")
    arr = np.ascontiguousarray(arr, dtype=target)
    return dt, shape, memoryview(arr).cast("B") if arr.ndim > 0 and arr.size > 0 else arr.tobytes()


def from_frame(datatype: str, shape: list, buf: Any) -> np.ndarray:
    """A numpy array over a received frame (read-only view for numeric types)."""
    count = 1
    for d in shape:
        count *= d
    if datatype == "BYTES":
        return decode_bytes(buf, count).reshape(shape)
    dt = np.dtype("<u2") if datatype == "BF16" else DTYPES.get(datatype)
    if dt is None:
        raise ValueError(f"unknown datatype {datatype!r}")
    size = len(memoryview(buf).cast("B"))
    if size != count * dt.itemsize:
        raise ValueError(f"{datatype} shape {shape} needs {count * dt.itemsize} bytes, got {size}")
    return np.frombuffer(buf, dtype=dt, count=count).reshape(shape)
