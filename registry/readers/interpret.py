"""The meaning of the globals a checkpoint's pickle may call: `TABLE[(module, name)]`.

Each entry is `(kind, handler, value)`:
- "container": dict/list/set/tuple and collections types; rebuilt as plain Python containers;
- "interpreted": tensor rebuild functions (-> `TensorRecord`), `_codecs.encode` (-> bytes),
  `torch.Size` (-> tuple), ...;
- "benign": metadata types whose calls become `Instance` placeholders (argparse.Namespace,
  numpy scalars and arrays, pathlib paths, datetime, ...) and constants (`value`: dtypes,
  storage classes, layouts, qschemes).
A handler takes `(vm, func, args)` (func: the `Global` called) and returns the value; malformed
arguments raise FormatError.
Facts about torch's serialization (argument orders of `torch._utils._rebuild_*`) come from its
documented file format; no torch code runs here.
"""

from __future__ import annotations

import posixpath
import struct
from typing import Any, Callable

from .dtypes import ELEMENT_BYTES, STORAGE_CLASS_DTYPES, canonical_dtype
from .limits import FormatError
from .records import Global, Instance, StorageRef, TensorRecord, check_key

Handler = Callable[[Any, Global, tuple], Any]
TABLE: dict[tuple[str, str], tuple[str, Handler | None, Any]] = {}


def _register(kind: str, *paths: str, value: Any = None) -> Callable[[Handler], Handler]:
    def decorate(handler: Handler) -> Handler:
        for path in paths:
            module, _, name = path.rpartition(".")
            TABLE[(module, name)] = (kind, handler, value)
        return handler
    return decorate


def _placeholder(vm: Any, func: Global, args: tuple) -> Instance:
    return Instance(func, args)


def _benign(*paths: str) -> None:
    for path in paths:
        _register("benign", path)(_placeholder)


def _constant(path: str, value: Any) -> None:
    _register("benign", path, value=value)(_placeholder)


def _bad(what: str, args: tuple) -> FormatError:
    return FormatError(f"malformed {what} call in the pickle (arguments {_kinds(args)})")


def _kinds(args: tuple) -> str:
    return "(" + ", ".join(type(a).__name__ for a in args[:8]) + ")"


def _dtype_of(value: Any) -> str | None:
    if type(value) is Global and value.kind == "benign" and isinstance(value.value, str) and value.value in ELEMENT_BYTES:
        return value.value
    return None


# --- containers ----------------------------------------------------------------------------------


def _pairs(value: Any, func: Global) -> dict:
    if type(value) is dict:
        return dict(value)
    if type(value) in (list, tuple) and all(type(p) in (list, tuple) and len(p) == 2 for p in value):
        return {check_key(k): v for k, v in value}
    raise FormatError(f"unsupported {func.module}.{func.name} in the pickle: built from a {type(value).__name__}, "
                      "not from a dict or key-value pairs")


@_register("container", "collections.OrderedDict", "builtins.dict")
def _make_dict(vm: Any, func: Global, args: tuple) -> dict:
    return _pairs(args[0], func) if args else {}


@_register("container", "collections.Counter")
def _make_counter(vm: Any, func: Global, args: tuple) -> dict:
    """A Counter is a dict of counts: from a mapping, or counting an iterable's elements (as
    `Counter(iterable)` does)."""
    if not args or type(args[0]) is dict:
        return dict(args[0]) if args else {}
    counts: dict = {}
    for item in _iterable(args):
        key = check_key(item)
        counts[key] = counts.get(key, 0) + 1
    return counts


@_register("container", "collections.defaultdict")
def _make_defaultdict(vm: Any, func: Global, args: tuple) -> dict:
    return _pairs(args[1], func) if len(args) > 1 else {}  # the default factory is referenced, never kept


@_register("container", "builtins.list", "collections.deque")
def _make_list(vm: Any, func: Global, args: tuple) -> list:
    return list(_iterable(args)) if args else []


@_register("container", "builtins.tuple")
def _make_tuple(vm: Any, func: Global, args: tuple) -> tuple:
    return tuple(_iterable(args)) if args else ()


@_register("container", "builtins.set", "builtins.frozenset")
def _make_set(vm: Any, func: Global, args: tuple) -> set | frozenset:
    items = {check_key(item) for item in _iterable(args)} if args else set()
    return frozenset(items) if func.name == "frozenset" else items


