"""Traced plans kept on disk: converting another checkpoint of the same layout skips the tracing,
and with it the converter's imports (a converter calling diffusers pulls in torch._dynamo: ~2 s of
CPU, about a third of a whole SD-1.5 convert). Renaming converters are never traced, so never cached.

A plan is reused only for exactly what produced it. The key hashes the converter's name, the
source entries (names, shapes, dtypes), the source config, the code of the package that defines
the converter (every .py file below it), and the versions of torch and of the distributions the
converter declares its plan depends on (`Converter.plan_depends_on`). A converter that declares
none is never cached. An unreadable or unfitting cache file is ignored and the plan traced again;
the result is verified against the target's fingerprint either way. `REGISTRY_PLAN_CACHE=0` turns
the cache off; `REGISTRY_CACHE_DIR` moves it (default: the user cache directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from .lazy import LazyTensor
from .plan import PlanRow, plan_fits, trace_plan

FORMAT = 1


def cached_plan(converter: Any, tensors: Mapping[str, LazyTensor], config: Any, config_text: str) -> list[PlanRow]:
    """The plan of `converter` for `tensors` and `config` (canonical JSON `config_text`): from the
    cache when it holds one for this exact key, else traced (and stored). Raises `NotStreamable`."""
    key = plan_key(converter, tensors, config_text)
    if key is None:
        return trace_plan(converter.convert_state_dict, tensors, config)
    path = cache_dir() / "plans" / f"{key}.json"
    rows = _read(path)
    if rows is None or not plan_fits(rows, tensors):
        rows = trace_plan(converter.convert_state_dict, tensors, config)
        _store(path, rows)
    return rows


def cache_dir() -> Path:
    if os.environ.get("REGISTRY_CACHE_DIR"):
        return Path(os.environ["REGISTRY_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("model-registry"))


def plan_key(converter: Any, tensors: Mapping[str, LazyTensor], config_text: str) -> str | None:
    """The cache key, or None when this converter's plans are not cached."""
    if not converter.plan_depends_on or os.environ.get("REGISTRY_PLAN_CACHE", "1") == "0":
        return None
    digest = hashlib.sha256()
    for part in (f"format {FORMAT}", converter.name, config_text, *_versions(("torch", *converter.plan_depends_on))):
        digest.update(part.encode("utf-8") + b"\0")
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}\t{list(t.shape)}\t{t.dtype}\n".encode("utf-8"))
    code = _package_code(converter.convert_state_dict.__module__)
    if code is None:
        return None
    digest.update(code)
    return digest.hexdigest()


def _versions(distributions: tuple[str, ...]) -> list[str]:
    found = []
    for name in distributions:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return found


def _package_code(module_name: str) -> bytes | None:
    """sha256 of every .py file of the package that holds `module_name`, or of the module's own
    file when it is not in a package (None: no file to hash)."""
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    spec = getattr(module, "__spec__", None)
    in_package = bool(spec is not None and spec.parent)
    root = Path(file).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")) if in_package else [Path(file)]:
        digest.update(str(path.relative_to(root)).encode("utf-8") + b"\0" + path.read_bytes())
    return digest.digest()


def _read(path: Path) -> list[PlanRow] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != FORMAT:
            return None
        return [PlanRow(str(t), str(s), tuple(int(d) for d in shape), int(start), int(nbytes))
                for t, s, shape, start, nbytes in document["rows"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _store(path: Path, rows: list[PlanRow]) -> None:
    """Best effort: a cache that cannot be written only costs the next convert its tracing."""
    from registry.atomic import atomic_write

    text = json.dumps({"format": FORMAT, "rows": [list(row) for row in rows]})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError:
        pass
