"""Where a schema version came from: the family's code revision and the versions of the packages
that build it.

The revision is the **family's**: the git revision (with `+dirty` for uncommitted changes to
tracked files) of the repository that holds the family's plugin module or class file; for an
entry-point plugin outside git, its distribution's `name==version`. Built-in families live in the
registry's own source tree, so theirs is the registry's revision.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Packages whose code shapes a model's layout (DESIGN §2: a dependency upgrade can move a layout).
BUILD_PACKAGES = ("torch", "einops", "diffusers", "model-registry")
_REGISTRY_ROOT = Path(__file__).resolve().parents[2]


def code_revision(family: Any = None) -> str | None:
    """The revision of the code that builds `family` (a `Family`; None or a built-in family: the
    registry's own), as `<git sha>[+dirty]`, else `<distribution>==<version>`; None when neither is
    known (a plugin file outside git and outside any distribution)."""
    origin = getattr(family, "origin", None)
    if origin is None or origin.kind == "built-in":
        return _git_revision(_REGISTRY_ROOT) or f"model-registry=={_version('model-registry') or 'unknown'}"
    folder = _family_folder(family)
    revision = _git_revision(folder) if folder is not None else None
    if revision:
        return revision
    distribution = _family_distribution(family)
    if distribution is not None:
        return f"{distribution[0]}=={distribution[1]}"
    return None


def package_versions(family: Any = None, names: tuple[str, ...] = BUILD_PACKAGES) -> dict[str, str]:
    """Installed version of each build package (missing ones are left out), plus the distribution
    that provides `family`'s plugin when there is one."""
    if isinstance(family, tuple):  # the earlier signature: package_versions(names)
        family, names = None, family
    found = {}
    for name in names:
        version = _version(name)
        if version is not None:
            found[name] = version
    distribution = _family_distribution(family) if family is not None else None
    if distribution is not None:
        found.setdefault(distribution[0], distribution[1])
    return found


def _family_folder(family: Any) -> Path | None:
    """The folder of the file that defines the family (its plugin module, or the class's module)."""
    origin = family.origin
    module_name = origin.module.partition(":")[0]
    build = getattr(family, "build", None)
    for name in (getattr(build, "__module__", None), module_name):
        module = sys.modules.get(name or "")
        file = getattr(module, "__file__", None)
        if file and name not in (None, __name__) and not name.startswith("registry."):
            path = Path(file).resolve()
            # An installed package: its distribution's version says it, not the git repository
            # that happens to hold the virtual environment.
            return None if {"site-packages", "dist-packages"} & set(path.parts) else path.parent
    if origin.path and origin.kind == "class":
        return Path(origin.path).resolve().parent
    return None


def _family_distribution(family: Any) -> tuple[str, str] | None:
    """`(name, version)` of the installed distribution that provides the family's module."""
    origin = getattr(family, "origin", None)
    if origin is None or origin.kind == "built-in":
        return None
    if origin.distribution and origin.version:
        return origin.distribution, origin.version
    module_name = origin.module.partition(":")[0]
    file = getattr(sys.modules.get(module_name), "__file__", None) or ""
    if not {"site-packages", "dist-packages"} & set(Path(file).parts):
        return None  # the user's own tree (git says its revision), not an installed package
    for name in metadata.packages_distributions().get(module_name.split(".")[0], []):
        version = _version(name)
        if version is not None:
            return name, version
    return None


@functools.lru_cache(maxsize=64)
def _git_revision(folder: Path) -> str | None:
    """`git rev-parse HEAD` (+dirty) of the repository holding `folder`, else None (cached: one
    `registry init` registers many variants of one repository)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                    capture_output=True, text=True, timeout=10)
            dirty = "+dirty" if status.returncode == 0 and status.stdout.strip() else ""
            return head.stdout.strip() + dirty
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
