"""Plain-data reports of `registry fingerprint`, and their rendering for people.

The JSON fields are stable (scripts on clusters read them): per file `path, format, fingerprint,
short, entries, parameters, dtypes, container, wrapper, step, metadata, warnings, files,
size_bytes`, plus `entry_list` (with entries) and `prefixes` (with prefixes); a file that could
not be read is `{path, error, exit_code}`.
"""

from __future__ import annotations

from typing import Any, Iterable

from registry.errors import RegistryError

from .checkpoint import read_checkpoint
from .info import CheckpointInfo
from .limits import human_bytes


def fingerprint_report(info: CheckpointInfo, *, entries: bool = False, prefixes: bool = False) -> dict[str, Any]:
    """The JSON-ready report of one checkpoint. `parameters` counts elements over all entries."""
    report: dict[str, Any] = {
        "path": info.path,
        "format": info.format,
        "fingerprint": info.fingerprint,
        "short": info.short,
        "entries": len(info.schema),
        "parameters": info.parameters,
        "dtypes": info.schema.dtypes,
        "container": info.container,
        "wrapper": info.wrapper,
        "step": info.step,
        "metadata": info.metadata,
        "warnings": info.warnings,
        "files": info.files,
        "size_bytes": info.size_bytes,
    }
    if entries:
        report["entry_list"] = info.schema.as_rows()
    if prefixes:
        report["prefixes"] = [
            {"prefix": sub.prefix, "fingerprint": sub.fingerprint, "short": sub.short, "entries": sub.entries}
            for sub in info.submodels()
        ]
    return report


def fingerprint_many(paths: Iterable[str], *, allow_unsafe: bool = False, entries: bool = False,
                     prefixes: bool = False, reraise: bool = False) -> list[dict[str, Any]]:
    """One report per path, in order; a path that fails gives `{path, error, exit_code}` and the
    others are still read. `reraise` re-raises the first error instead (for --debug)."""
    reports = []
    for path in paths:
        try:
            info = read_checkpoint(path, allow_unsafe=allow_unsafe)
        except RegistryError as exc:
            if reraise:
                raise
            reports.append({"path": path, "error": exc.message, "exit_code": exc.exit_code})
            continue
        reports.append(fingerprint_report(info, entries=entries, prefixes=prefixes))
    return reports


def render_text(report: dict[str, Any]) -> list[str]:
    """The human block for one successful report."""
    files = report["files"]
    where = ", ".join(filter(None, [
        f"container {report['container']!r}" if report["container"] else "top-level state dict",
        f"wrapper {report['wrapper']!r} stripped" if report["wrapper"] else None,
    ]))
    lines = [
        report["path"],
        f"  fingerprint  {report['short']}  {report['fingerprint']}",
        f"  format       {report['format']}, {len(files)} file{'s' if len(files) != 1 else ''}, "
        f"{human_bytes(report['size_bytes'])}",
        f"  layout       {where}",
        f"  entries      {report['entries']:,}",
        f"  parameters   {report['parameters']:,}  (elements over all entries, buffers included)",
        f"  dtypes       {', '.join(f'{name} {count:,}' for name, count in report['dtypes'].items()) or '-'}",
    ]
    if report["step"] is not None:
        lines.append(f"  step         {report['step']:,}")
    registry = report["metadata"].get("registry")
    if isinstance(registry, dict):
        lines.append(f"  registry     {_registry_line(registry, report['fingerprint'])}")
    for warning in report["warnings"]:
        lines.append(f"  warning      {warning}")
    if "entry_list" in report:
        lines.append("  tensor entries:")
        lines.extend(f"    {name}\t[{','.join(map(str, shape))}]\t{dtype}" for name, shape, dtype in report["entry_list"])
    if "prefixes" in report:
        lines.append("  module prefixes:")
        lines.extend(f"    {sub['short']}  {sub['entries']:>7,}  {sub['prefix']}" for sub in report["prefixes"])
    return lines


def _registry_line(registry: dict[str, Any], fingerprint: str) -> str:
    parts = [str(registry.get("variant") or registry.get("family") or "record")]
    details = [f"{key} {registry[key]}" for key in ("run_id", "step") if registry.get(key) is not None]
    if details:
        parts.append(f"({', '.join(details)})")
    embedded = registry.get("fingerprint")
    if isinstance(embedded, str):
        parts.append("embedded fingerprint matches" if embedded == fingerprint
                     else "embedded fingerprint DIFFERS from the file's (mislabeled?)")
    return " ".join(parts)