def _iterable(args: tuple) -> Any:
    if type(args[0]) in (list, tuple, set, frozenset, dict):
        return args[0]
    raise FormatError(f"unsupported container in the pickle: built from a {type(args[0]).__name__}, not a sequence")


@_register("interpreted", "builtins.bytearray", "builtins.bytes")
def _make_bytes(vm: Any, func: Global, args: tuple) -> bytes:
    if not args:
        return b""
    if type(args[0]) in (bytes, bytearray):
        return bytes(args[0])
    if len(args) >= 2 and type(args[0]) is str and args[1] in _SAFE_CODECS:
        return args[0].encode(args[1])
    if type(args[0]) in (list, tuple) and all(type(b) is int and 0 <= b < 256 for b in args[0]):
        return bytes(args[0])
    raise _bad("bytes", args)


_SAFE_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "utf-8", "utf8", "ascii"})


@_register("interpreted", "_codecs.encode")
def _encode(vm: Any, func: Global, args: tuple) -> bytes:
    # protocol 2 pickles bytes as _codecs.encode(text, "latin1")
    if 1 <= len(args) <= 3 and type(args[0]) is str and (len(args) == 1 or args[1] in _SAFE_CODECS):
        return args[0].encode(args[1] if len(args) > 1 else "utf-8")
    raise _bad("_codecs.encode", args)


_SCALARS = {"builtins.int": int, "builtins.float": float, "builtins.str": str, "builtins.bool": bool,
            "builtins.complex": complex}

@_register("interpreted", *_SCALARS)
def _make_scalar(vm: Any, func: Global, args: tuple) -> Any:
    if all(type(a) in (int, float, str, bool) for a in args) and len(args) <= 2:
        return _SCALARS[func.path](*args)
    raise _bad(func.path, args)


@_register("interpreted", "builtins.slice", "builtins.range")
def _make_range(vm: Any, func: Global, args: tuple) -> Instance:
    if all(type(a) in (int, type(None)) for a in args):
        return Instance(func, args)
    raise _bad("slice", args)


_register("benign", "builtins.object")(_placeholder)


@_register("interpreted", "copyreg._reconstructor")
def _reconstructor(vm: Any, func: Global, args: tuple) -> Instance:
    # protocol 0/1 pickles plain objects as _reconstructor(cls, object, None) + BUILD
    if len(args) != 3:
        raise _bad("copyreg._reconstructor", args)
    cls, base, state = args
    instance = Instance(cls if type(cls) is Global else None, ())
    if type(state) is dict:
        instance.items = state
    return instance


@_register("interpreted", "copyreg.__newobj__")
def _newobj(vm: Any, func: Global, args: tuple) -> Any:
    if not args:
        raise _bad("copyreg.__newobj__", args)
    return vm.new(args[0], args[1:])


@_register("interpreted", "copyreg.__newobj_ex__")
def _newobj_ex(vm: Any, func: Global, args: tuple) -> Any:
    if len(args) != 3:
        raise _bad("copyreg.__newobj_ex__", args)
    return vm.new(args[0], args[1])


# --- torch ---------------------------------------------------------------------------------------


def _storage(value: Any, what: str) -> StorageRef:
    if type(value) is not StorageRef:
        raise FormatError(f"malformed {what} in the pickle: its storage is a {type(value).__name__}")
    return value


@_register("interpreted", "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2")
def _rebuild_tensor(vm: Any, func: Global, args: tuple) -> TensorRecord:
    # (storage, storage_offset, size, stride[, requires_grad, backward_hooks[, metadata]])
    if len(args) not in (4, 6, 7):
        raise _bad("tensor rebuild", args)
    storage = _storage(args[0], "tensor")
    return vm.tensor(storage.dtype, args[2], storage, args[1], args[3])


@_register("interpreted", "torch._utils._rebuild_tensor_v3")
def _rebuild_tensor_v3(vm: Any, func: Global, args: tuple) -> TensorRecord:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
    if len(args) not in (7, 8) or _dtype_of(args[6]) is None:
        raise _bad("tensor rebuild", args)
    return vm.tensor(_dtype_of(args[6]), args[2], _storage(args[0], "tensor"), args[1], args[3])


