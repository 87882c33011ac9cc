"""The `[tool.registry]` table of the user's pyproject.toml (DESIGN §10).

Found as ruff finds its table: the nearest pyproject.toml from the working directory upward that
has a `[tool.registry]` table. Keys:

    [tool.registry]
    plugins = ["src.models.families"]     # modules that register families (the folder holding
                                           # this file goes on sys.path)
    db = "sqlite:///registry.db"           # default database; a relative SQLite path is relative
                                           # to this file (--db and REGISTRY_DB win over it)
    [tool.registry.variants."myvit/baseline"]
    family = "myvit"                       # a family name, or
    class = "src.models.gpt:GPT"           # a class family (then optionally config_class = "m:Cfg")
    config = "configs/base.yaml"           # YAML/JSON file relative to this file, or an inline table
    config_key = "model.image_encoder"     # dotted key path inside the file
    description = "..."
    example_inputs = [{ shape = [1, 3, 32, 32], dtype = "float32" }]   # the probe's inputs
    probe_config = { depth = 1 }           # overrides giving a small config to probe
    config_choices = { norm = ["layer", "rms"] }   # values `registry infer` may try for free strings

Parsing needs no torch: `registry --help` and `fingerprint` stay fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

TABLE = "registry"
_PROJECT_KEYS = {"plugins", "db", "variants"}
_VARIANT_KEYS = {"family", "class", "config", "config_key", "config_class", "description", "example_inputs",
                 "probe_config", "config_choices"}
_INPUT_KEYS = {"shape", "dtype", "low", "high"}
_DTYPES = {"float32", "float16", "bfloat16", "float64", "int64", "int32", "long", "int", "bool"}

_cache: dict[tuple[str, int], "ProjectSettings"] = {}
_tables: dict[tuple[tuple[str, int], ...], dict[str, Any] | None] = {}


@dataclass(frozen=True)
class InputSpec:
    """One positional input of a probe: a tensor of `shape` and `dtype` (integers in [low, high))."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int = 0
    high: int | None = None


@dataclass(frozen=True)
class VariantDeclaration:
    """One `[tool.registry.variants."NAME"]` table, paths resolved against the pyproject's folder."""

    name: str
    family: str | None = None
    class_target: str | None = None
    config: dict[str, Any] | None = None  # an inline table
    config_file: Path | None = None
    config_key: str | None = None
    config_class: str | None = None
    description: str = ""
    example_inputs: tuple[InputSpec, ...] | None = None
    probe_config: dict[str, Any] | None = None
    # the family's `config_choices` (dotted field path → values), as a sorted tuple of pairs
    config_choices: tuple[tuple[str, tuple[Any, ...]], ...] | None = None


@dataclass(frozen=True)
class ProjectSettings:
    path: Path  # the pyproject.toml
    root: Path  # its folder
    plugins: tuple[str, ...] = ()
    db: str | None = None  # a database URL (relative SQLite paths made absolute)
    variants: dict[str, VariantDeclaration] = field(default_factory=dict)


