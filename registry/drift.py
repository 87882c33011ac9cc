"""`registry check`: rebuild every registered variant from the current code and compare (DESIGN §2).

A variant drifts when the current code builds a schema (names and shapes) or a module signature
(module classes) that differs from its latest schema version. The CTViT incident — an `Attention`
class that built RMSNorm whatever the flag said — fails here on the commit that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .diff import DiffGroup, SchemaDiff, diff_schemas, diff_signatures
from .errors import UsageError
from .families import build_schema, get_family, make_config
from .schema import short_form


@dataclass
class DriftReport:
    variant: str
    family: str
    version: int | None
    status: str  # "ok" | "drift" | "unbuildable"
    registered_fingerprint: str | None = None
    built_fingerprint: str | None = None
    schema_diff: SchemaDiff | None = None
    module_changes: list[DiffGroup] = field(default_factory=list)
    package_changes: dict[str, list[str | None]] = field(default_factory=dict)  # name -> [registered, now]
    error: str | None = None

    def lines(self) -> list[str]:
        """A one-screen report for people."""
        if self.status == "ok":
            return [f"ok: {self.variant} (schema version {self.version})"]
        if self.status == "unbuildable":
            return [f"drift: {self.variant} can no longer be built: {self.error}"]
        out = [f"drift: {self.variant} (schema version {self.version} → the current code)"]
        if self.registered_fingerprint != self.built_fingerprint:
            out.append(f"  fingerprint {short_form(self.registered_fingerprint or '')} → {short_form(self.built_fingerprint or '')}")
            out += [f"  {line}" for line in (self.schema_diff.lines() if self.schema_diff else [])]
        else:
            out.append("  tensors unchanged, but module classes changed (same names and shapes, different code)")
        out += [f"  modules: {group.summary}" for group in self.module_changes[:8]]
        for name, (before, now) in sorted(self.package_changes.items()):
            out.append(f"  package {name}: {before or 'absent'} → {now or 'absent'} (a dependency can move a layout)")
        out.append(f"  if the change is intended: registry variants bump {self.variant}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "family": self.family,
            "schema_version": self.version,
            "status": self.status,
            "registered_fingerprint": self.registered_fingerprint,
            "built_fingerprint": self.built_fingerprint,
            "schema_diff": self.schema_diff.to_json() if self.schema_diff else None,
            "module_changes": [g.to_json() for g in self.module_changes],
            "package_changes": self.package_changes,
            "error": self.error,
            "bump": None if self.status == "ok" else f"registry variants bump {self.variant}",
        }


def _package_changes(recorded: dict[str, str], now: dict[str, str]) -> dict[str, list[str | None]]:
    return {
        name: [recorded.get(name), now.get(name)]
        for name in sorted(set(recorded) | set(now))
        if name != "model-registry" and recorded.get(name) != now.get(name)
    }


def check_variant(reg: Any, name: str, current_packages: dict[str, str] | None = None) -> DriftReport:
    """Rebuild variant `name` on the meta device and compare it with its latest schema version."""
    from .store.provenance import package_versions

    variant = reg.require_variant(name)
    latest = reg.latest_schema_version(name)
    report = DriftReport(name, variant.family, latest.version if latest else None, "ok")
    if latest is None:
        report.status, report.error = "unbuildable", "it has no schema version (run `registry init`)"
        return report
    try:
        family = get_family(variant.family)
        built = build_schema(family, make_config(family, variant.config))
    except UsageError as exc:
        report.status, report.error = "unbuildable", exc.message
        return report
    report.registered_fingerprint, report.built_fingerprint = latest.fingerprint, built.fingerprint
    if built.fingerprint == latest.fingerprint and built.signature.hash == latest.signature_hash:
        return report
    report.status = "drift"
    if built.fingerprint != latest.fingerprint:
        report.schema_diff = diff_schemas(
            built.schema, reg.load_schema(latest.id), missing_label="added", unexpected_label="no longer built"
        )
    report.module_changes = diff_signatures(reg.load_signature(latest.id), built.signature)
    now = current_packages if current_packages is not None else package_versions()
    report.package_changes = _package_changes(latest.package_versions, now)
    return report


def check_all(reg: Any, names: list[str] | None = None) -> list[DriftReport]:
    """A report for every registered variant (or the named ones), sorted by name."""
    from .store.provenance import package_versions

    now = package_versions()
    selected = names or [v.name for v in reg.list_variants()]
    return [check_variant(reg, name, now) for name in sorted(selected)]
