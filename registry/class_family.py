"""Class families: a model class named by import path (`pkg.module:Class`) is a family.

No registry code is needed in the user's repository. The family's name is the import path as
written; its config is the constructor's keyword arguments, checked against `inspect.signature`
(a dataclass synthesized from the signature: annotations and defaults kept, required parameters
without a default). A constructor that takes one config object (`GPT(GPTConfig(...))`) works too:
the config class comes from the parameter's annotation or is named explicitly (`config_class`);
a dataclass config class is used as it is, any other class gets a dataclass synthesized from its
own `__init__` signature, and the build constructs it first. Hydra's dotted form
(`pkg.module.Class`, as in `_target_`) is accepted and written with a colon.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import importlib
import inspect
import sys
import typing
from pathlib import PurePath
from typing import Any, Callable

from .errors import FamilyNotLoadedError, PluginError, UsageError
from .families import _FAMILIES, Family, FamilySource, add_family

_SKIPPED_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def normalize_target(target: str) -> str:
    """`pkg.module:Name` as given, or Hydra's `pkg.module.Name` written as `pkg.module:Name`.

    Raises `UsageError` for a string that names no attribute of a module.
    """
    target = target.strip()
    if ":" in target:
        module, _, attr = target.partition(":")
    else:
        module, _, attr = target.rpartition(".")
    if not module or not attr or not all(part.isidentifier() for part in [*module.split("."), *attr.split(".")]):
        raise UsageError(f"not an import path: {target!r}", hint="write pkg.module:ClassName")
    return f"{module}:{attr}"


def import_target(target: str) -> Any:
    """The object that `pkg.module:Name` names (the working directory is importable, as with
    `python -m`). Raises `FamilyNotLoadedError` when the module cannot be found, `PluginError` when
    importing it fails, `UsageError` when it has no such attribute."""
    from .plugins import import_module_from

    module_name, _, attr = normalize_target(target).partition(":")
    try:
        module = import_module_from(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise FamilyNotLoadedError(
                f"family {target!r} is not loaded: module {module_name!r} cannot be found",
                hint="run in the project that holds it (the folder of its pyproject.toml or the working "
                     "directory is importable), or install its package") from None
        raise PluginError(f"importing {module_name} for {target} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # the user's module is broken: say so, never run without it
        raise PluginError(f"importing {module_name} for {target} failed: {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def class_family(target: str, *, config_class: str | type | None = None) -> Family:
    """The family for the class `target` (`pkg.module:Class`), registered on first use.

    `config_class` (an import path or a class) names the config object of a constructor that takes
    one. Raises `FamilyNotLoadedError`/`PluginError` when the class cannot be imported, `UsageError`
    when `target` is no class, or when it was already resolved with another config class.
    """
    from .plugins import load_plugins

    name = normalize_target(target) if ":" not in target else target
    config_name = _target_name(config_class)
    if name not in _FAMILIES:
        load_plugins()  # the project may declare this class, with its probe and config_choices
    existing = _FAMILIES.get(name)
    if existing is not None:
        registered = existing.origin.config_class if existing.origin else None
        if config_class is not None and registered != config_name and existing.config_class is not config_class:
            raise UsageError(f"class family {name} is already used with config class "
                             f"{registered or existing.config_class.__name__}, not {config_name}")
        return existing
    cls = import_target(name)
    if not isinstance(cls, type):
        raise UsageError(f"{name} is not a class (a class family builds a model by calling a class)")
    config_type = import_target(config_class) if isinstance(config_class, str) else config_class
    dataclass_type, build = _config_and_build(cls, config_type, name)
    module = sys.modules.get(cls.__module__)
    origin = FamilySource("class", name, path=getattr(module, "__file__", None), config_class=config_name)
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "").splitlines()  # its own, not nn.Module's
    family = Family(name=name, config_class=dataclass_type, build=build,
                    description=doc[0] if doc else f"class {name}", source=origin.label, origin=origin)
    return add_family(family)


def _target_name(config_class: str | type | None) -> str | None:
    if config_class is None:
        return None
    if isinstance(config_class, str):
        return normalize_target(config_class)
    return f"{config_class.__module__}:{config_class.__qualname__}"


def _config_and_build(cls: type, config_type: type | None, name: str) -> tuple[type, Callable[[Any], Any]]:
    """The config dataclass of `cls` and the function that builds it from one."""
    params = _parameters(cls)
    if config_type is None and len(params) == 1 and _is_config_object(params[0][1]):
        config_type = params[0][1]
    if config_type is None and len(params) == 1 and _looks_like_config_object(params[0][0]):
        # nanoGPT's `GPT(config)`: its fields cannot be read from the signature.
        raise UsageError(f"{name} takes one config object ({params[0][0].name!r}, not annotated): name its class",
                         hint="config_class = \"pkg.module:Config\" in pyproject.toml, or --config-class")
    if config_type is None:  # keyword arguments are the config
        dataclass_type = synthesize_config(cls, f"{cls.__name__}Config")
        return dataclass_type, lambda config: _call(cls, config)
    if not params:
        raise UsageError(f"{name} takes no argument, so it cannot take a config object")
    if dataclasses.is_dataclass(config_type):
        return config_type, lambda config: cls(config)
    dataclass_type = synthesize_config(config_type, f"{config_type.__name__}Fields")
    return dataclass_type, lambda config: cls(_call(config_type, config))


_CONFIG_PARAMETER_NAMES = {"config", "cfg", "conf", "args", "hparams", "params", "opt", "options"}


def _looks_like_config_object(param: inspect.Parameter) -> bool:
    """A lone required parameter without annotation, named like a config object."""
    return (param.default is inspect.Parameter.empty and param.annotation is inspect.Parameter.empty
            and param.name.lower() in _CONFIG_PARAMETER_NAMES)


def _is_config_object(annotation: Any) -> bool:
    """A parameter annotated with a user class (not a number, string, enum, path or container)."""
    return (isinstance(annotation, type) and annotation not in (Any, object) and annotation.__module__ != "builtins"
            and not issubclass(annotation, (enum.Enum, PurePath)) and typing.get_origin(annotation) is None)


def _parameters(func: Any) -> list[tuple[inspect.Parameter, Any]]:
    """`(parameter, resolved annotation)` of a callable's signature, without `*args`/`**kwargs`."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"cannot read the signature of {func!r}: {exc}") from None
    try:
        hints = typing.get_type_hints(func.__init__ if isinstance(func, type) else func)
    except Exception:  # an annotation naming something only imported under TYPE_CHECKING
        hints = {}
    out = []
    for param in signature.parameters.values():
        if param.kind in _SKIPPED_KINDS:
            continue
        annotation = hints.get(param.name, param.annotation)
        if annotation is inspect.Parameter.empty or isinstance(annotation, str):
            annotation = _annotation_from_default(param.default)
        out.append((param, annotation))
    return out


