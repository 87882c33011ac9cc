"""Plain-data reports shared by the command line's human and JSON output."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .families import Family, build_schema, config_dict, families


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    return text or str(annotation).replace("typing.", "")


def family_rows() -> list[dict[str, Any]]:
    """Each family with its config fields, types and defaults, and where it comes from (JSON-ready).

    `source` is one line (`built-in`, `entry point DIST VERSION: MODULE`, `pyproject.toml PATH:
    MODULE`, `--plugin: MODULE`, `REGISTRY_PLUGINS: MODULE`, `class: pkg.module:Class`); `origin`
    is the same as fields. A required field (a class family's argument without a default) has
    `"required": true` and no default.
    """
    rows = []
    for family in families():
        hints = typing.get_type_hints(family.config_class)
        defaults = family.defaults()
        rows.append(
            {
                "name": family.name,
                "description": family.description,
                "source": family.source,
                "origin": family.origin.as_dict() if family.origin else None,
                "fields": [
                    {"name": f.name, "type": _type_name(hints[f.name]), "default": defaults.get(f.name),
                     **({"required": True} if f.name not in defaults else {})}
                    for f in dataclasses.fields(family.config_class)
                ],
            }
        )
    return rows


def schema_report(family: Family, config: Any) -> dict[str, Any]:
    """`{family, config, fingerprint, entries, parameters, module_signature_hash}` for a meta build."""
    built = build_schema(family, config)
    return {
        "family": family.name,
        "config": config_dict(config),
        "fingerprint": built.fingerprint,
        "short": built.schema.short,
        "entries": built.schema.as_rows(),
        "parameters": built.parameters,
        "module_signature_hash": built.signature.hash,
    }
