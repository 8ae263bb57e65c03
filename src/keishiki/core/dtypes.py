"""One dtype vocabulary (numpy/torch style names) and each format's names mapped onto it.

Formats translate at their boundary: ``from_safetensors("BF16") == "bfloat16"``,
``from_torch_storage("HalfStorage") == "float16"``, ``from_onnx(1) == "float32"``.
GGML block-quantized types keep their lower-case GGML names (``q4_0``, ``q8_0``, ...).
"""

from __future__ import annotations

from ..errors import InvalidRequest
from .lazy_numpy import np  # numpy on first use (start-up time)

# name -> bytes per element (block-quantized types are sized per block elsewhere)
ITEMSIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
    "complex32": 4,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
    "quint4x2": 1,
}

_SAFETENSORS = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
}
_TO_SAFETENSORS = {v: k for k, v in _SAFETENSORS.items()}

# torch.<X>Storage class names of the legacy typed storages (still in every checkpoint's pickle)
_TORCH_STORAGE = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "Float8_e4m3fnStorage": "float8_e4m3fn",
    "Float8_e5m2Storage": "float8_e5m2",
    "UInt16Storage": "uint16",
    "UInt32Storage": "uint32",
    "UInt64Storage": "uint64",
}

# torch.<name> dtype attributes (torch.float32, torch.half, ...)
_TORCH_DTYPE = {
    "float64": "float64",
    "double": "float64",
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "bool": "bool",
    "complex64": "complex64",
    "cfloat": "complex64",
    "complex128": "complex128",
    "cdouble": "complex128",
    "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2",
    "qint8": "qint8",
    "quint8": "quint8",
    "qint32": "qint32",
}

# onnx.TensorProto.DataType enum values
_ONNX = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
    17: "float8_e4m3fn",
    18: "float8_e4m3fnuz",
    19: "float8_e5m2",
    20: "float8_e5m2fnuz",
    21: "uint4",
    22: "int4",
    23: "float4_e2m1",
}

# ml_dtypes provides the numpy dtypes numpy itself lacks
_ML_DTYPES = {"bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"}


def from_safetensors(code: str) -> str:
    """safetensors dtype code (``"BF16"``) -> keishiki name.  An unknown code (a newer
    safetensors type, or a damaged header) is kept as ``safetensors_<CODE>``: lower-casing
    it would let numpy read ``"F8"`` as float64 or ``"F4"`` as float32."""
    return _SAFETENSORS.get(code, f"safetensors_{code}")


class UnsupportedDtype(InvalidRequest, KeyError):
    """A dtype the target format cannot hold (still a KeyError for older callers)."""

    __str__ = InvalidRequest.__str__  # not KeyError's quoted repr


def to_safetensors(name: str) -> str:
    """keishiki name -> safetensors code.

    Raises:
        UnsupportedDtype (an InvalidRequest and a KeyError): a type safetensors cannot hold
        (strings, structured records, objects...): a one-line CLI error, not a crash.
    """
    try:
        return _TO_SAFETENSORS[name]
    except KeyError:
        raise UnsupportedDtype(
            f"dtype {name!r} has no safetensors equivalent (safetensors holds "
            f"numeric tensors only: leave string/structured arrays out, or "
            f"cast them first)"
        ) from None


def from_torch_storage(class_name: str) -> str | None:
    """``"FloatStorage"`` -> ``"float32"``; None when the name is not a typed storage."""
    return _TORCH_STORAGE.get(class_name)


def from_torch_dtype(attr: str) -> str | None:
    """``"float16"``/``"half"`` (the attribute of ``torch``) -> keishiki name."""
    return _TORCH_DTYPE.get(attr)


def from_onnx(code: int) -> str:
    """ONNX TensorProto data type enum -> keishiki name."""
    return _ONNX.get(code, f"onnx_type_{code}")


def itemsize(name: str) -> int | None:
    """Bytes per element, or None for block-quantized or unknown types."""
    return ITEMSIZE.get(name)


def to_numpy(name: str) -> np.dtype:
    """The numpy dtype for a keishiki dtype name (bfloat16/float8 through ml_dtypes)."""
    if name in _ML_DTYPES:
        import ml_dtypes  # light (numpy-only) dependency of keishiki's core

        return np.dtype(getattr(ml_dtypes, name))
    if name == "complex32":
        raise KeyError("complex32 has no numpy dtype")
    return np.dtype(name)


def from_numpy(dtype: np.dtype) -> str:
    """numpy dtype -> keishiki name (``np.float32`` -> ``"float32"``; ml_dtypes' names kept)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "bool"
    return dtype.name
