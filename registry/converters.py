"""Converters: registered mappings from one family's layout to another's (DESIGN §5, step 5).

A converter knows, for a source config, the target config that builds the equivalent model, and
how to turn a state dict of the source into one of the target. `exact` means the converted model
computes the same outputs (a test proves each claim). Built-in converters are declared in
`registry.models`. There are two kinds:

- `register_renaming_converter(...)`: the layouts hold the same tensors under other names. The
  converter gives, for a source config, a function from each source name to its target name.
  `registry convert` then streams the file without running any model code (no tracing, no torch),
  and the in-memory conversions (resume, integrations) apply the same function: one truth.
- `@register_converter(...)`: any function `(state_dict, source_config) -> state_dict`. Streaming
  learns its plan by running it once on meta tensors (`registry.streaming.plan`; cached when
  `plan_depends_on` names what decides it); one that computes tensors converts in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from .errors import RegistryError
from .schema import Schema, TensorEntry

# A renaming converter's mapping for one source config: source name -> target name, or None for
# a name the source layout does not have.
Renamer = Callable[[str], Optional[str]]


class ConversionError(RegistryError):
    """No converter (or the given renames) turns the checkpoint into the target: a negative answer."""

    exit_code = 1


@dataclass(frozen=True)
class Converter:
    name: str
    source_family: str
    target_family: str
    exact: bool
    target_config: Callable[[Any], Any]  # source config -> target config
    convert_state_dict: Callable[[Mapping[str, Any], Any], dict[str, Any]]  # (state, source config) -> state
    description: str = ""
    # Distributions whose versions decide which source tensor lands where (e.g. "diffusers"): a
    # converter that names them gets its traced plan cached (registry.streaming.plan_cache).
    plan_depends_on: tuple[str, ...] = ()
    # A renaming converter's `renames`: source config -> Renamer (None: the converter may compute).
    renames: Callable[[Any], Renamer] | None = None

    def renamer(self, source_config: Any) -> Callable[[str], str]:
        """For a renaming converter: the function from each source name to its target name.

        The function raises `ConversionError` for a source name the converter has no target for
        (the message names it and the converter). ValueError when this converter does not only rename.
        """
        if self.renames is None:
            raise ValueError(f"converter {self.name} is not a renaming converter")
        mapping = self.renames(source_config)

        def rename(name: str) -> str:
            new = mapping(name)
            if not isinstance(new, str) or not new:
                raise ConversionError(
                    f"{self.name} has no target name for the entry {name!r}: "
                    f"not a tensor of a {self.source_family} with this config"
                )
            return new

        return rename


_CONVERTERS: dict[str, Converter] = {}


def register_converter(
    name: str, *, source_family: str, target_family: str, exact: bool, target_config: Callable[[Any], Any], description: str = "",
    plan_depends_on: tuple[str, ...] = (),
) -> Callable[[Callable], Callable]:
    """Decorator for a state-dict conversion function `(state_dict, source_config) -> state_dict`;
    returns the function unchanged.

    A function that only renames, reshapes or slices its input tensors is streamed: its plan is
    traced once on meta tensors (see `registry.streaming.plan`); `plan_depends_on` names the
    distributions its mapping depends on, so the traced plan can be cached. A converter that only
    renames is better declared with `register_renaming_converter` (no tracing, no torch).
    """

    def decorate(convert: Callable) -> Callable:
        _CONVERTERS[name] = Converter(name, source_family, target_family, exact, target_config, convert, description,
                                      tuple(plan_depends_on))
        return convert

    return decorate


def register_renaming_converter(
    name: str, *, source_family: str, target_family: str, exact: bool, target_config: Callable[[Any], Any],
    renames: Callable[[Any], Renamer], description: str = "",
) -> Converter:
    """Register a converter whose target layout holds the source's tensors under other names; returns it.

    `renames(source_config)` returns a function from a source tensor name (without any prefix the
    checkpoint puts around the model) to its target name, or None for a name that a model of that
    config does not have. Every source tensor must get a name, and no two the same one; what comes
    out is verified against the target's fingerprint before anything is written. `registry convert`
    streams such a conversion without tracing or importing torch; the in-memory conversions
    (`convert_state_dict`: resume, integrations) apply the same function, raising `ConversionError`
    for a name without a target or two names with one.
    """

    def convert_state_dict(state: Mapping[str, Any], source_config: Any) -> dict[str, Any]:
        rename = converter.renamer(source_config)
        renamed: dict[str, Any] = {}
        for source_name, tensor in state.items():
            new = rename(source_name)
            if new in renamed:
                raise ConversionError(f"{name} maps two entries onto {new!r}")
            renamed[new] = tensor
        return renamed

    converter = Converter(name, source_family, target_family, exact, target_config, convert_state_dict, description,
                          renames=renames)
    _CONVERTERS[name] = converter
    return converter


def converters() -> list[Converter]:
    """Every registered converter, sorted by name (after loading the families that declare them)."""
    from .families import families

    families()  # the family modules declare the built-in converters
    return [_CONVERTERS[name] for name in sorted(_CONVERTERS)]


@dataclass(frozen=True)
class RenameRules:
    """Substring renames `OLD=NEW` applied to every name in order (`registry convert --rename`)."""

    rules: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, texts: tuple[str, ...] | list[str]) -> "RenameRules":
        from .errors import UsageError

        rules = []
        for text in texts:
            old, sep, new = text.partition("=")
            if not sep or not old:
                raise UsageError(f"--rename expects OLD=NEW, got {text!r}")
            rules.append((old, new))
        return cls(tuple(rules))

    def rename(self, name: str) -> str:
        for old, new in self.rules:
            name = name.replace(old, new)
        return name

    def apply_to_schema(self, schema: Schema) -> Schema:
        return Schema(TensorEntry(self.rename(e.name), e.shape, e.dtype) for e in schema)

    def apply_to_state_dict(self, state: Mapping[str, Any]) -> dict[str, Any]:
        renamed: dict[str, Any] = {}
        for name, tensor in state.items():
            new_name = self.rename(name)
            if new_name in renamed:
                from .errors import UsageError

                raise UsageError(f"--rename maps two entries onto {new_name!r}")
            renamed[new_name] = tensor
        return renamed

    def as_options(self) -> str:
        return " ".join(f"--rename '{old}={new}'" for old, new in self.rules)
