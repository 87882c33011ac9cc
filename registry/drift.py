"""`registry check`: rebuild every registered variant from the current code and compare (DESIGN §2).

A variant drifts when the current code builds a schema (names and shapes) or a module signature
(module classes) that differs from its latest schema version. The CTViT incident — an `Attention`
class that built RMSNorm whatever the flag said — fails here on the commit that makes it.

When the layout is unchanged, the variant's behaviour digest is checked too (`registry.behaviour`):
the probe reruns and its outputs must stay within the digest's tolerance, so a change to a
`forward` alone (a LeakyReLU slope, swapped gates) is behaviour drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .behaviour import BehaviourCheck, BehaviourStatus, check_behaviour
from .diff import DiffGroup, SchemaDiff, diff_schemas, diff_signatures
from .errors import FamilyNotLoadedError, UsageError
from .families import FamilySource, build_schema, family_of_variant, make_config
from .schema import short_form


@dataclass
class DriftReport:
    variant: str
    family: str
    version: int | None
    status: str  # "ok" | "drift" | "unbuildable" | "family-not-loaded" (FAMILY_NOT_LOADED: not drift)
    registered_fingerprint: str | None = None
    built_fingerprint: str | None = None
    schema_diff: SchemaDiff | None = None
    module_changes: list[DiffGroup] = field(default_factory=list)
    package_changes: dict[str, list[str | None]] = field(default_factory=dict)  # name -> [registered, now]
    error: str | None = None
    behaviour: BehaviourCheck = field(default_factory=lambda: BehaviourCheck(BehaviourStatus.NOT_COMPARED))

    @property
    def behaviour_drift(self) -> bool:
        return self.behaviour.status is BehaviourStatus.DRIFT

    def lines(self) -> list[str]:
        """A one-screen report for people."""
        if self.status == "ok":
            return [f"ok: {self.variant} (schema version {self.version})"]
        if self.status == "unbuildable":
            return [f"drift: {self.variant} can no longer be built: {self.error}"]
        if self.status == FAMILY_NOT_LOADED:
            return [f"not checked: {self.variant}: {self.error}"]
        if self.behaviour_drift:
            return self._behaviour_lines()
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
            "bump": None if self.status in ("ok", FAMILY_NOT_LOADED) else f"registry variants bump {self.variant}",
            **self._behaviour_json(),
        }

    def _behaviour_lines(self) -> list[str]:
        check, unchanged = self.behaviour, "(schema and module classes unchanged)"
        if check.error is not None:
            out = [f"behaviour drift: {self.variant}: the probe no longer runs: {check.error} {unchanged}"]
        elif check.max_difference is None:  # an output appeared, vanished, or changed shape: listed below
            out = [f"behaviour drift: {self.variant} outputs changed on the probe {unchanged}"]
        else:
            out = [f"behaviour drift: {self.variant} outputs differ by {check.max_difference:.1e} on the probe "
                   f"{unchanged}"]
        if check.comparison is not None:
            out += [f"  {d.name}: {d.detail}" for d in check.comparison.changed[:8]]
        if check.probe_config is not None:
            out.append("  probed at the family's small probe config recorded with the digest, not the variant's own")
        for name, (before, now) in sorted(self.package_changes.items()):
            out.append(f"  package {name}: {before or 'absent'} → {now or 'absent'} (a dependency can change what "
                       "a model computes)")
        out.append(f"  if the change is intended: registry variants bump {self.variant}")
        return out

    def _behaviour_json(self) -> dict[str, Any]:
        check = self.behaviour
        return {
            "behaviour_status": check.status.value,
            "behaviour_max_diff": check.max_difference,
            "behaviour_tolerance": check.comparison.tolerance if check.comparison else None,
            "behaviour_outputs": [d.to_json() for d in check.comparison.differences] if check.comparison else [],
            "behaviour_probe_config": check.probe_config,
            "behaviour_error": check.error,
            "behaviour_note": check.note,
        }


# A variant whose family no loaded plugin provides (another team's model in a shared database,
# or a plugin left out): reported with what to load, never counted as drift.
FAMILY_NOT_LOADED = "family-not-loaded"


def _not_loaded_text(variant: Any, exc: FamilyNotLoadedError) -> str:
    source = FamilySource.from_label(variant.family_source) if variant.family_source else None
    if source is None:
        return f"family {variant.family!r} is not loaded (where it came from was not recorded)"
    return f"family {variant.family!r} is not loaded: {source.load_hint()}"


def _package_changes(recorded: dict[str, str], now: dict[str, str]) -> dict[str, list[str | None]]:
    return {
        name: [recorded.get(name), now.get(name)]
        for name in sorted(set(recorded) | set(now))
        if name != "model-registry" and recorded.get(name) != now.get(name)
    }


def check_variant(reg: Any, name: str, current_packages: dict[str, str] | None = None,
                  behaviour: bool = True) -> DriftReport:
    """Rebuild variant `name` on the meta device and compare it with its latest schema version;
    when the layout is unchanged and `behaviour` is true, rerun its behaviour probe too.

    Returns its `DriftReport` (a family that is not loaded or a config that no longer builds is a
    status, not an exception). `current_packages`: versions already read by `check_all`. Raises
    `UsageError` when no variant is called `name`."""
    from .store.provenance import package_versions

    variant = reg.require_variant(name)
    latest = reg.latest_schema_version(name)
    report = DriftReport(name, variant.family, latest.version if latest else None, "ok")
    if latest is None:
        report.status, report.error = "unbuildable", "it has no schema version (run `registry init`)"
        return report
    try:  # a family no loaded plugin provides: say which to load; it is not drift
        family = family_of_variant(variant.family, variant.family_source)
    except FamilyNotLoadedError as exc:
        report.status, report.error = FAMILY_NOT_LOADED, _not_loaded_text(variant, exc)
        return report
    except UsageError as exc:
        report.status, report.error = "unbuildable", exc.message
        return report
    current_packages = {**(current_packages or {}), **package_versions(family)}
    try:
        config = make_config(family, variant.config)
        built = build_schema(family, config)
    except UsageError as exc:
        report.status, report.error = "unbuildable", exc.message
        return report
    report.registered_fingerprint, report.built_fingerprint = latest.fingerprint, built.fingerprint
    if built.fingerprint == latest.fingerprint and built.signature.hash == latest.signature_hash:
        if not behaviour:
            report.behaviour = BehaviourCheck(BehaviourStatus.SKIPPED)
            return report
        report.behaviour = check_behaviour(family, config, latest.behaviour)
        if report.behaviour_drift:
            report.status = "drift"
            report.package_changes = _package_changes(latest.package_versions, current_packages)
        return report
    report.status = "drift"
    if built.fingerprint != latest.fingerprint:
        report.schema_diff = diff_schemas(
            built.schema, reg.load_schema(latest.id), missing_label="added", unexpected_label="no longer built"
        )
    report.module_changes = diff_signatures(reg.load_signature(latest.id), built.signature)
    report.package_changes = _package_changes(latest.package_versions, current_packages)
    return report


def check_all(reg: Any, names: list[str] | None = None, behaviour: bool = True) -> list[DriftReport]:
    """A report for every registered variant (or the named ones), sorted by name; `behaviour`
    false skips the behaviour probes (`--no-behaviour`)."""
    from .store.provenance import package_versions

    now = package_versions()
    selected = names or [v.name for v in reg.list_variants()]
    return [check_variant(reg, name, now, behaviour) for name in sorted(selected)]


def behaviour_notes(reports: list[DriftReport]) -> list[str]:
    """Lines saying which variants' behaviour was not checked and why (not drift: exit 0)."""
    notes = []
    no_probe: dict[str, int] = {}
    for report in reports:
        status = report.behaviour.status
        if status is BehaviourStatus.NO_PROBE:
            no_probe[report.family] = no_probe.get(report.family, 0) + 1
        elif status is BehaviourStatus.NOT_RECORDED:
            notes.append(f"no behaviour digest for {report.variant} schema version {report.version} (recorded before "
                         f"digests existed): `registry variants bump {report.variant}` records one")
        elif status is BehaviourStatus.PROBE_FAILED:
            notes.append(f"behaviour of {report.variant} not checked: its probe failed when recorded "
                         f"({report.behaviour.error})")
        elif status is BehaviourStatus.OK and report.behaviour.note:
            notes.append(f"{report.variant}: {report.behaviour.note}: `registry variants bump {report.variant}` "
                         "records a digest at an input without near ties")
    for family, count in sorted(no_probe.items()):
        notes.append(f"no behaviour probe for family {family}: its {count} variant{'s are' if count > 1 else ' is'} "
                     "checked for layout only")
    return notes