def _annotation_from_default(default: Any) -> Any:
    """An unannotated parameter's type, guessed from its default (`Any` without one)."""
    if default is inspect.Parameter.empty or default is None:
        return Any
    if isinstance(default, (bool, int, float, str)):
        return type(default)
    if isinstance(default, (list, tuple)) and default and len({type(v) for v in default}) == 1:
        item = type(default[0])
        return list[item] if isinstance(default, list) else tuple[item, ...]
    return Any


def synthesize_config(func: Any, class_name: str) -> type:
    """A frozen, keyword-only dataclass with one field per parameter of `func` (a class or function):
    annotations and defaults kept, required parameters required."""
    fields = []
    for param, annotation in _parameters(func):
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, annotation))
        else:
            fields.append((param.name, annotation, _field_default(param.default)))
    dataclass_type = dataclasses.make_dataclass(class_name, fields, kw_only=True, frozen=True)
    dataclass_type.__module__ = getattr(func, "__module__", __name__)
    dataclass_type.__qualname__ = class_name
    return dataclass_type


def _field_default(default: Any) -> Any:
    try:
        hash(default)
    except TypeError:  # lists, dicts, mutable dataclass instances: a fresh copy per config
        return dataclasses.field(default_factory=lambda value=default: copy.deepcopy(value))
    return dataclasses.field(default=default)


def _call(func: Any, config: Any) -> Any:
    """`func(...)` with the config's fields: positional-only ones by position, the rest by name."""
    positional, keywords = [], {}
    names = {f.name for f in dataclasses.fields(config)}
    for param, _ in _parameters(func):
        if param.name not in names:
            continue
        value = getattr(config, param.name)
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            positional.append(value)
        else:
            keywords[param.name] = value
    return func(*positional, **keywords)
