"""The search space of config inference: which config fields can be searched, and how.

A config is a dataclass, possibly with nested dataclasses. Each searchable field becomes a `Knob`
named by its dotted path (`encoder.dim`). What a knob may take comes from the field's annotation:
- `int` (and `Optional[int]`, `int | tuple[int, ...]` holding an int): integers the solver learns
  from the checkpoint's shapes;
- `bool`, `Literal[...]`, an enum: every value;
- `list[int]`, `tuple[int, ...]`: a length and one integer per index;
- `str`, `Optional[str]`, `tuple[str, ...]`: only the choices the family declares in
  `Family.config_choices` (for a tuple, the choices of each element), since strings cannot be
  enumerated;
- anything else (floats, free strings, mappings): not searched; it keeps its default or `--fix` value.

Configs are handled as flat `{path: value}` mappings here; `assemble` turns one back into the
config object (which runs the class's own validation).
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

from .schema import Schema

INT, CHOICE, INT_SEQ, CHOICE_SEQ = "int", "choice", "int-seq", "choice-seq"


@dataclass(frozen=True)
class Knob:
    """One searchable config field: its dotted path, its kind and (for choices) the values to try.

    `declared` is True when the choices came from the family's `config_choices`, not the annotation.
    `sequence_type` is `list` or `tuple` for sequence kinds (what the config class expects back).
    """

    path: str
    kind: str
    choices: tuple[Any, ...] = ()
    declared: bool = False
    optional: bool = False
    sequence_type: type = tuple


@dataclass(frozen=True)
class Space:
    """What can be searched in a family's config, and what cannot (`not_searched`, by path)."""

    knobs: tuple[Knob, ...]
    not_searched: tuple[str, ...]
    required: tuple[str, ...]  # searchable paths without a default: the solver must start them somewhere


def _options(annotation: Any) -> tuple[list[Any], bool]:
    """The non-None members of a union (or the annotation itself) and whether None is allowed."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return [a for a in args if a is not type(None)], type(None) in args
    return [annotation], False


def _sequence_item(annotation: Any) -> tuple[Any, type] | None:
    """(item annotation, list or tuple) for `list[X]` / `tuple[X, ...]`; None for anything else."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        return args[0], list
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0], tuple
    return None


def _choices_of(annotation: Any) -> tuple[Any, ...] | None:
    if annotation is bool:
        return (False, True)
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return tuple(annotation)
    return None


def _knob(path: str, annotation: Any, current: Any, declared: Mapping[str, Any]) -> Knob | None:
    """The knob for one field, or None when the field cannot be searched."""
    options, optional = _options(annotation)
    none = (None,) if optional else ()
    if path in declared:
        values = tuple(declared[path])
        sequence = next((s for s in map(_sequence_item, options) if s is not None), None)
        if sequence is not None and (isinstance(current, (list, tuple)) or current is None):
            return Knob(path, CHOICE_SEQ, values, declared=True, optional=optional, sequence_type=sequence[1])
        return Knob(path, CHOICE, tuple(dict.fromkeys(values + none)), declared=True, optional=optional)
    for option in options:
        choices = _choices_of(option)
        if choices is not None and len(options) == 1:
            return Knob(path, CHOICE, choices + none, optional=optional)
    # a union such as `int | tuple[int, ...]` is searched in the form its current value has
    for option in options:
        sequence = _sequence_item(option)
        if option is int and (current is None or (isinstance(current, int) and not isinstance(current, bool))):
            return Knob(path, INT, optional=optional)
        if sequence is not None and sequence[0] is int and isinstance(current, (list, tuple)):
            return Knob(path, INT_SEQ, optional=optional, sequence_type=sequence[1])
    return None


