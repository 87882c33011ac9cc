"""Facts about tensor element types in torch and safetensors files (no torch import).

Names are torch's dtype names without `torch.` (what `registry.schema.dtype_name` produces), so a
checkpoint read here and a live model's `state_dict()` report the same dtype strings.
"""

from __future__ import annotations

# Bytes per element. None: a sub-byte "shell" dtype whose storage size rules we do not check.
ELEMENT_BYTES: dict[str, int | None] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "complex128": 16, "complex64": 8, "complex32": 4,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1,
    "qint8": 1, "quint8": 1, "qint32": 4, "quint4x2": 1, "quint2x4": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1, "float4_e2m1fn_x2": 1,
    "bits8": 1, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1,
    **{f"uint{n}": None for n in range(1, 8)},
    **{f"int{n}": None for n in range(1, 8)},
}

# `torch.float` is pickled as `torch float32`, but older files or hand-written ones may use aliases.
DTYPE_ALIASES = {
    "float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
    "short": "int16", "cfloat": "complex64", "cdouble": "complex128", "chalf": "complex32",
}

# Legacy typed-storage classes (`torch.FloatStorage`, `torch.cuda.HalfStorage`, ...) name the
# element type of the storage; torch >= 2 pickles new dtypes as `UntypedStorage` + an explicit dtype.
STORAGE_CLASS_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128", "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8", "QInt32Storage": "qint32", "QUInt8Storage": "quint8",
    "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",  # bytes
}

# safetensors dtype string -> (torch dtype name, bits per element).
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 64), "F32": ("float32", 32), "F16": ("float16", 16), "BF16": ("bfloat16", 16),
    "I64": ("int64", 64), "I32": ("int32", 32), "I16": ("int16", 16), "I8": ("int8", 8),
    "U64": ("uint64", 64), "U32": ("uint32", 32), "U16": ("uint16", 16), "U8": ("uint8", 8),
    "BOOL": ("bool", 8), "C64": ("complex64", 64),
    "F8_E4M3": ("float8_e4m3fn", 8), "F8_E5M2": ("float8_e5m2", 8), "F8_E8M0": ("float8_e8m0fnu", 8),
    "F6_E2M3": ("float6_e2m3", 6), "F6_E3M2": ("float6_e3m2", 6), "F4": ("float4_e2m1", 4),
}


def canonical_dtype(name: str) -> str | None:
    """`float` -> `float32`; an unknown name -> None."""
    name = DTYPE_ALIASES.get(name, name)
    return name if name in ELEMENT_BYTES else None
