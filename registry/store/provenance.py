"""Where a schema version came from: the code revision and the versions of the packages that build it."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

# Packages whose code shapes a model's layout (DESIGN §2: a dependency upgrade can move a layout).
BUILD_PACKAGES = ("torch", "einops", "diffusers", "model-registry")


def code_revision() -> str:
    """`git rev-parse HEAD` of the registry's source tree (with `+dirty` for local changes), else
    `model-registry==<version>` for an installed package without git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10)
            dirty = "+dirty" if status.returncode == 0 and status.stdout.strip() else ""
            return head.stdout.strip() + dirty
    except (OSError, subprocess.SubprocessError):
        pass
    return f"model-registry=={_version('model-registry') or 'unknown'}"


def package_versions(names: tuple[str, ...] = BUILD_PACKAGES) -> dict[str, str]:
    """Installed version of each package that is installed (missing ones are left out)."""
    found = {}
    for name in names:
        version = _version(name)
        if version is not None:
            found[name] = version
    return found


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
