"""Which globals a checkpoint's pickle may name, and the verdict on a file that names others.

Globals fall into three kinds, and none is ever imported:
- interpreted (`interpret.TABLE`): tensor/storage rebuilds, plain containers, `_codecs.encode`,
  and known-benign metadata types (argparse.Namespace, numpy scalars/arrays/dtypes, pathlib
  paths, torch.Size, dtypes ...) whose calls become placeholders;
- dangerous: globals that can run code (os, subprocess, builtins.eval/exec/getattr/__import__,
  runpy, importlib, pickle, torch.load, ...) - naming one at all refuses the file;
- unknown: anything else (user classes, `__main__.Config`). Merely referenced (NEWOBJ + BUILD,
  how plain objects pickle) it is a warning; *called* it refuses the file, because
  `torch.load(weights_only=False)` would import its module and call it.
"""

from __future__ import annotations

from typing import Any

from registry.errors import UnsafeCheckpointError

from .interpret import TABLE
from .records import Global, Instance

# Python 2 module names, mapped at every protocol (a protocol 0-2 pickle's names are first mapped
# by `python3_name`, as the unpickler does): `__builtin__.eval` is dangerous whatever the protocol.
MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg", "exceptions": "builtins"}

# Everything inside these modules can run code, touch files or the network, or reach one that can.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "runpy", "importlib", "imp",
    "pydoc", "pkgutil", "pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle",
    "joblib", "ctypes", "_ctypes", "code", "codeop", "pty", "shutil", "socket", "_socket",
    "webbrowser", "multiprocessing", "_multiprocessing", "asyncio", "concurrent", "threading",
    "_thread", "timeit", "pdb", "bdb", "trace", "cProfile", "profile", "types", "signal",
    "zipimport", "io", "_io", "tempfile", "glob", "fileinput", "http", "urllib", "ftplib",
    "smtplib", "telnetlib", "requests", "functools", "_functools", "operator", "_operator", "gc",
    "inspect", "linecache", "tarfile", "zipfile", "sqlite3", "_winapi", "msvcrt", "winreg",
    "copyreg", "_codecs", "codecs", "builtins", "setuptools", "distutils", "pip",
    "torch.jit", "torch.hub", "torch.package", "torch._C", "torch.ops", "torch.classes",
    "torch._dynamo", "torch.utils.cpp_extension", "torch.distributed", "torch.serialization",
    "numpy.f2py", "numpy.distutils", "numpy.testing", "numpy.ctypeslib",
})

# Single globals that load other pickles or files (and so run whatever those hold).
DANGEROUS_NAMES = frozenset({
    "torch.load", "torch.storage._load_from_bytes", "torch._utils._rebuild_from_bytes",
    "numpy.load", "numpy.lib.npyio.load", "numpy.lib._npyio_impl.load", "numpy.fromfile",
    "numpy.loadtxt", "numpy.genfromtxt", "numpy.memmap", "numpy.core.memmap", "numpy._core.memmap",
})


def python3_name(module: str, name: str) -> tuple[str, str]:
    """The `(module, name)` Python 3 resolves a protocol 0-2 pickle's global to, as torch.load's
    unpickler does (`fix_imports`): `__builtin__.long` is `builtins.int`, `copy_reg.X` is
    `copyreg.X`, `__builtin__.reduce` is `functools.reduce`. Uses the table `pickle` itself uses."""
    import _compat_pickle

    mapped = _compat_pickle.NAME_MAPPING.get((module, name))
    if mapped is not None:
        return mapped
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def classify(module: str, name: str) -> Global:
    """The `Global` for `module.name`: interpreted, benign, container, dangerous or unknown."""
    module = MODULE_ALIASES.get(module, module)
    known = TABLE.get((module, name))
    if known is not None:
        kind, handler, value = known
        return Global(module, name, kind, handler, value)
    return Global(module, name, "dangerous" if is_dangerous(module, name) else "unknown")


