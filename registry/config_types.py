"""Config values: a JSON/YAML value checked against a config field's annotation, and back to JSON.

A config class is a dataclass. Its fields may be annotated with what users write in their own
model code: `int`, `float`, `bool`, `str`, `list[int]`, `tuple[int, ...]`, `Optional[...]` and other
unions, `Literal[...]`, enums, nested dataclasses, `dict[...]`, `Path`, `Any`. `coerce` turns a
parsed YAML/JSON value into the annotated type (tuples from lists, enum members from their
values, nested dataclasses from mappings) or raises `UsageError` naming the field; `plain` turns
a config back into JSON types, which is what the canonical config is made of.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections import abc
from pathlib import PurePath
from typing import Any, Mapping

from .errors import UsageError

# Keys of Hydra's instantiate protocol: metadata about the object, never a constructor argument.
HYDRA_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})


def field_types(config_class: type) -> dict[str, Any]:
    """`{field name: resolved annotation}` of a dataclass (string annotations resolved)."""
    return typing.get_type_hints(config_class)


def fill_dataclass(config_class: type, values: Mapping[str, Any], where: str) -> Any:
    """An instance of `config_class` from a mapping, every value checked against its annotation.

    Keys starting with `_` that are not fields are metadata (diffusers' `_class_name`, Hydra's
    `_target_`) and are ignored. Raises `UsageError` naming unknown keys, missing required keys,
    a value of the wrong type, or what the class's own `__post_init__` rejects (`ValueError`).
    """
    hints = field_types(config_class)
    values = {k: v for k, v in values.items() if k in hints or not str(k).startswith("_")}
    unknown = sorted(str(k) for k in set(values) - set(hints))
    if unknown:
        raise UsageError(f"unknown config key{'s' if len(unknown) > 1 else ''} for {where}: {', '.join(unknown)}",
                         hint=f"`registry families` lists the fields of {where.split()[-1]}")
    required = [f.name for f in dataclasses.fields(config_class)
                if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise UsageError(f"missing required config key{'s' if len(missing) > 1 else ''} for {where}: "
                         f"{', '.join(missing)}")
    label = where.split()[-1].strip("'")
    coerced = {key: coerce(value, hints[key], f"{label}.{key}") for key, value in values.items()}
    try:
        return config_class(**coerced)
    except ValueError as exc:
        raise UsageError(f"invalid {label} config: {exc}") from None


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """`value` converted to `annotation`; raises `UsageError` (naming `where`) when it does not fit."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return value
    if origin is typing.Annotated:
        return coerce(value, args[0], where)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where)
    if origin is typing.Literal:
        if value in args and any(type(value) is type(a) for a in args if a == value):
            return value
        enum_match = [a for a in args if isinstance(a, enum.Enum) and (a.value == value or a.name == value)]
        if enum_match:
            return enum_match[0]
        raise UsageError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (type, abc.Callable) or annotation in (type, abc.Callable, typing.Callable):
        return _coerce_callable(value, where)
    if origin is tuple or annotation is tuple:
        return _coerce_tuple(value, args, where)
    if origin in (list, abc.Sequence, abc.MutableSequence) or annotation is list:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, abc.Mapping, abc.MutableMapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        key_type, item_type = args if len(args) == 2 else (Any, Any)
        return {coerce(k, key_type, where): coerce(v, item_type, f"{where}.{k}") for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UsageError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UsageError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{where}: expected a string, got {value!r}")
    if annotation is type(None):
        if value is None:
            return None
        raise UsageError(f"{where}: expected null, got {value!r}")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _coerce_enum(value, annotation, where)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return fill_dataclass(annotation, value, where)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        if isinstance(value, (str, PurePath)):
            return annotation(value)
        raise UsageError(f"{where}: expected a path, got {value!r}")
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise UsageError(f"{where}: expected {annotation.__name__}, got {value!r}")
    raise UsageError(f"{where}: unsupported config annotation {annotation!r}")


def _coerce_union(value: Any, options: tuple[Any, ...], where: str) -> Any:
    if value is None and type(None) in options:
        return None
    errors = []
    # Exact types first, so `int | float` keeps 3 an int and `int | tuple[int, ...]` keeps a tuple.
    for option in sorted((o for o in options if o is not type(None)), key=lambda o: o is not type(value)):
        try:
            return coerce(value, option, where)
        except UsageError as exc:
            errors.append(exc.message.removeprefix(f"{where}: "))
    raise UsageError(f"{where}: {value!r} is not a valid value ({'; '.join(errors)})")


def _coerce_tuple(value: Any, args: tuple[Any, ...], where: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise UsageError(f"{where}: expected a list, got {value!r}")
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
        raise UsageError(f"{where}: expected {len(args)} items, got {value!r}")
    return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _coerce_enum(value: Any, enum_class: type[enum.Enum], where: str) -> enum.Enum:
    if isinstance(value, enum_class):
        return value
    for member in enum_class:
        if member.value == value and type(member.value) is type(value):
            return member
    if isinstance(value, str) and value in enum_class.__members__:
        return enum_class[value]
    choices = ", ".join(repr(m.value) for m in enum_class)
    raise UsageError(f"{where}: expected one of {choices} ({enum_class.__name__}), got {value!r}")


def _coerce_callable(value: Any, where: str) -> Any:
    """A class or function given as itself, or as its import path `pkg.module:Name`."""
    if callable(value):
        return value
    if isinstance(value, str) and ":" in value:
        from .class_family import import_target

        return import_target(value)
    raise UsageError(f"{where}: expected a class or function as pkg.module:Name, got {value!r}")


def plain(value: Any) -> Any:
    """JSON types for a config value: dataclasses → dicts, tuples → lists, enums → their values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k.value if isinstance(k, enum.Enum) else k): plain(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}:{value.__qualname__}"  # a class or function default (nn.GELU)
    return value
