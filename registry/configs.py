"""Turning what a user typed (variant name, config file, --set) into a family and a full config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .catalog import get_builtin_variant
from .errors import UsageError
from .families import Family, get_family, make_config, parse_set_option


def load_config_file(path: str | Path, key: str | None = None) -> dict[str, Any]:
    """A YAML or JSON mapping of config values; raises UsageError if unreadable or not a mapping.

    `key` is a dotted path into the file (`model.image_encoder`). A file written by `registry
    resolve` (with `family`, `variant` and `config` keys) is accepted too: its `config` mapping is
    used.
    """
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not text (YAML or JSON)") from None
    try:
        data = yaml.safe_load(text) if not str(path).endswith(".json") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"config file {path} is not valid YAML/JSON: {first_line}") from None
    if key:
        data = _at_key(data, key, path)
    elif isinstance(data, dict) and isinstance(data.get("config"), dict) and "family" in data:
        data = data["config"]
    if not isinstance(data, dict):
        where = f" at {key!r}" if key else ""
        raise UsageError(f"config file {path} must hold a mapping of config keys to values{where}")
    return data


def _at_key(data: Any, key: str, path: str | Path) -> Any:
    node = data
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            at = ".".join(key.split(".")[:depth]) or "the top level"
            keys = ", ".join(map(str, node)) if isinstance(node, dict) else "none (not a mapping)"
            raise UsageError(f"config file {path} has no key {key!r} ({part!r} is missing at {at}; keys there: {keys})")
        node = node[part]
    return node


def family_for(family_name: str | None = None, class_target: str | None = None, config_class: str | None = None,
               values: dict[str, Any] | None = None) -> Family:
    """The family named by `--family`, or the class family of `--class` (or of the config's Hydra
    `_target_` when neither is given). Raises `UsageError` when none or two different ones are named."""
    from .class_family import class_family, normalize_target

    target = (values or {}).get("_target_")
    if family_name and class_target:
        raise UsageError("give --family or --class, not both")
    if class_target:
        if isinstance(target, str) and normalize_target(target) != normalize_target(class_target):
            raise UsageError(f"the config's _target_ {target!r} is another class than {class_target!r}")
        return class_family(class_target, config_class=config_class)
    if config_class:
        raise UsageError("--config-class goes with --class")
    if family_name:
        return get_family(family_name)
    if isinstance(target, str):
        return class_family(normalize_target(target))
    raise UsageError("name the family: --family NAME or --class pkg.module:Class (or a `_target_` in the config)")


def config_from_options(
    family_name: str | None,
    variant_name: str | None = None,
    config_file: str | Path | None = None,
    assignments: Iterable[str] = (),
    *,
    class_target: str | None = None,
    config_key: str | None = None,
    config_class: str | None = None,
    inline: dict[str, Any] | None = None,
) -> tuple[Family, Any]:
    """Family and config from (in increasing precedence) a built-in variant, a file (at
    `config_key`) or an inline mapping, and `--set`s. The family is `family_name`, or the class
    family of `class_target` (with `config_class`), or the file's Hydra `_target_`.

    Raises `UsageError` (exit 2) for an unknown family, a file that is missing or has no such key,
    and unknown, missing or ill-typed config keys.
    """
    values: dict[str, Any] = dict(inline or {})
    if config_file:
        values.update(load_config_file(config_file, config_key))
    elif config_key:
        raise UsageError("--config-key needs --config FILE")
    family = family_for(family_name, class_target, config_class, values)
    if variant_name:
        base = dict(values)
        values = {}
        full_name = variant_name if "/" in variant_name else f"{family_name}/{variant_name}"
        variant = get_builtin_variant(full_name)
        if variant.family != family.name:
            raise UsageError(f"variant {variant.name!r} belongs to family {variant.family!r}, not {family.name!r}")
        values.update(variant.config)
        values.update(base)
    for assignment in assignments:
        key, value = parse_set_option(assignment)
        values[key] = value
    return family, make_config(family, values)
