"""Turning what a user typed (variant name, config file, --set) into a family and a full config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .catalog import get_builtin_variant
from .errors import UsageError
from .families import Family, get_family, make_config, parse_set_option


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of config values; raises UsageError if unreadable or not a mapping.

    A file written by `registry resolve` (with `family`, `variant` and `config` keys) is accepted
    too: its `config` mapping is used.
    """
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) if not str(path).endswith(".json") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"config file {path} is not valid YAML/JSON: {first_line}") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "family" in data:
        data = data["config"]
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of config keys to values")
    return data


def config_from_options(
    family_name: str,
    variant_name: str | None = None,
    config_file: str | None = None,
    assignments: Iterable[str] = (),
) -> tuple[Family, Any]:
    """Family and config from (in increasing precedence) a built-in variant, a file and `--set`s."""
    family = get_family(family_name)
    values: dict[str, Any] = {}
    if variant_name:
        full_name = variant_name if "/" in variant_name else f"{family_name}/{variant_name}"
        variant = get_builtin_variant(full_name)
        if variant.family != family.name:
            raise UsageError(f"variant {variant.name!r} belongs to family {variant.family!r}, not {family.name!r}")
        values.update(variant.config)
    if config_file:
        values.update(load_config_file(config_file))
    for assignment in assignments:
        key, value = parse_set_option(assignment)
        values[key] = value
    return family, make_config(family, values)