@_register("interpreted", "torch._utils._rebuild_qtensor")
def _rebuild_qtensor(vm: Any, func: Global, args: tuple) -> TensorRecord:
    # (storage, storage_offset, size, stride, quantizer_params, requires_grad, backward_hooks)
    if len(args) != 7:
        raise _bad("quantized tensor rebuild", args)
    storage = _storage(args[0], "quantized tensor")
    return vm.tensor(storage.dtype, args[2], storage, args[1], args[3])


@_register("interpreted", "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state")
def _rebuild_parameter(vm: Any, func: Global, args: tuple) -> TensorRecord:
    # (data, requires_grad, backward_hooks[, state]): a Parameter is its data tensor
    if len(args) not in (3, 4) or type(args[0]) is not TensorRecord:
        raise _bad("parameter rebuild", args)
    return args[0]


@_register("interpreted", "torch._utils._rebuild_meta_tensor_no_storage")
def _rebuild_meta(vm: Any, func: Global, args: tuple) -> TensorRecord:
    # (dtype, size, stride, requires_grad)
    if len(args) != 4 or _dtype_of(args[0]) is None:
        raise _bad("meta tensor rebuild", args)
    return vm.tensor(_dtype_of(args[0]), args[1], None, 0, args[2])


@_register("interpreted", "torch._utils._rebuild_wrapper_subclass")
def _rebuild_wrapper_subclass(vm: Any, func: Global, args: tuple) -> TensorRecord:
    # (cls, dtype, size, stride, storage_offset, layout, device, requires_grad)
    if len(args) != 8 or _dtype_of(args[1]) is None:
        raise _bad("tensor subclass rebuild", args)
    return vm.tensor(_dtype_of(args[1]), args[2], None, args[4], args[3])


@_register("interpreted", "torch._utils._rebuild_sparse_tensor")
def _rebuild_sparse(vm: Any, func: Global, args: tuple) -> TensorRecord:
    # (layout, data): COO data is (indices, values, size[, coalesced]); compressed layouts
    # are (compressed_indices, plain_indices, values, size)
    if len(args) != 2 or type(args[1]) is not tuple or len(args[1]) not in (3, 4):
        raise _bad("sparse tensor rebuild", args)
    layout = args[0].value if type(args[0]) is Global else args[0]
    data = args[1]
    values, size = (data[1], data[2]) if layout == "torch.sparse_coo" else (data[2], data[3])
    if type(values) is not TensorRecord:
        raise _bad("sparse tensor rebuild", args)
    return vm.tensor(values.dtype, size)


@_register("interpreted", "torch._utils._rebuild_device_tensor_from_cpu_tensor")
def _rebuild_from_cpu(vm: Any, func: Global, args: tuple) -> TensorRecord:
    # (data, dtype, device, requires_grad)
    if len(args) != 4 or type(args[0]) is not TensorRecord or _dtype_of(args[1]) is None:
        raise _bad("device tensor rebuild", args)
    return vm.tensor(_dtype_of(args[1]), args[0].shape)


@_register("interpreted", "torch._utils._rebuild_device_tensor_from_numpy", "torch._utils._rebuild_xla_tensor")
def _rebuild_from_numpy(vm: Any, func: Global, args: tuple) -> Any:
    # (numpy array, dtype, device, requires_grad); the array's shape is in its BUILD state
    if len(args) != 4 or _dtype_of(args[1]) is None:
        raise _bad("device tensor rebuild", args)
    shape = _ndarray_shape(args[0])
    return vm.tensor(_dtype_of(args[1]), shape) if shape is not None else Instance(func, args)


_register("benign", "torch._utils._rebuild_nested_tensor")(_placeholder)


@_register("interpreted", "torch._tensor._rebuild_from_type_v2", "torch._tensor._rebuild_from_type")
def _rebuild_from_type(vm: Any, func: Global, args: tuple) -> Any:
    # (func, new_type, args, state): a tensor subclass (Parameter, ...) is func(*args)
    if len(args) != 4 or type(args[2]) is not tuple:
        raise _bad("tensor subclass rebuild", args)
    return vm.call(args[0], args[2])


@_register("interpreted", "torch.Size")
def _size(vm: Any, func: Global, args: tuple) -> tuple:
    if len(args) == 1 and type(args[0]) in (tuple, list):
        return tuple(args[0])
    raise _bad("torch.Size", args)


