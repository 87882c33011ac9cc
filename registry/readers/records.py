"""What the metadata unpickler builds instead of the objects a real unpickler would build.

Nothing here can run code: a `Global` is a name, never an imported object; an `Instance` is a
record of what pickle *would* have constructed; a `TensorRecord` is shape, dtype and storage.
"""

from __future__ import annotations

from typing import Any, Callable

from .limits import FormatError


class Global:
    """A reference to `module.name` found in a pickle. Never imported, never called.

    `kind` is how the policy classifies it (see `policy.py`); `handler(vm, args)` interprets a
    call to it (None: a call would run code we do not interpret); `value` is the meaning of a
    constant (a dtype name for `torch.float16` and for `torch.HalfStorage`, ...).
    """

    __slots__ = ("module", "name", "path", "kind", "handler", "value")

    def __init__(self, module: str, name: str, kind: str, handler: Callable | None = None, value: Any = None):
        self.module = module
        self.name = name
        self.path = f"{module}.{name}"
        self.kind = kind
        self.handler = handler
        self.value = value

    def __repr__(self) -> str:
        return f"<global {self.path}>"


class Instance:
    """An object pickle would have built (by a call, `NEWOBJ` or `_reconstructor`), kept as data.

    `cls` is the `Global` it would be an instance of (None when the callable was itself built by
    the pickle); `args` what it would be called with; `state` what `BUILD` would set; `items` /
    `listitems` what `SETITEM(S)` / `APPEND(S)` would add (dict and list subclasses); `value` a
    plain value it stands for when one is known (a numpy scalar's number, a path's text).
    """

    __slots__ = ("cls", "args", "state", "items", "listitems", "value")

    def __init__(self, cls: Global | None, args: Any = (), value: Any = None):
        self.cls = cls
        self.args = args
        self.state: Any = None
        self.items: dict | None = None
        self.listitems: list | None = None
        self.value = value

    @property
    def type_name(self) -> str:
        return self.cls.path if self.cls is not None else "object"

    def __repr__(self) -> str:
        return f"<{self.type_name}>"


class StorageRef:
    """A tensor storage named by the pickle's persistent id: where its bytes are and how many.

    `nbytes` is what the pickle declares; readers check the file holds that many bytes.
    `base_offset` (bytes) is non-zero only for legacy-format storage views.
    """

    __slots__ = ("key", "dtype", "nbytes", "location", "base_offset")

    def __init__(self, key: str, dtype: str, nbytes: int, location: str, base_offset: int = 0):
        self.key = key
        self.dtype = dtype
        self.nbytes = nbytes
        self.location = location
        self.base_offset = base_offset


class TensorRecord:
    """A tensor as pickle would rebuild it: dtype name, shape, and the storage bytes it views.

    `storage` is None for tensors without storage (meta, wrapper subclasses, sparse, from numpy).
    `offset` and `stride` are in elements of `dtype`.
    """

    __slots__ = ("dtype", "shape", "storage", "offset", "stride")

    def __init__(self, dtype: str, shape: tuple[int, ...], storage: StorageRef | None = None,
                 offset: int = 0, stride: tuple[int, ...] = ()):
        self.dtype = dtype
        self.shape = shape
        self.storage = storage
        self.offset = offset
        self.stride = stride

    def bytes_needed(self, element_bytes: int) -> int:
        """Bytes of storage this view reaches from the storage's start (0 when it has no elements)."""
        if 0 in self.shape:
            return 0
        last = self.offset
        for size, step in zip(self.shape, self.stride):
            last += (size - 1) * step
        return (last + 1) * element_bytes

    def __repr__(self) -> str:
        return f"<tensor {self.dtype} {list(self.shape)}>"


_KEY_TYPES = (str, int, float, bool, type(None), bytes, Global, Instance, TensorRecord, StorageRef)


def check_key(key: Any) -> Any:
    """A dict key or set item must be hashable without deep recursion (CPython hashes nested
    tuples recursively in C; a hostile million-deep tuple would overflow the C stack)."""
    if type(key) in _KEY_TYPES:
        return key
    if type(key) in (tuple, frozenset):
        pending, seen = [(key, 0)], 0
        while pending:
            item, depth = pending.pop()
            seen += 1
            if depth > 32 or seen > 10_000:
                raise FormatError("a dict key or set item is nested too deeply")
            if type(item) in (tuple, frozenset):
                pending.extend((inner, depth + 1) for inner in item)
            elif type(item) not in _KEY_TYPES:
                raise FormatError(f"a dict key or set item is unhashable ({type(item).__name__})")
        return key
    raise FormatError(f"a dict key or set item is unhashable ({type(key).__name__})")