def is_dangerous(module: str, name: str) -> bool:
    """Whether `module.name`, as an unpickler would resolve it, can reach code execution.

    Protocol-4 unpicklers resolve dotted names attribute by attribute, so `("torch._utils",
    "torch.load")` is `torch.load` and `("mypkg", "os.system")` is `os.system`: every tail of the
    name is checked too. Dunder steps (`__globals__`, `__builtins__`) always are dangerous.
    """
    parts = name.split(".")
    if any(part.startswith("__") and part.endswith("__") for part in parts):
        return True
    if _path_dangerous(f"{module}.{name}"):
        return True
    return any(_path_dangerous(".".join(parts[i:])) for i in range(len(parts) - 1))


def _path_dangerous(path: str) -> bool:
    if path in DANGEROUS_NAMES:
        return True
    prefix = ""
    for part in path.split(".")[:-1]:
        prefix = f"{prefix}.{part}" if prefix else part
        if prefix in DANGEROUS_MODULES:
            return True
    return False


# Attributes an unpickler looks up on an instance and calls (BUILD, APPEND(S), ADDITEMS).
_CALLED_ATTRIBUTES = ("__setstate__", "append", "extend", "add")


class Findings:
    """What a file's pickles would do beyond building data, gathered while reading them."""

    def __init__(self) -> None:
        self.references: dict[str, Global] = {}  # dangerous or unknown globals named
        self.calls: dict[str, Global] = {}  # dangerous or unknown globals called
        self.actions: list[str] = []  # unsafe actions that involve no single global

    def referenced(self, found: Global) -> None:
        if found.kind in ("dangerous", "unknown"):
            self.references.setdefault(found.path, found)

    def called(self, found: Global) -> None:
        self.calls.setdefault(found.path, found)

    def opaque_call(self, func: Any) -> None:
        self.actions.append(f"calls an object it built ({_what(func)})")

    def patched(self, target: Global) -> None:
        self.actions.append(f"rewrites attributes of {target.path}")

    def check_state(self, target: Instance, state: Any) -> None:
        """BUILD state that sets `__setstate__`, `append`, ... on an instance makes the next BUILD or
        APPEND call that value: a global there counts as called, an object the pickle built as an
        unsafe action. Plain data under those names (a config's `add=True`) is harmless."""
        dicts = [state] if type(state) is dict else [s for s in state if type(s) is dict] if type(state) is tuple else []
        for mapping in dicts:
            for key in _CALLED_ATTRIBUTES:
                value = mapping.get(key)
                if type(value) is Global and value.handler is None:
                    self.called(value)
                elif type(value) is Instance:
                    self.actions.append(f"sets {key} of a {target.type_name} to {_what(value)}")

    def unsafe_reasons(self) -> list[str]:
        reasons = []
        if self.calls:
            reasons.append("calls " + _names(self.calls))
        refs = [path for path, g in self.references.items() if g.kind == "dangerous" and path not in self.calls]
        if refs:
            reasons.append("references " + _names(refs))
        reasons.extend(dict.fromkeys(self.actions))
        return reasons

    def unknown_references(self) -> list[str]:
        return [path for path, g in self.references.items() if g.kind == "unknown" and path not in self.calls]

    def verdict(self, display: str, *, allow_unsafe: bool, where: str = "its pickle") -> list[str]:
        """Warnings for the file; raises UnsafeCheckpointError when it would run code on load.

        With `allow_unsafe` the refusal becomes a warning: nothing was run either way.
        """
        warnings = []
        reasons = self.unsafe_reasons()
        if reasons:
            what = "; ".join(reasons)
            if not allow_unsafe:
                raise UnsafeCheckpointError(
                    f"refusing {display}: {where} {what}, which would run code under "
                    "torch.load(weights_only=False); do not load it unless you trust its source "
                    "(--allow-unsafe fingerprints it without running anything)"
                )
            warnings.append(f"unsafe: {where} {what} (nothing was run: --allow-unsafe)")
        unknown = self.unknown_references()
        if unknown:
            warnings.append(
                f"{where} names {_names(unknown)}; kept as placeholders, never imported"
            )
        return warnings


def _names(paths) -> str:
    paths = list(paths)
    shown = ", ".join(paths[:6])
    return shown if len(paths) <= 6 else f"{shown} and {len(paths) - 6} more"


def _what(value: Any) -> str:
    if type(value) is Global:
        return value.path
    if type(value) is Instance:
        return f"a {value.type_name}"
    return type(value).__name__
