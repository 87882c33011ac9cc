"""Model families: code that builds one kind of model from a config (DESIGN §2).

A family registers itself with `@register_family(...)` on its build function, in a plugin module
that `registry.plugins` imports: every family, the built-in ones in `registry.models` included,
arrives through the entry-point group `registry.families`, a `[tool.registry]` table in the
nearest pyproject.toml, `--plugin` or REGISTRY_PLUGINS. A class named by import path
(`pkg.module:Class`) is a family too (`registry.class_family`). Configs are dataclasses whose
defaults are the family's defaults; the canonical config is the JSON of every field, defaults
filled in.

Torch is imported lazily so `registry families` and `registry --help` stay fast.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .config_types import fill_dataclass, plain
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
    `--plugin`, a class named by import path) as one line; `origin` is the same as data. The
    optional `prepare_config(values)` maps a real config mapping onto the config class's fields
    before it is checked (diffusers' `config.json`: extra constructor keywords go to `extra`).
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
    origin: FamilySource | None = None
    prepare_config: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Values config inference may try for fields it cannot enumerate (free strings), by dotted path;
    # for a tuple/list field, the choices of each element (`registry.inference`).
    config_choices: Mapping[str, tuple[Any, ...]] | None = None

    def default_config(self) -> Any:
        """The config with every default; raises `UsageError` if a field has none (a required
        constructor argument of a class family)."""
        return fill_dataclass(self.config_class, {}, f"family {self.name!r}")

    def defaults(self) -> dict[str, Any]:
        """`{field: default as JSON}`; a required field (no default) is left out."""
        out = {}
        for f in dataclasses.fields(self.config_class):
            if f.default is not dataclasses.MISSING:
                out[f.name] = plain(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = plain(f.default_factory())
        return out

    def fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.config_class))


_FAMILIES: dict[str, Family] = {}

# Set by the plugin loader (registry.plugins) while it imports a plugin module: where the families
# that module registers come from.
_LOADING: FamilySource | None = None


@dataclass(frozen=True)
class FamilySource:
    """Where a family was loaded from.

    `kind` is `built-in`, `entry-point`, `pyproject`, `--plugin`, `REGISTRY_PLUGINS`, `class`, or
    `module` (registered by code that imported the module directly). `module` is the plugin module
    (or `pkg.module:Class` for a class family); `distribution`/`version` name an entry point's
    distribution; `path` is the pyproject.toml for `pyproject`.
    """

    kind: str
    module: str
    distribution: str | None = None
    version: str | None = None
    path: str | None = None
    config_class: str | None = None  # a class family's explicitly named config class

    @property
    def label(self) -> str:
        """One line for people, stored as a variant's `family_source`: `<where>: <module>`."""
        if self.kind == "built-in":
            return "built-in"
        where = {
            "entry-point": f"entry point {self.distribution} {self.version}",
            "pyproject": f"pyproject.toml {self.path}",
        }.get(self.kind, self.kind)
        module = self.module + (f" config_class={self.config_class}" if self.config_class else "")
        return f"{where}: {module}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_label(cls, label: str) -> "FamilySource | None":
        """The kind and module back from a stored label (None for a label this code did not write)."""
        where, sep, module = label.rpartition(": ")
        if not sep:
            return None
        target, _, config_class = module.partition(" config_class=")
        words = where.split(" ")
        kind = {"entry": "entry-point", "pyproject.toml": "pyproject"}.get(words[0], words[0])
        if kind == "entry-point" and len(words) == 4:
            return cls(kind, target, distribution=words[2], version=words[3])
        return cls(kind, target, path=where.split(" ", 1)[1] if kind == "pyproject" else None,
                   config_class=config_class or None)

    def load_hint(self) -> str:
        """What loads the family again, for a `check` run where it is not loaded."""
        module = self.module
        if self.kind == "class":
            return (f"its class {module} cannot be imported here: run in the project that holds it "
                    f"(or put its folder on PYTHONPATH)")
        if self.kind == "pyproject":
            return (f"it comes from plugin {module} of {self.path}: run in that project, or load it with "
                    f"--plugin {module} (or REGISTRY_PLUGINS={module})")
        if self.kind == "entry-point":
            return f"it comes from the entry point {module} of {self.distribution} {self.version}: install {self.distribution}"
        return f"load its plugin with --plugin {module} (or REGISTRY_PLUGINS={module})"


def _source_for(module: str) -> FamilySource:
    return _LOADING if _LOADING is not None else FamilySource("module", module)