def search_space(config_class: type, current: Any, declared: Mapping[str, Any] | None = None,
                 fixed: frozenset[str] = frozenset(), prefix: str = "") -> Space:
    """The knobs of `config_class` (recursing into nested dataclasses), given a current config.

    `current` may be None for a class whose required fields have no value yet. `fixed` paths are
    left out (the user set them with `--fix`). Raises nothing.
    """
    declared = declared or {}
    hints = typing.get_type_hints(config_class)
    knobs: list[Knob] = []
    not_searched: list[str] = []
    required: list[str] = []
    for field in dataclasses.fields(config_class):
        if not field.init:
            continue
        path = prefix + field.name
        value = getattr(current, field.name, None) if current is not None else None
        annotation = hints[field.name]
        nested = [o for o in _options(annotation)[0] if isinstance(o, type) and dataclasses.is_dataclass(o)]
        if nested and (value is None or dataclasses.is_dataclass(value)) and path not in fixed:
            inner = search_space(nested[0], value, declared, fixed, path + ".")
            knobs.extend(inner.knobs)
            not_searched.extend(inner.not_searched)
            required.extend(inner.required)
            continue
        if path in fixed:
            continue
        knob = _knob(path, annotation, value, declared)
        if knob is None:
            not_searched.append(path)
            continue
        knobs.append(knob)
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            required.append(path)
    return Space(tuple(knobs), tuple(not_searched), tuple(required))


# --- flat configs ------------------------------------------------------------------------------


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """`{dotted path: value}` of every field, nested dataclasses walked, sequences as tuples."""
    flat: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            flat.update(flatten(value, prefix + field.name + "."))
        else:
            flat[prefix + field.name] = tuple(value) if isinstance(value, list) else value
    return flat


def freeze(flat: Mapping[str, Any]) -> tuple:
    """A hashable key of a flat config (the build cache's key)."""
    return tuple(sorted((path, repr(value)) for path, value in flat.items()))


def assemble(config_class: type, flat: Mapping[str, Any], sequence_types: Mapping[str, type], prefix: str = "") -> Any:
    """The config object for a flat mapping; raises whatever the config class raises for it."""
    hints = typing.get_type_hints(config_class)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(config_class):
        if not field.init:
            continue
        path = prefix + field.name
        nested = [o for o in _options(hints[field.name])[0] if isinstance(o, type) and dataclasses.is_dataclass(o)]
        if nested and path not in flat:
            if any(key.startswith(path + ".") for key in flat):
                values[field.name] = assemble(nested[0], flat, sequence_types, path + ".")
            continue
        if path in flat:
            value = flat[path]
            if isinstance(value, tuple) and sequence_types.get(path) is list:
                value = list(value)
            values[field.name] = value
    return config_class(**values)


# --- what the checkpoint offers ----------------------------------------------------------------

_NUMBER = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)")


def name_pattern(name: str) -> str:
    """`h.3.attn.weight` -> `h.#.attn.weight`: names of numbered layers share one pattern."""
    return _NUMBER.sub("#", name)


def layer_counts(schema: Schema) -> Counter:
    """How many numbered children each prefix has (`layers.N`, `blocks.N`), and the largest N + 1.

    Returns a Counter of those counts, most common first: depths and sequence lengths come from here.
    """
    children: dict[str, set[int]] = {}
    for name in schema.by_name:
        parts = name.split(".")
        for index, part in enumerate(parts[:-1]):
            if part.isdigit():
                children.setdefault(".".join(parts[:index]), set()).add(int(part))
    counts: Counter = Counter()
    for numbers in children.values():
        counts[len(numbers)] += 1
        counts[max(numbers) + 1] += 1
    return counts


def dimension_pool(schema: Schema, limit: int = 64) -> list[int]:
    """Integers a config might hold: every shape dimension, its small divisors and small products,
    and numbered-layer counts; most frequent first, at most `limit` (the naive grid's space too)."""
    dims: Counter = Counter(d for entry in schema for d in entry.shape)
    pool: Counter = Counter()
    for dim, count in dims.items():
        pool[dim] += 4 * count
        for divisor in (2, 3, 4, 8):
            if dim % divisor == 0 and dim // divisor > 0:
                pool[dim // divisor] += count
    small = [d for d, _ in dims.most_common(8) if d <= 16]
    for a in small:
        for b in small:
            pool[a * b] += 1
    for count, seen in layer_counts(schema).items():
        pool[count] += 2 * seen
    return [value for value, _ in pool.most_common() if value > 0][:limit]
