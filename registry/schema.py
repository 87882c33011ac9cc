"""Core value types: tensor entries, schemas, fingerprints and module signatures.

The fingerprint's canonical form is frozen (DESIGN §3): fingerprints stored in users' databases
depend on it, and `tests/test_schema.py` pins it with a golden value.

This module never imports torch: the checkpoint readers use it in processes that must stay fast.
Functions that take torch objects rely only on `.shape`, `.dtype` and `nn.Module` methods.
"""

from __future__ import annotations

import sys
from functools import cached_property
from typing import Any, Iterable, Iterator, Mapping

try:  # CPython's built-in SHA-256: `import hashlib` loads OpenSSL first, ~3 ms of `registry fingerprint`
    if sys.version_info >= (3, 12):
        from _sha2 import sha256
    else:
        from _sha256 import sha256
except ImportError:  # another interpreter, or a build without the module
    from hashlib import sha256

FINGERPRINT_PREFIX = "sha256:"
SHORT_LENGTH = 12


class FrozenValue:
    """Base of the small immutable value types (here and in `readers.info`).

    It gives what `@dataclass(frozen=True)` generates: equality and hash over `_key()` (instances
    of the same class only), a `Name(field=value, ...)` repr over `__match_args__`, and assignment
    or deletion raising `dataclasses.FrozenInstanceError`. Generating that code at import time
    (plus `import dataclasses`) cost ~4 ms of `registry fingerprint`, a ~90 ms process whose
    start-up is most of its budget. Subclasses set `__match_args__`, `_key` and an `__init__`
    that assigns with `object.__setattr__`.
    """

    __slots__ = ()
    __match_args__: tuple[str, ...] = ()

    def _key(self) -> tuple:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__qualname__}({fields})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise _frozen(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise _frozen(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple:
        return type(self), self._key()


def _frozen(message: str) -> AttributeError:
    from dataclasses import FrozenInstanceError  # what these types raised as frozen dataclasses

    return FrozenInstanceError(message)


class TensorEntry(FrozenValue):
    """One state_dict item: a parameter or persistent buffer. Immutable and hashable.

    `dtype` is torch's dtype name without the `torch.` prefix (`float32`, `bfloat16`, ...). It is
    recorded but is not part of the architecture, so it never enters the fingerprint.
    """

    __slots__ = ("name", "shape", "dtype")
    __match_args__ = ("name", "shape", "dtype")
    name: str
    shape: tuple[int, ...]
    dtype: str

    def __init__(self, name: str, shape: tuple[int, ...], dtype: str = "float32"):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype)

    def _key(self) -> tuple[str, tuple[int, ...], str]:
        return (self.name, self.shape, self.dtype)

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def canonical_line(self) -> str:
        return f"{self.name}\t[{','.join(str(d) for d in self.shape)}]\n"


def _sha256(text: str) -> str:
    return FINGERPRINT_PREFIX + sha256(text.encode("utf-8")).hexdigest()


def short_form(fingerprint: str) -> str:
    """The first 12 hex digits of a `sha256:...` fingerprint (what people read and type)."""
    digest = fingerprint.removeprefix(FINGERPRINT_PREFIX)
    return digest[:SHORT_LENGTH]


class Schema:
    """The entries of a model's state dict, sorted by name (Python str order), names unique."""

    __slots__ = ("entries", "__dict__")

    def __init__(self, entries: Iterable[TensorEntry]):
        ordered = tuple(sorted(entries, key=lambda e: e.name))
        for before, after in zip(ordered, ordered[1:]):
            if before.name == after.name:
                raise ValueError(f"duplicate tensor entry name {before.name!r}")
        self.entries: tuple[TensorEntry, ...] = ordered

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[TensorEntry]:
        return iter(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.entries == other.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"Schema({len(self)} entries, {short_form(self.fingerprint)})"

    @cached_property
    def canonical_text(self) -> str:
        return "".join(entry.canonical_line() for entry in self.entries)

    @cached_property
    def fingerprint(self) -> str:
        """`sha256:<hex>` of the canonical text (DESIGN §3)."""
        return _sha256(self.canonical_text)

    @property
    def short(self) -> str:
        return short_form(self.fingerprint)

    @cached_property
    def by_name(self) -> dict[str, TensorEntry]:
        return {entry.name: entry for entry in self.entries}

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    @property
    def numel(self) -> int:
        """Elements over all entries (parameters and persistent buffers alike)."""
        return sum(entry.numel for entry in self.entries)

    @property
    def dtypes(self) -> dict[str, int]:
        """How many entries have each dtype, e.g. {"float16": 680, "float32": 6}."""
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[entry.dtype] = counts.get(entry.dtype, 0) + 1
        return dict(sorted(counts.items()))

    def under(self, prefix: str) -> "Schema":
        """The entries whose names start with `prefix`, with the prefix removed."""
        return Schema(
            TensorEntry(e.name[len(prefix):], e.shape, e.dtype)
            for e in self.entries
            if e.name.startswith(prefix)
        )

    def with_prefix(self, prefix: str) -> "Schema":
        return Schema(TensorEntry(prefix + e.name, e.shape, e.dtype) for e in self.entries)

    def as_rows(self) -> list[list[Any]]:
        """JSON-friendly `[[name, [shape...], dtype], ...]` (the `--json` entry format)."""
        return [[e.name, list(e.shape), e.dtype] for e in self.entries]

    @classmethod
    def from_rows(cls, rows: Iterable[Iterable[Any]]) -> "Schema":
        return cls(TensorEntry(str(name), tuple(int(d) for d in shape), str(dtype)) for name, shape, dtype in rows)


def dtype_name(dtype: Any) -> str:
    """`torch.float16` -> `float16`; strings pass through."""
    return str(dtype).removeprefix("torch.")


def schema_of_state_dict(state_dict: Mapping[str, Any]) -> Schema:
    """Schema of a mapping of names to tensors. Non-tensor values (`_extra_state`, ints) are skipped."""
    return Schema(
        TensorEntry(name, tuple(int(d) for d in value.shape), dtype_name(value.dtype))
        for name, value in state_dict.items()
        if hasattr(value, "shape") and hasattr(value, "dtype")
    )


def schema_of_module(module: Any) -> Schema:
    """Schema of an `nn.Module`: parameters and persistent buffers, as `state_dict()` lists them.

    Works on the meta device (no tensor data is touched).
    """
    return schema_of_state_dict(module.state_dict(keep_vars=True))


class ModuleSignature(FrozenValue):
    """Every module path of a built model with its class, including modules with no parameters.

    Two variants can share a schema (GEGLU vs SwiGLU, LayerNorm(bias=False) vs RMSNorm); their
    module signatures differ, which is how `registry check` sees a swapped class (DESIGN §2).
    """

    __match_args__ = ("modules",)
    modules: tuple[tuple[str, str], ...]

    def __init__(self, modules: tuple[tuple[str, str], ...]):
        object.__setattr__(self, "modules", modules)

    def _key(self) -> tuple[tuple[tuple[str, str], ...]]:
        return (self.modules,)

    @cached_property
    def canonical_text(self) -> str:
        return "".join(f"{path}\t{cls}\n" for path, cls in self.modules)

    @cached_property
    def hash(self) -> str:
        return _sha256(self.canonical_text)

    def as_dict(self) -> dict[str, str]:
        return dict(self.modules)


def qualified_class_name(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def module_signature(model: Any) -> ModuleSignature:
    """Module path (root is "") -> qualified class name, sorted by path."""
    pairs = {path: qualified_class_name(mod) for path, mod in model.named_modules(remove_duplicate=False)}
    return ModuleSignature(tuple(sorted(pairs.items())))


def parse_schema_tsv(text: str) -> tuple[Schema, dict[str, str]]:
    """Parse a `name<TAB>[shape]<TAB>dtype` listing (the format of `shared/reference/*.tsv`).

    Returns the schema and the `# key: value` header lines as a dict.
    """
    header: dict[str, str] = {}
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                header[key.strip()] = value.strip()
            continue
        fields = line.split("\t")
        if len(fields) not in (2, 3):
            raise ValueError(f"line {number}: expected name<TAB>shape[<TAB>dtype], got {line!r}")
        shape_text = fields[1].strip()
        if not (shape_text.startswith("[") and shape_text.endswith("]")):
            raise ValueError(f"line {number}: bad shape {shape_text!r}")
        inner = shape_text[1:-1]
        shape = tuple(int(d) for d in inner.split(",")) if inner else ()
        entries.append(TensorEntry(fields[0], shape, fields[2].strip() if len(fields) == 3 else "float32"))
    return Schema(entries), header
