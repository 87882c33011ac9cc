"""Built-in variants: named (family, config) pairs that ship with the registry.

Each family module in `registry.models` declares its own built-in variants with
`builtin_variant(...)` next to its config class, so a variant's config lives beside the code that
interprets it. Names are `family/short-name`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class Variant:
    """A named (family, config) pair. `config` holds only the fields that differ from the defaults."""

    name: str
    family: str
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def short_name(self) -> str:
        return self.name.split("/", 1)[1]


_BUILTIN: dict[str, Variant] = {}


def builtin_variant(family: str, short_name: str, description: str, **config: Any) -> Variant:
    """Declare a built-in variant `family/short_name` (called by the family modules at import)."""
    name = f"{family}/{short_name}"
    variant = Variant(name=name, family=family, config=config, description=description)
    previous = _BUILTIN.get(name)
    if previous is not None and previous != variant:
        raise ValueError(f"built-in variant {name!r} is declared twice with different configs")
    _BUILTIN[name] = variant
    return variant


def builtin_variants() -> list[Variant]:
    """Every built-in variant, sorted by name."""
    from .families import families

    families()  # imports the family modules, which declare their variants
    return [_BUILTIN[name] for name in sorted(_BUILTIN)]


def get_builtin_variant(name: str) -> Variant:
    """The built-in variant called `name`; raises `UsageError` (exit 2) if there is none."""
    known = {v.name: v for v in builtin_variants()}
    try:
        return known[name]
    except KeyError:
        raise UsageError(f"unknown variant {name!r}", hint="`registry variants list` shows the known variants") from None
