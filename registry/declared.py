"""Variants declared in the user's pyproject.toml (`[tool.registry.variants."NAME"]`).

`registry init` registers them (idempotent); `example_inputs`/`probe_config` become the family's
behaviour probe (`Family.probe`, `Family.probe_config`) when the project is loaded, so `init`,
`check` and `variants bump` all probe the model the same way.
"""

from __future__ import annotations

from typing import Any

from .errors import UsageError
from .families import Family, config_dict, extend_family, get_family, make_config
from .project import InputSpec, ProjectSettings, VariantDeclaration

_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64",
                 "int64": "int64", "long": "int64", "int": "int64", "int32": "int32", "bool": "bool"}


def declared_family_and_config(declaration: VariantDeclaration) -> tuple[Family, Any]:
    """The family and full config a declaration names. Raises `UsageError` (exit 2) naming the
    variant for a missing file or key and for unknown, missing or ill-typed config keys."""
    from .configs import config_from_options

    try:
        return config_from_options(declaration.family, config_file=declaration.config_file,
                                   class_target=declaration.class_target, config_key=declaration.config_key,
                                   config_class=declaration.config_class, inline=declaration.config)
    except UsageError as exc:
        raise UsageError(f"variant {declaration.name} in pyproject.toml: {exc.message}", hint=exc.hint) from None


def declared_family(declaration: VariantDeclaration) -> Family:
    """The family of a declaration, without reading its config file (unless it names the class)."""
    from .class_family import class_family

    if declaration.class_target:
        return class_family(declaration.class_target, config_class=declaration.config_class)
    if declaration.family:
        return get_family(declaration.family)
    return declared_family_and_config(declaration)[0]


def _family_keys(declaration: VariantDeclaration) -> tuple[Any, ...]:
    return declaration.example_inputs, declaration.probe_config, declaration.config_choices


def attach_declared_probes(project: ProjectSettings) -> None:
    """Give each declared variant's family the probe its `example_inputs` describe, the
    `probe_config` overrides and the `config_choices` (added to the family's own). Raises
    `UsageError` when two declarations of one family disagree, the family already has a probe of
    its own, or a choice names no field of the family's config."""
    chosen: dict[str, VariantDeclaration] = {}
    for declaration in sorted(project.variants.values(), key=lambda d: d.name):
        if _family_keys(declaration) == (None, None, None):
            continue
        family = declared_family(declaration)
        first = chosen.setdefault(family.name, declaration)
        if first is not declaration:
            if _family_keys(first) != _family_keys(declaration):
                raise UsageError(f"pyproject.toml: variants {first.name} and {declaration.name} of family "
                                 f"{family.name} declare different example_inputs/probe_config/config_choices",
                                 hint="these belong to the family: declare them once, or the same in both")
            continue
        hooks: dict[str, Any] = {}
        if declaration.example_inputs is not None:
            if family.probe is not None and not getattr(family.probe, "declared", False):
                raise UsageError(f"pyproject.toml: family {family.name} has its own probe; remove example_inputs "
                                 f"from variant {declaration.name}")
            hooks["probe"] = inputs_probe(declaration.example_inputs)
        if declaration.probe_config is not None:
            hooks["probe_config"] = overrides_probe_config(family.name, declaration.probe_config)
        if declaration.config_choices is not None:
            hooks["config_choices"] = {**(family.config_choices or {}),
                                       **_checked_choices(family, declaration.name, declaration.config_choices)}
        extend_family(family.name, **hooks)


def _checked_choices(family: Family, variant: str, choices: tuple[tuple[str, tuple[Any, ...]], ...]) -> dict[str, Any]:
    """`config_choices` whose every path names a (nested) field of the family's config class."""
    import dataclasses
    import typing

    for path, _ in choices:
        config_class: Any = family.config_class
        for part in path.split("."):
            fields = {f.name: f for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else {}
            if part not in fields:
                raise UsageError(f"pyproject.toml: variant {variant}: config_choices names {path!r}, which is not a "
                                 f"field of family {family.name}'s config",
                                 hint=f"fields: {', '.join(f.name for f in dataclasses.fields(family.config_class))}")
            hints = typing.get_type_hints(config_class)
            config_class = hints.get(part, fields[part].type)
            if typing.get_origin(config_class) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
                config_class = next((a for a in typing.get_args(config_class) if a is not type(None)), None)
    return dict(choices)


def inputs_probe(specs: tuple[InputSpec, ...]):
    """A `probe(model, config, generator)` hook: `model(*inputs)` on inputs drawn from `generator`."""

    def probe(model: Any, config: Any, generator: Any) -> Any:
        return model(*[make_input(spec, generator) for spec in specs])

    probe.declared = True  # type: ignore[attr-defined]
    return probe


def make_input(spec: InputSpec, generator: Any) -> Any:
    """One deterministic input tensor: normal floats, or integers in [low, high) (token ids)."""
    import torch

    dtype = getattr(torch, _TORCH_DTYPES[spec.dtype])
    if spec.dtype == "bool":
        return torch.randint(0, 2, spec.shape, generator=generator).bool()
    if dtype.is_floating_point:
        return torch.randn(spec.shape, generator=generator).to(dtype)
    return torch.randint(spec.low, spec.high, spec.shape, generator=generator, dtype=dtype)


def overrides_probe_config(family_name: str, overrides: dict[str, Any]):
    """A `probe_config(config)` hook: the config with `overrides` applied (checked like any config)."""

    def probe_config(config: Any) -> Any:
        family = get_family(family_name)
        return make_config(family, {**config_dict(config), **overrides})

    return probe_config


def register_declared_variants(reg: Any, project: ProjectSettings) -> list[Any]:
    """Register every variant the project declares, with its first schema version; idempotent.

    Returns one `VariantOutcome` per variant, sorted by name (`registered`, `unchanged`, or
    `differs` when the code no longer builds the registered schema: `registry check`, then
    `registry variants bump`). Raises `UsageError` (exit 2) when a declaration's config differs
    from the registered variant's: a registered variant keeps its config.
    """
    from .store.variants import add_variant

    outcomes = []
    for declaration in sorted(project.variants.values(), key=lambda d: d.name):
        family, config = declared_family_and_config(declaration)
        try:
            outcomes.append(add_variant(reg, declaration.name, family.name, config, declaration.description))
        except UsageError as exc:
            if "already registered with a different config" not in exc.message:
                raise
            raise UsageError(
                f"pyproject.toml declares {declaration.name} with another config than the registered one: "
                f"{exc.message.partition('with a different config (')[2].removesuffix(')')}",
                hint=f"a registered variant keeps its config: declare the new config under a new name; "
                     f"to record a code change of the same config: registry variants bump {declaration.name}",
            ) from None
    return outcomes