def find_pyproject(start: str | Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The nearest pyproject.toml from `start` (default: the working directory) upward that has a
    `[tool.registry]` table, with that table; None if there is none. Raises `UsageError` for a
    pyproject.toml that is not valid TOML."""
    here = Path(start or os.getcwd()).absolute()
    stamps = []
    for folder in [here, *here.parents]:
        candidate = folder / "pyproject.toml"
        try:
            stamps.append((str(candidate), candidate.stat().st_mtime_ns))
        except OSError:
            continue
        key = tuple(stamps)
        if key not in _tables:  # parsed once per file version: families are looked up often
            _tables[key] = _read_table(candidate)
        if _tables[key] is not None:
            return candidate, _tables[key]
    return None


def load_project(start: str | Path | None = None) -> ProjectSettings | None:
    """The settings of the nearest pyproject.toml with a `[tool.registry]` table, or None.

    Raises `UsageError` (exit 2) for invalid TOML, unknown keys or values of the wrong type, each
    message naming the file and the key.
    """
    found = find_pyproject(start)
    if found is None:
        return None
    path, table = found
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _cache:
        _cache[key] = _parse(path, table)
    return _cache[key]


def _read_table(path: Path) -> dict[str, Any] | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get(TABLE)
    if table is None:
        return None
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.registry] must be a table")
    return table


def _parse(path: Path, table: dict[str, Any]) -> ProjectSettings:
    root = path.parent
    _check_keys(table, _PROJECT_KEYS, f"{path}: [tool.registry]")
    plugins = table.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p.strip() for p in plugins):
        raise UsageError(f"{path}: [tool.registry] plugins must be a list of module names")
    db = table.get("db")
    if db is not None and (not isinstance(db, str) or not db.strip()):
        raise UsageError(f"{path}: [tool.registry] db must be a database URL or an SQLite path")
    variants = table.get("variants", {})
    if not isinstance(variants, dict):
        raise UsageError(f"{path}: [tool.registry.variants] must be a table of variant tables")
    declared = {name: _parse_variant(path, name, spec) for name, spec in variants.items()}
    return ProjectSettings(path=path, root=root, plugins=tuple(p.strip() for p in plugins),
                           db=resolve_project_db(db, root) if db else None, variants=declared)


def resolve_project_db(db: str, root: Path) -> str:
    """A database URL with a relative SQLite path made relative to the pyproject's folder."""
    if "://" not in db:
        return f"sqlite:///{(root / Path(db).expanduser()).absolute()}"
    scheme, _, rest = db.partition(":///")
    if scheme.startswith("sqlite") and rest and not rest.startswith("/") and rest != ":memory:":
        return f"{scheme}:///{(root / rest).absolute()}"
    return db


def _parse_variant(path: Path, name: str, spec: Any) -> VariantDeclaration:
    where = f'{path}: [tool.registry.variants."{name}"]'
    if not isinstance(spec, dict):
        raise UsageError(f"{where} must be a table")
    _check_keys(spec, _VARIANT_KEYS, where)
    if "family" in spec and "class" in spec:
        raise UsageError(f"{where}: give `family` or `class`, not both")
    strings = {k: spec[k] for k in ("family", "class", "config_key", "config_class", "description") if k in spec}
    for key, value in strings.items():
        if not isinstance(value, str) or (key != "description" and not value.strip()):
            raise UsageError(f"{where}: {key} must be a string")
    config = spec.get("config")
    if config is not None and not isinstance(config, (str, dict)):
        raise UsageError(f"{where}: config must be a file path or an inline table")
    if isinstance(config, dict) and "config_key" in spec:
        raise UsageError(f"{where}: config_key needs a config file, not an inline table")
    if "config_class" in spec and "class" not in spec:
        raise UsageError(f"{where}: config_class goes with `class`")
    if "family" not in spec and "class" not in spec and not isinstance(config, str):
        raise UsageError(f"{where}: give `family` or `class` (or a config file with a `_target_`)")
    probe_config = spec.get("probe_config")
    if probe_config is not None and not isinstance(probe_config, dict):
        raise UsageError(f"{where}: probe_config must be an inline table of config overrides")
    return VariantDeclaration(
        name=name, family=strings.get("family"), class_target=strings.get("class"),
        config=config if isinstance(config, dict) else None,
        config_file=(path.parent / config) if isinstance(config, str) else None,
        config_key=strings.get("config_key"), config_class=strings.get("config_class"),
        description=strings.get("description", ""),
        example_inputs=_parse_inputs(where, spec["example_inputs"]) if "example_inputs" in spec else None,
        probe_config=probe_config,
        config_choices=_parse_choices(where, spec["config_choices"]) if "config_choices" in spec else None,
    )


def _parse_choices(where: str, value: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """`{ "field.path" = [value, ...] }`: non-empty lists, keyed by dotted field paths."""
    if not isinstance(value, dict) or not value:
        raise UsageError(f'{where}: config_choices must be an inline table of field = [values], e.g. '
                         f'{{ norm = ["layer", "rms"] }}')
    out = []
    for path, choices in sorted(value.items()):
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: config_choices.{path} must be a non-empty list of values")
        out.append((path, tuple(tuple(c) if isinstance(c, list) else c for c in choices)))
    return tuple(out)


def _parse_inputs(where: str, value: Any) -> tuple[InputSpec, ...]:
    if not isinstance(value, list) or not value:
        raise UsageError(f"{where}: example_inputs must be a list of {{ shape = [...], dtype = \"...\" }} tables")
    specs = []
    for i, item in enumerate(value):
        label = f"{where}: example_inputs[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{label} must be a table like {{ shape = [1, 3, 32, 32], dtype = \"float32\" }}")
        _check_keys(item, _INPUT_KEYS, label)
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise UsageError(f"{label}: shape must be a list of non-negative integers")
        dtype = item.get("dtype", "float32")
        if dtype not in _DTYPES:
            raise UsageError(f"{label}: dtype must be one of {', '.join(sorted(_DTYPES))}, got {dtype!r}")
        low, high = item.get("low", 0), item.get("high")
        integer = dtype in ("int64", "int32", "long", "int")
        if integer and not isinstance(high, int):
            raise UsageError(f"{label}: an integer input needs `high` (e.g. the vocabulary size)")
        if not isinstance(low, int) or (high is not None and (not isinstance(high, int) or high <= low)):
            raise UsageError(f"{label}: low and high must be integers with low < high")
        specs.append(InputSpec(tuple(shape), dtype, low, high))
    return tuple(specs)


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                         hint=f"known keys: {', '.join(sorted(allowed))}")
