"""The one door every family comes through (DESIGN §10).

In this order, each module imported once:
1. entry points of the group `registry.families` (each names a module that registers families when
   imported); the registry's own built-in families are declared there too, in setup.cfg;
2. `plugins = [...]` of the `[tool.registry]` table in the nearest pyproject.toml (its folder goes
   on `sys.path`), and the class families its variants name;
3. `REGISTRY_PLUGINS=mod1,mod2`, then `--plugin MODULE` (the working directory goes on `sys.path`,
   for code that is not packaged).

A plugin that fails to import stops the command with `PluginError` (exit 2) naming the module and
the exception: never a silent run with fewer families. Two sources claiming one family name raise
`DuplicateFamilyError` naming both.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from . import families as _families
from .errors import PluginError, UsageError
from .families import FamilySource

GROUP = "registry.families"
ENV_VAR = "REGISTRY_PLUGINS"
OWN_DISTRIBUTION = "model-registry"

_loaded: dict[str, FamilySource] = {}  # plugin module -> where it was loaded from
_requested: list[str] = []  # --plugin modules, in order
_entry_points_done = False
_projects_done: set[str] = set()


def request_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """The modules named with `--plugin` (loaded by the next `load_plugins`); replaces the list an
    earlier command line gave (families already loaded stay loaded)."""
    _requested[:] = dict.fromkeys(modules)


def load_plugins() -> None:
    """Import every plugin not imported yet (entry points, pyproject.toml, REGISTRY_PLUGINS, --plugin).

    Cheap when nothing is new. Raises `PluginError` (exit 2) when one fails to import.
    """
    global _entry_points_done
    if not _entry_points_done:
        _entry_points_done = True  # first, as a plugin may look families up while it is imported
        try:
            _load_entry_points()
        except BaseException:
            _entry_points_done = False  # the next call says it again: never a run with fewer families
            raise
    _load_project()
    for module in _env_plugins():
        _import_plugin(module, FamilySource(ENV_VAR, module), cwd_importable=True)
    for module in list(_requested):
        _import_plugin(module, FamilySource("--plugin", module), cwd_importable=True)


def loaded_plugins() -> dict[str, FamilySource]:
    """`{module: source}` of every plugin module imported so far."""
    return dict(_loaded)


def _env_plugins() -> list[str]:
    return [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]


def _load_entry_points() -> None:
    points = sorted(metadata.entry_points(group=GROUP), key=lambda ep: (_normalized(ep.dist and ep.dist.name), ep.name))
    if not any(ep.dist is not None and _normalized(ep.dist.name) == OWN_DISTRIBUTION for ep in points):
        raise PluginError(f"the built-in families are not declared: {OWN_DISTRIBUTION}'s metadata has no "
                          f"{GROUP!r} entry point", hint="reinstall it (make install, or pip install -e .)")
    for ep in points:
        module = ep.value.partition(":")[0].strip()
        dist = ep.dist
        if dist is not None and _normalized(dist.name) == OWN_DISTRIBUTION:
            source = FamilySource("built-in", module, distribution=dist.name, version=dist.version)
        else:
            source = FamilySource("entry-point", module, distribution=(dist and dist.name) or "?",
                                  version=(dist and dist.version) or "?")
        _import_plugin(module, source)


def _load_project() -> None:
    from .project import load_project

    project = load_project()
    if project is None or str(project.path) in _projects_done:
        return
    _projects_done.add(str(project.path))  # first, as declared probes look families up
    try:
        _load_project_families(project)
    except BaseException:
        _projects_done.discard(str(project.path))
        raise


def _load_project_families(project: Any) -> None:
    root = str(project.root)
    if root not in sys.path:
        sys.path.insert(0, root)
    for module in project.plugins:
        _import_plugin(module, FamilySource("pyproject", module, path=str(project.path)))
    from .class_family import class_family
    from .declared import attach_declared_probes

    # The classes the variants name are the project's families too (`registry families` lists them;
    # a class that cannot be imported is the project's error, said once, here).
    for declared in sorted(project.variants.values(), key=lambda d: d.name):
        if declared.class_target:
            try:
                class_family(declared.class_target, config_class=declared.config_class)
            except UsageError as exc:
                raise type(exc)(f"{project.path}: variant {declared.name}: {exc.message}", hint=exc.hint) from None
    attach_declared_probes(project)


def _import_plugin(module: str, source: FamilySource, cwd_importable: bool = False) -> None:
    if module in _loaded:
        return
    previous = _families._LOADING
    _families._LOADING = source
    try:
        import_module_from(module, cwd_importable=cwd_importable)
    except PluginError:
        raise
    except Exception as exc:  # whatever the user's module raises, reported as one line
        raise PluginError(f"plugin {module} ({_where(source)}) failed to import: {type(exc).__name__}: {exc}",
                          hint="fix the module, or stop loading it") from None
    finally:
        _families._LOADING = previous
    _families.claim_families(module, source)
    _loaded[module] = source


def import_module_from(module: str, cwd_importable: bool = True) -> ModuleType:
    """`importlib.import_module(module)`, with the working directory importable first (as with
    `python -m`) when asked. Raises what the import raises."""
    if cwd_importable:
        cwd = os.getcwd()
        if cwd not in sys.path and str(Path(cwd)) not in sys.path:
            sys.path.insert(0, cwd)
    return importlib.import_module(module)


def _where(source: FamilySource) -> str:
    return source.label.rpartition(": ")[0] or source.kind


def _normalized(name: str | None) -> str:
    return (name or "").lower().replace("_", "-").replace(".", "-")


def reset_for_tests() -> None:
    """Forget which plugins were loaded (tests that load plugins from temporary projects)."""
    global _entry_points_done
    _loaded.clear()
    _requested.clear()
    _projects_done.clear()
    _entry_points_done = False