@_register("interpreted", "torch.device")
def _device(vm: Any, func: Global, args: tuple) -> str:
    if 1 <= len(args) <= 2 and type(args[0]) is str and (len(args) == 1 or type(args[1]) in (int, type(None))):
        return args[0] if len(args) == 1 or args[1] is None else f"{args[0]}:{args[1]}"
    raise _bad("torch.device", args)


@_register("interpreted", "torch.serialization._get_layout")
def _layout(vm: Any, func: Global, args: tuple) -> str:
    if len(args) == 1 and type(args[0]) is str:
        return args[0]
    raise _bad("torch.serialization._get_layout", args)


for _name in list(ELEMENT_BYTES) + ["float", "double", "half", "long", "int", "short", "cfloat", "cdouble", "chalf"]:
    _constant(f"torch.{_name}", canonical_dtype(_name))
for _name, _dtype in STORAGE_CLASS_DTYPES.items():
    for _module in ("torch", "torch.cuda", "torch.storage"):
        _constant(f"{_module}.{_name}", _dtype)
_constant("torch.storage.TypedStorage", None)
for _name in ("per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
              "per_channel_affine_float_qparams"):
    _constant(f"torch.{_name}", _name)
for _name in ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged"):
    _constant(f"torch.{_name}", f"torch.{_name}")
for _name in ("Tensor", "nn.parameter.Parameter", "nn.parameter.Buffer", "nn.parameter.UninitializedParameter",
              "nn.parameter.UninitializedBuffer", "_tensor.Tensor"):
    _constant(f"torch.{_name}", None)
for _prefix in ("torch", "torch.cuda"):
    for _name in ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"):
        _constant(f"{_prefix}.{_name}Tensor", None)


# --- benign metadata types -----------------------------------------------------------------------

_benign(
    "argparse.Namespace",
    "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta", "datetime.timezone",
    "decimal.Decimal", "fractions.Fraction", "uuid.UUID",
    "numpy.ndarray", "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random._pickle.__generator_ctor", "numpy.random.mtrand._rand",
)

_NUMPY_KINDS = {"i": "bhiq", "u": "BHIQ", "f": "?efd", "b": "?"}


_benign("numpy.dtype")


@_register("benign", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
def _numpy_scalar(vm: Any, func: Global, args: tuple) -> Instance:
    # (dtype, raw bytes): decode plain numbers, so `step=np.int64(5)` reads as 5
    instance = Instance(func, args)
    if len(args) == 2 and type(args[0]) is Instance and type(args[1]) is bytes and args[0].args:
        spec, raw = args[0].args[0], args[1]
        order = args[0].state[1] if type(args[0].state) is tuple and len(args[0].state) > 1 else "<"
        instance.value = _decode_number(spec, raw, order)
    return instance


def _decode_number(spec: Any, raw: bytes, order: Any) -> Any:
    if type(spec) is not str or len(spec) != 2 or spec[0] not in "iufb" or not spec[1].isdigit():
        return None
    size = int(spec[1])
    codes = {"i": {1: "b", 2: "h", 4: "i", 8: "q"}, "u": {1: "B", 2: "H", 4: "I", 8: "Q"},
             "f": {2: "e", 4: "f", 8: "d"}, "b": {1: "?"}}[spec[0]]
    if size not in codes or len(raw) != size:
        return None
    return struct.unpack((">" if order == ">" else "<") + codes[size], raw)[0]


@_register("benign", "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
def _numpy_array(vm: Any, func: Global, args: tuple) -> Instance:
    # (ndarray class, shape, typecode); the array's real shape and dtype arrive by BUILD
    return Instance(args[0] if args and type(args[0]) is Global else func, args)


def _ndarray_shape(value: Any) -> tuple | None:
    # ndarray BUILD state: (version, shape, dtype, is_fortran, raw data)
    state = value.state if type(value) is Instance else None
    if type(state) is tuple and len(state) == 5 and type(state[1]) is tuple:
        if all(type(d) is int and d >= 0 for d in state[1]):
            return state[1]
    return None


_PATH_CLASSES = [f"{module}.{name}" for module in ("pathlib", "pathlib._local")
                 for name in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")]


@_register("benign", *_PATH_CLASSES)
def _make_path(vm: Any, func: Global, args: tuple) -> Instance:
    instance = Instance(func, args)
    if all(type(part) is str for part in args):
        windows = "Windows" in func.name
        instance.value = ("\\".join(args) if windows else posixpath.join(*args)) if args else "."
    return instance
