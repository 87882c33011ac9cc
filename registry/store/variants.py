"""Registering variants from families: `registry init`, `variants add`, `variants bump`.

These build models (on the meta device) and then write through the `Registry`; the command line
only parses and renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from registry.errors import UsageError

from .api import Registry
from .provenance import code_revision, package_versions
from .records import SchemaVersionRecord, VariantRecord


@dataclass(frozen=True)
class VariantOutcome:
    """What happened to one variant: `status` is `registered`, `recorded`, `unchanged` or `differs`."""

    variant: VariantRecord
    version: SchemaVersionRecord | None
    status: str
    built_fingerprint: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant.name,
            "family": self.variant.family,
            "status": self.status,
            "version": self.version.version if self.version else None,
            "fingerprint": self.version.fingerprint if self.version else None,
            "built_fingerprint": self.built_fingerprint,
        }


def init_builtin_variants(reg: Registry, variants: Iterable[Any] | None = None) -> list[VariantOutcome]:
    """Register every built-in variant with its first schema version; idempotent.

    A variant already registered is left as it is: `unchanged` when the current code builds its
    latest schema version, `differs` when it does not (that is drift: `registry check`, then
    `registry variants bump`). Returns one outcome per variant, sorted by name.
    """
    from registry.behaviour import behaviour_digest
    from registry.catalog import builtin_variants
    from registry.families import build_schema, config_dict, get_family, make_config

    outcomes = []
    for builtin in sorted(variants if variants is not None else builtin_variants(), key=lambda v: v.name):
        family = get_family(builtin.family)
        revision, packages = code_revision(family), package_versions(family)
        config = make_config(family, builtin.config)
        built = build_schema(family, config)
        reg.register_variant(builtin.name, family.name, config_dict(config), builtin.description,
                             family_source=family.source)
        latest = reg.latest_schema_version(builtin.name)
        if latest is None:
            latest = reg.record_schema_version(builtin.name, built.schema, built.signature,
                                               code_revision=revision, package_versions=packages,
                                               behaviour=behaviour_digest(family, config))
            status = "registered"
        elif latest.fingerprint == built.fingerprint and latest.signature_hash == built.signature.hash:
            status = "unchanged"
        else:
            status = "differs"
        outcomes.append(VariantOutcome(reg.require_variant(builtin.name), latest, status, built.fingerprint))
    return outcomes


def add_variant(reg: Registry, name: str, family_name: str, config: Any, description: str = "") -> VariantOutcome:
    """Register a user variant from a family and a full config object, with its first schema version.

    Records where the family came from (`family_source`) and the family's own code revision.
    Idempotent for the same config; raises `UsageError` when `name` holds another config.
    """
    from registry.behaviour import behaviour_digest
    from registry.families import build_schema, config_dict, get_family

    family = get_family(family_name)
    built = build_schema(family, config)
    record = reg.register_variant(name, family.name, config_dict(config), description, family_source=family.source)
    latest = reg.latest_schema_version(name)
    status = "unchanged"
    if latest is None:
        latest = reg.record_schema_version(name, built.schema, built.signature, code_revision=code_revision(family),
                                           package_versions=package_versions(family),
                                           behaviour=behaviour_digest(family, config))
        status = "registered"
    elif latest.fingerprint != built.fingerprint or latest.signature_hash != built.signature.hash:
        status = "differs"
    return VariantOutcome(reg.require_variant(record.name), latest, status, built.fingerprint)


def bump_variant(reg: Registry, name: str) -> VariantOutcome:
    """Rebuild a registered variant from its stored config and record a new schema version.

    Status `recorded` when a new version was written (layout, module classes or behaviour digest
    changed, or the latest version predates behaviour digests), `unchanged` when the code still
    builds the latest one and computes what it computed. Raises `UsageError` for an unknown variant, or a stored config the family no
    longer accepts (the message says which key).
    """
    from registry.behaviour import behaviour_digest
    from registry.families import build_schema, family_of_variant, make_config

    variant = reg.require_variant(name)
    family = family_of_variant(variant.family, variant.family_source)
    try:
        config = make_config(family, variant.config)
    except UsageError as exc:
        raise UsageError(f"variant {name}: its registered config no longer builds: {exc.message}",
                         hint="register the new config under a new name with `registry variants add`") from None
    built = build_schema(family, config)
    before = reg.latest_schema_version(name)
    version = reg.record_schema_version(name, built.schema, built.signature, code_revision=code_revision(family),
                                        package_versions=package_versions(family),
                                        behaviour=behaviour_digest(family, config))
    status = "unchanged" if before is not None and before.id == version.id else "recorded"
    return VariantOutcome(reg.require_variant(name), version, status, built.fingerprint)
