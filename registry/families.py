"""Model families: code that builds one kind of model from a config (DESIGN §2).

A family registers itself with `@register_family(...)` on its build function; the built-in ones
live in `registry.models` (the repository's `models/`), whose `__init__` imports each family module
by name. Configs are dataclasses whose defaults are the family's defaults; the canonical config is
the JSON of every field, defaults filled in.

Torch is imported lazily so `registry families` and `registry --help` stay fast.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import UsageError
from .schema import ModuleSignature, Schema, module_signature, schema_of_module


@dataclass(frozen=True)
class Family:
    """One registered family.

    `build(config)` returns an `nn.Module`; it must do no I/O. The optional hooks are attached with
    `extend_family(...)` by the family module:
    - `infer_configs(schema)` proposes configs that might rebuild a schema (the registry verifies
      each by rebuilding on the meta device and comparing fingerprints);
    - `make_batch(config, batch_size, generator)` returns a synthetic training batch;
    - `compute_loss(model, batch)` returns a scalar loss tensor for that batch;
    - `probe(model, config, generator)` runs the model (eval mode, CPU) on a deterministic input
      drawn from `generator` and returns its outputs (a tensor, or a tuple/dict of tensors): the
      behaviour digest of DESIGN §11 summarises them. A family without it has no behaviour check;
    - `probe_config(config)` returns the small config to probe instead, for variants too big to
      run on a CPU in a second or two (same flags and block types, small widths and depths).

    `source` says where the family was loaded from (built-in, an entry point, a pyproject.toml,
    `--plugin`, a class named by import path); the plugin loader sets it.
    """

    name: str
    config_class: type
    build: Callable[[Any], Any]
    description: str = ""
    infer_configs: Callable[[Schema], list[Any]] | None = None
    make_batch: Callable[[Any, int, Any], Any] | None = None
    compute_loss: Callable[[Any, Any], Any] | None = None
    probe: Callable[[Any, Any, Any], Any] | None = None
    probe_config: Callable[[Any], Any] | None = None
    source: str = "built-in"

    def default_config(self) -> Any:
        return self.config_class()

    def fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.config_class))


_FAMILIES: dict[str, Family] = {}


def register_family(
    name: str,
    *,
    config: type,
    description: str = "",
) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Decorator for a family's build function: `@register_family("ctvit", config=CTViTConfig)`."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"family {name!r}: config must be a dataclass, got {config!r}")

    def decorate(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
        existing = _FAMILIES.get(name)
        if existing is not None and existing.build.__qualname__ != build.__qualname__:
            raise ValueError(f"family {name!r} is already registered by {existing.build.__module__}")
        _FAMILIES[name] = Family(name=name, config_class=config, build=build, description=description)
        return build

    return decorate


def extend_family(name: str, **hooks: Callable[..., Any]) -> None:
    """Attach optional hooks (`infer_configs`, `make_batch`, `compute_loss`) to a registered family."""
    _FAMILIES[name] = dataclasses.replace(_FAMILIES[name], **hooks)


def _load_builtin_families() -> None:
    import registry.models  # noqa: F401  (imports each family module, which registers itself)


def families() -> list[Family]:
    """Every registered family, sorted by name."""
    _load_builtin_families()
    return [_FAMILIES[name] for name in sorted(_FAMILIES)]


def get_family(name: str) -> Family:
    """The family called `name`; raises `UsageError` (exit 2) naming the known ones."""
    _load_builtin_families()
    try:
        return _FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(_FAMILIES))
        raise UsageError(f"unknown family {name!r}", hint=f"known families: {known}") from None


# --- configs -----------------------------------------------------------------------------------


def _field_types(config_class: type) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a JSON-ish value to a config field's annotated type; raise UsageError if not."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except UsageError as exc:
                errors.append(exc.message)
        raise UsageError(f"{where}: {value!r} is not a valid value ({'; '.join(errors)})")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise UsageError(f"{where}: expected {len(args)} items, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
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
    if origin is typing.Literal:
        if value in args:
            return value
        raise UsageError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    raise TypeError(f"{where}: unsupported config annotation {annotation!r}")


def make_config(family: Family, values: Mapping[str, Any] | None = None) -> Any:
    """A config of `family` from a mapping (JSON/YAML/--set values), every default filled in.

    Raises `UsageError` for an unknown key or a value of the wrong type, and for whatever the
    config class's own `__post_init__` rejects (`ValueError`).
    """
    values = dict(values or {})
    types_by_name = _field_types(family.config_class)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        raise UsageError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} for family {family.name!r}: {', '.join(unknown)}",
            hint=f"`registry families` lists the fields of {family.name!r}",
        )
    coerced = {
        key: _coerce(value, types_by_name[key], f"{family.name}.{key}") for key, value in values.items()
    }
    try:
        return family.config_class(**coerced)
    except ValueError as exc:
        raise UsageError(f"invalid {family.name} config: {exc}") from None


def parse_set_option(assignment: str) -> tuple[str, Any]:
    """`key=value` from `--set`; the value is JSON when it parses (`4`, `true`, `[1,2]`), else a string."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set expects key=value, got {assignment!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def config_dict(config: Any) -> dict[str, Any]:
    """Every field of a config as plain JSON types (tuples become lists)."""
    return json.loads(canonical_config_json(config))


def canonical_config_json(config: Any) -> str:
    """Canonical JSON of a config: every field, keys sorted, no whitespace (DESIGN §2)."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True, separators=(",", ":"))


# --- building ----------------------------------------------------------------------------------


def build_on_meta(family: Family, config: Any) -> Any:
    """Build a family's model on the meta device: shapes only, no parameter memory, no random init."""
    import torch

    with torch.device("meta"):
        return family.build(config)


@dataclass(frozen=True)
class BuiltSchema:
    family: str
    config: Any
    schema: Schema
    signature: ModuleSignature
    parameters: int  # elements of nn.Parameter entries only (buffers excluded)

    @property
    def fingerprint(self) -> str:
        return self.schema.fingerprint


def build_schema(family: Family, config: Any) -> BuiltSchema:
    """Schema and module signature of `family` built with `config` on the meta device."""
    model = build_on_meta(family, config)
    parameters = sum(p.numel() for p in model.parameters())
    return BuiltSchema(family.name, config, schema_of_module(model), module_signature(model), parameters)
