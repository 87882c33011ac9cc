"""Converters: registered mappings from one family's layout to another's (DESIGN §5, step 5).

A converter knows, for a source config, the target config that builds the equivalent model, and
how to rename (or reshape) a state dict. `exact` means the converted model computes the same
outputs (a test proves each claim). Built-in converters are declared in `registry.models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .schema import Schema, TensorEntry


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


_CONVERTERS: dict[str, Converter] = {}


def register_converter(
    name: str, *, source_family: str, target_family: str, exact: bool, target_config: Callable[[Any], Any], description: str = "",
    plan_depends_on: tuple[str, ...] = (),
) -> Callable[[Callable], Callable]:
    """Decorator for a state-dict conversion function `(state_dict, source_config) -> state_dict`.

    A function that only renames, reshapes or slices its input tensors is streamed (see
    `registry.streaming.plan`); `plan_depends_on` names the distributions its mapping depends on.
    """

    def decorate(convert: Callable) -> Callable:
        _CONVERTERS[name] = Converter(name, source_family, target_family, exact, target_config, convert, description,
                                      tuple(plan_depends_on))
        return convert

    return decorate


def converters() -> list[Converter]:
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