def _same_code(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    """One function imported twice (a reload, or one file under two module names)."""
    if (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__):
        return True
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return bool(code_a and code_b and a.__qualname__ == b.__qualname__ and code_a.co_filename == code_b.co_filename)


def add_family(family: Family) -> Family:
    """Register a `Family` value (what `register_family` and class families do); returns it.

    Raises `DuplicateFamilyError` (exit 2) naming both sources when another source already claims
    the name; the same code registered again (a module imported twice) replaces it quietly.
    """
    from .errors import DuplicateFamilyError

    existing = _FAMILIES.get(family.name)
    if existing is not None and not _same_code(existing.build, family.build):
        raise DuplicateFamilyError(
            f"family {family.name!r} is claimed twice: by {existing.source} and by {family.source}",
            hint="rename one of them, or load only one of the plugins")
    if existing is not None:  # keep the hooks and the source the first registration got
        family = dataclasses.replace(existing, build=family.build, config_class=family.config_class)
    _FAMILIES[family.name] = family
    return family


def register_family(
    name: str,
    *,
    config: type,
    description: str = "",
) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Decorator for a family's build function: `@register_family("ctvit", config=CTViTConfig)`.

    The family's source is the plugin being loaded (entry point, pyproject.toml, --plugin), else
    the module that registers it. Raises `DuplicateFamilyError` when another source claims `name`.
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"family {name!r}: config must be a dataclass, got {config!r}")

    def decorate(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
        origin = _source_for(build.__module__)
        add_family(Family(name=name, config_class=config, build=build, description=description,
                          source=origin.label, origin=origin))
        return build

    return decorate


def extend_family(name: str, **hooks: Callable[..., Any]) -> None:
    """Attach optional hooks (`infer_configs`, `make_batch`, `compute_loss`, `probe`, `probe_config`,
    `prepare_config`) to a registered family."""
    _FAMILIES[name] = dataclasses.replace(_FAMILIES[name], **hooks)


def claim_families(module: str, origin: FamilySource) -> None:
    """Give `origin` to families that `module` (or a submodule) registered before the plugin loader
    imported it (e.g. a test or script imported the module directly)."""
    for name, family in list(_FAMILIES.items()):
        if family is None or family.origin is None or family.origin.kind != "module":
            continue
        if family.origin.module == module or family.origin.module.startswith(module + "."):
            _FAMILIES[name] = dataclasses.replace(family, source=origin.label, origin=origin)


def families() -> list[Family]:
    """Every registered family, sorted by name, after loading every plugin (registry.plugins).

    Raises `PluginError` (exit 2) when a plugin fails to import, `DuplicateFamilyError` when two
    sources claim one name.
    """
    from .plugins import load_plugins

    load_plugins()
    return [_FAMILIES[name] for name in sorted(_FAMILIES) if _FAMILIES[name] is not None]


def get_family(name: str) -> Family:
    """The family called `name`; a `pkg.module:Class` name is resolved as a class family on demand.

    Raises `FamilyNotLoadedError` (exit 2) naming the known families when no loaded plugin provides
    `name` (or the class's module cannot be found), `PluginError` when a plugin fails to import.
    """
    from .errors import FamilyNotLoadedError
    from .plugins import load_plugins

    load_plugins()
    family = _FAMILIES.get(name)
    if family is not None:
        return family
    if ":" in name:
        from .class_family import class_family

        return class_family(name)
    known = ", ".join(sorted(n for n, f in _FAMILIES.items() if f is not None))
    raise FamilyNotLoadedError(f"unknown family {name!r}", hint=f"known families: {known}")


def class_family(target: str, *, config_class: str | type | None = None) -> Family:
    """The class family of `target` (`pkg.module:Class`), registered on first use; see
    `registry.class_family.class_family` for what is raised."""
    from .class_family import class_family as resolve

    return resolve(target, config_class=config_class)


def family_of_variant(variant: Any, family_source: str | None = None, *, registry: Any = None) -> Family:
    """The family that builds a registered variant: the one door for code that holds a variant
    (or a plan, a match) and needs its family, so a class family whose constructor takes a config
    object is built with the config class it was registered with, in any process.

    `variant` is anything with `.family` and `.family_source` (a `VariantRecord`, a `ResumePlan`)
    or a family name; for a name, `family_source` is its recorded source, and without one,
    `registry` (an open `Registry`) is asked which source its variants of that family recorded.
    A family that is loaded already is returned as it is. Raises like `get_family`:
    `FamilyNotLoadedError` (exit 2) when no loaded plugin provides it or its class cannot be found,
    `PluginError` when importing it fails, `UsageError` for a class that is not one.
    """
    if isinstance(variant, str):
        family_name = variant
    else:
        family_name, family_source = variant.family, family_source or getattr(variant, "family_source", None)
    if family_name not in _FAMILIES and ":" in family_name:
        from .plugins import load_plugins

        load_plugins()
        if family_name not in _FAMILIES:
            config_class = _recorded_config_class(family_name, family_source, registry)
            if config_class is not None:
                from .class_family import class_family

                return class_family(family_name, config_class=config_class)
    return get_family(family_name)


def _recorded_config_class(family_name: str, family_source: str | None, registry: Any) -> str | None:
    """The config class a class family was registered with: from its source label, else from the
    first variant of that family in `registry` whose source names one."""
    labels = [family_source] if family_source else []
    if not labels and registry is not None:
        labels = [v.family_source for v in registry.list_variants(family_name) if v.family_source]
    for label in labels:
        source = FamilySource.from_label(label)
        if source is not None and source.kind == "class" and source.config_class:
            return source.config_class
    return None


# --- configs -----------------------------------------------------------------------------------


def make_config(family: Family, values: Mapping[str, Any] | None = None) -> Any:
    """A config of `family` from a mapping (JSON/YAML/--set values), every default filled in.

    The family's `prepare_config` hook first maps a real config file onto its fields (diffusers'
    `config.json`). Keys starting with `_` that are not fields are metadata and ignored. Raises
    `UsageError` naming unknown keys, missing required keys, a value of the wrong type, or what the
    config class's own `__post_init__` rejects (`ValueError`).
    """
    values = dict(values or {})
    if family.prepare_config is not None:
        values = family.prepare_config(values)
    return fill_dataclass(family.config_class, values, f"family {family.name!r}")


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
    """Every field of a config as plain JSON types (tuples become lists, enums their values)."""
    return plain(config)


def canonical_config_json(config: Any) -> str:
    """Canonical JSON of a config: every field, keys sorted, no whitespace (DESIGN §2)."""
    return json.dumps(plain(config), sort_keys=True, separators=(",", ":"))


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
