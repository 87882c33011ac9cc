"""Which registered build loads a checkpoint, or why none does (DESIGN §5).

Evidence is tried in order and the first conclusive step wins:
1. registry metadata embedded by our trainer (checked against the file's real fingerprint);
2. the registry's record of this very file (path, size, mtime);
3. exact fingerprint match on the whole state dict, then on every sub-model prefix;
4. converters: a registered conversion whose output is a registered variant;
5. config inference: a family proposes a config, verified by rebuilding on the meta device;
6. otherwise: the nearest registered schemas, ranked, each with a grouped diff.
Several variants with one schema is `ambiguous`, never a silent pick.

Steps 1–3 need no torch, so an exact match stays fast on any checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from .readers import CheckpointInfo
from .schema import Schema, short_form

if TYPE_CHECKING:  # the diff module loads only when a match falls through to nearest ranking
    from .diff import SchemaDiff

EXACT, AMBIGUOUS, CONVERTIBLE, INFERRED, NONE = "exact", "ambiguous", "convertible", "inferred", "none"
# Inference and converters look below the top level only this deep (`model.diffusion_model.` is 2).
INFERENCE_PREFIX_DEPTH = 2
# The generic solver runs in `match` only where a family's top-level names fit the checkpoint's this
# well (Jaccard), and with this many builds at most (`registry infer` allows more).
MATCH_INFERENCE_MIN_OVERLAP = 0.5
MATCH_INFERENCE_BUDGET = 80


@dataclass
class Candidate:
    variant: str
    family: str
    version: int
    schema_version_id: int
    fingerprint: str
    prefix: str
    score: float = 1.0
    diff: SchemaDiff | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "variant": self.variant,
            "family": self.family,
            "schema_version": self.version,
            "schema_version_id": self.schema_version_id,
            "fingerprint": self.fingerprint,
            "prefix": self.prefix,
            "score": round(self.score, 6),
        }
        if self.diff is not None:
            out["diff"] = self.diff.to_json()
        return out


@dataclass
class MatchResult:
    status: str
    fingerprint: str  # of the checkpoint's whole state dict
    evidence: str | None = None  # embedded | record | fingerprint | converter | inference
    variant: str | None = None
    family: str | None = None
    config: dict[str, Any] | None = None  # the config to build (the target's, after conversion)
    schema_version: int | None = None
    schema_version_id: int | None = None
    prefix: str = ""
    converter: str | None = None
    source_config: dict[str, Any] | None = None  # the checkpoint's own config, when converting
    candidates: list[Candidate] = field(default_factory=list)
    diff: SchemaDiff | None = None
    suggestions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def loadable(self) -> bool:
        return self.status in (EXACT, CONVERTIBLE, INFERRED)

    @property
    def exit_code(self) -> int:
        return 0 if self.loadable else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "evidence": self.evidence,
            "fingerprint": self.fingerprint,
            "variant": self.variant,
            "family": self.family,
            "schema_version": self.schema_version,
            "schema_version_id": self.schema_version_id,
            "prefix": self.prefix,
            "converter": self.converter,
            "config": self.config,
            "source_config": self.source_config,
            "candidates": [c.to_json() for c in self.candidates],
            "diff": self.diff.to_json() if self.diff else None,
            "suggestions": self.suggestions,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class Scope:
    """Which variants an answer may name: all, one family's, or one variant."""

    family: str | None = None
    variant: str | None = None

    def allows(self, variant: str, family: str) -> bool:
        return (self.variant is None or variant == self.variant) and (self.family is None or family == self.family)


def _candidate(sv: Any, prefix: str) -> Candidate:
    return Candidate(sv.variant, sv.family, sv.version, sv.id, sv.fingerprint, prefix)


def _exact(reg: Any, result: MatchResult, candidates: list[Candidate], evidence: str) -> MatchResult:
    """Fill `result` from exact candidates: one variant → exact; several → ambiguous."""
    variants = {c.variant for c in candidates}
    result.candidates = candidates
    if len(variants) > 1:
        result.status = AMBIGUOUS
        names = ", ".join(sorted(variants))
        result.suggestions.append(f"several variants build this schema ({names}): choose one with --variant")
        return result
    chosen = max(candidates, key=lambda c: c.version)
    _select(reg, result, chosen, evidence)
    latest = reg.latest_schema_version(chosen.variant)
    if latest is not None and latest.version != chosen.version:
        result.warnings.append(
            f"matches schema version {chosen.version} of {chosen.variant}; its latest is version {latest.version}, "
            "which the current code builds"
        )
    return result


def _select(reg: Any, result: MatchResult, chosen: Candidate, evidence: str) -> None:
    variant = reg.get_variant(chosen.variant)
    result.status = EXACT
    result.evidence = evidence
    result.variant = chosen.variant
    result.family = chosen.family
    result.config = variant.config if variant else None
    result.schema_version = chosen.version
    result.schema_version_id = chosen.schema_version_id
    result.prefix = chosen.prefix


def _lookup(reg: Any, fingerprint: str, prefix: str, scope: Scope) -> list[Candidate]:
    return [_candidate(sv, prefix) for sv in reg.find_by_fingerprint(fingerprint) if scope.allows(sv.variant, sv.family)]


def _lookup_many(reg: Any, wanted: list[tuple[str, str]], scope: Scope) -> list[Candidate]:
    """`_lookup` of each `(fingerprint, prefix)` in turn, concatenated, in one query."""
    found = reg.find_by_fingerprints(fingerprint for fingerprint, _ in wanted)
    return [
        _candidate(sv, prefix)
        for fingerprint, prefix in wanted
        for sv in found.get(fingerprint, ())
        if scope.allows(sv.variant, sv.family)
    ]


def _from_embedded(reg: Any, info: CheckpointInfo, result: MatchResult, scope: Scope) -> bool:
    embedded = info.embedded
    if "fingerprint" not in embedded:
        return False
    claimed = str(embedded.get("fingerprint"))
    claimed_prefix = str(embedded.get("prefix") or "")
    actual = info.schema.fingerprint if not claimed_prefix else info.schema.under(claimed_prefix).fingerprint
    if claimed != actual:
        result.warnings.append(
            f"mislabeled file: its embedded registry metadata says {embedded.get('variant')} "
            f"({short_form(claimed)}) but its tensors fingerprint as {short_form(actual)}; ignoring the label"
        )
        return False
    named = [c for c in _lookup(reg, actual, claimed_prefix, scope) if c.variant == embedded.get("variant")]
    if not named:
        return False
    _exact(reg, result, named, "embedded")
    return True


def _from_record(reg: Any, info: CheckpointInfo, result: MatchResult, scope: Scope) -> bool:
    try:
        stat = os.stat(info.path)
    except OSError:
        return False
    record = reg.find_checkpoint(os.path.abspath(info.path), stat.st_size, stat.st_mtime)
    if record is None or record.schema_version_id is None:
        return False
    sv = reg.get_schema_version(record.schema_version_id)
    prefix = record.prefix or ""
    actual = info.schema.under(prefix).fingerprint if prefix else info.schema.fingerprint
    if sv.fingerprint != actual or not scope.allows(sv.variant, sv.family):
        return False
    _exact(reg, result, [_candidate(sv, prefix)], "record")
    return True


def _prefixes(info: CheckpointInfo, max_depth: int | None = None) -> Iterable[tuple[str, Schema]]:
    """("", whole schema) first, then each sub-model prefix (shortest first)."""
    yield "", info.schema
    for sub in sorted(info.submodels(), key=lambda s: (s.prefix.count("."), s.prefix)):
        if max_depth is None or sub.prefix.count(".") <= max_depth:
            yield sub.prefix, info.schema.under(sub.prefix)


def _from_fingerprint(reg: Any, info: CheckpointInfo, result: MatchResult, scope: Scope) -> bool:
    found = _lookup(reg, info.schema.fingerprint, "", scope)
    if not found:
        subs = sorted(info.submodels(), key=lambda s: (s.prefix.count("."), s.prefix))
        found = _lookup_many(reg, [(sub.fingerprint, sub.prefix) for sub in subs], scope)
    if not found:
        return False
    _exact(reg, result, found, "fingerprint")
    return True


def _source_configs(reg: Any, family_name: str, schema: Schema) -> list[Any]:
    """Configs of `family_name` that build `schema` exactly: registered variants first, then inference."""
    from .families import family_of_variant, make_config

    family = family_of_variant(family_name, registry=reg)
    configs = [
        make_config(family, reg.get_variant(sv.variant).config)
        for sv in reg.find_by_fingerprint(schema.fingerprint)
        if sv.family == family_name
    ]
    return configs or _inferred_configs(family, schema)


def _inferred_configs(family: Any, schema: Schema) -> list[Any]:
    from .families import build_schema

    if family.infer_configs is None:
        return []
    return [c for c in family.infer_configs(schema) if build_schema(family, c).fingerprint == schema.fingerprint]


def _from_converters(reg: Any, info: CheckpointInfo, result: MatchResult, scope: Scope) -> bool:
    from .converters import converters
    from .families import build_schema, config_dict, family_of_variant

    for converter in converters():
        if scope.family not in (None, converter.target_family):
            continue
        target_family = family_of_variant(converter.target_family, registry=reg)
        for prefix, schema in _prefixes(info, INFERENCE_PREFIX_DEPTH):
            for source_config in _source_configs(reg, converter.source_family, schema):
                target = build_schema(target_family, converter.target_config(source_config))
                found = _lookup(reg, target.fingerprint, prefix, scope)
                if found:
                    _exact(reg, result, found, "converter")
                    if result.status == EXACT:
                        result.status = CONVERTIBLE
                        result.converter = converter.name
                        result.source_config = config_dict(source_config)
                    return True
    return False


def _from_inference(reg: Any, info: CheckpointInfo, result: MatchResult, scope: Scope) -> bool:
    """A family's hand-written hook first (fast), then the generic solver for families without one."""
    from .families import families

    if scope.variant is not None:
        return False
    candidates = [f for f in families() if scope.family in (None, f.name)]
    candidates += _registered_class_families(reg, scope, {f.name for f in candidates}, result)
    for family in candidates:
        for prefix, schema in _prefixes(info, INFERENCE_PREFIX_DEPTH):
            configs = _inferred_configs(family, schema)
            if configs:
                _report_inferred(result, family, configs[0], prefix)
                return True
    return _from_generic_inference(info, result, [f for f in candidates if f.infer_configs is None])


def _registered_class_families(reg: Any, scope: Scope, loaded: set[str], result: MatchResult) -> list[Any]:
    """Class families of registered variants that no plugin loads (added by hand with `--class`),
    resolved with the config class they were registered with, where their class imports here; a
    class that cannot be found here is left out, one that fails to import is a warning."""
    from .errors import FamilyNotLoadedError, RegistryError
    from .families import family_of_variant

    names = sorted({v.family for v in reg.list_variants(scope.family) if ":" in v.family} - loaded)
    out = []
    for name in names:
        try:
            out.append(family_of_variant(name, registry=reg))
        except FamilyNotLoadedError:
            continue
        except RegistryError as exc:
            result.warnings.append(f"config inference skipped class family {name}: {exc.message}")
    return out


def _from_generic_inference(info: CheckpointInfo, result: MatchResult, candidates: list[Any]) -> bool:
    """The generic solver (`registry.inference`), bounded: only on the part of the checkpoint whose
    top-level names best fit a family's default build, when they fit well, with a small budget."""
    from .inference import infer_config, top_level_overlap

    prefixes = list(_prefixes(info, INFERENCE_PREFIX_DEPTH))
    for family in candidates:
        fit, prefix, schema = max(((top_level_overlap(family, s), p, s) for p, s in prefixes),
                                  key=lambda c: (c[0], -len(c[1])))
        if fit < MATCH_INFERENCE_MIN_OVERLAP:
            continue
        found = infer_config(family, schema, budget=MATCH_INFERENCE_BUDGET)
        if found.exact:
            _report_inferred(result, family, found.config, prefix)
            for item in found.undetermined:
                value, others = item.to_json()["value"], ", ".join(_cli_value(v) for v in item.to_json()["admissible"])
                result.warnings.append(f"{item.field} is not decided by the checkpoint: {_cli_value(value)} is kept "
                                       f"({item.source}); these build it too: {others}")
            return True
    return False


def _report_inferred(result: MatchResult, family: Any, config: Any, prefix: str) -> None:
    from .families import config_dict

    values = config_dict(config)
    result.status, result.evidence = INFERRED, "inference"
    result.family, result.config, result.prefix = family.name, values, prefix
    try:
        defaults = config_dict(family.default_config())
    except Exception:  # required fields: every value is set explicitly
        defaults = {}
    sets = " ".join(f"--set {k}={_cli_value(v)}" for k, v in values.items() if defaults.get(k) != v)
    source = f"--class {family.name}" if ":" in family.name else f"--family {family.name}"
    if family.origin is not None and family.origin.config_class:
        source += f" --config-class {family.origin.config_class}"
    short = family.name.rsplit(":", 1)[-1].lower() if ":" in family.name else family.name
    result.suggestions.append(
        f"registry variants add {short}/NAME {source} {sets}".rstrip() + "   # register it, then match again"
    )


def _cli_value(value: Any) -> str:
    import json

    text = json.dumps(value, separators=(",", ":"))
    return text if text.replace("_", "").replace("-", "").replace(".", "").isalnum() else f"'{text}'"


def _nearest_scopes(info: CheckpointInfo) -> Iterable[tuple[str, Schema]]:
    """The whole schema, and each sub-model holding at least half of its entries: a Lightning
    checkpoint's `model.` or an SD file's `model.diffusion_model.` is compared without its prefix,
    so the diff names what differs inside the model rather than the prefix on every name."""
    whole = len(info.schema)
    for prefix, schema in _prefixes(info, INFERENCE_PREFIX_DEPTH):
        if not prefix or 2 * len(schema) >= whole:
            yield prefix, schema


def _nearest(reg: Any, info: CheckpointInfo, result: MatchResult, scope: Scope, path: str, limit: int) -> None:
    from .diff import diff_schemas

    ranked: dict[str, Candidate] = {}
    for prefix, schema in _nearest_scopes(info):
        for sv, _ in reg.nearest_candidates(schema, limit=limit * 3):
            if not scope.allows(sv.variant, sv.family):
                continue
            candidate = _candidate(sv, prefix)
            candidate.diff = diff_schemas(reg.load_schema(sv.id), schema)
            candidate.score = candidate.diff.score
            known = ranked.get(sv.variant)
            if known is None or candidate.score > known.score:
                ranked[sv.variant] = candidate
    ranked = sorted(ranked.values(), key=lambda c: (-c.score, c.variant))
    result.candidates = ranked[:limit]
    if not ranked:
        result.suggestions.append("no registered schema shares entries with this checkpoint: `registry variants list`")
        return
    best = ranked[0]
    result.diff = best.diff
    if best.diff and best.diff.rename_rules and not best.prefix:  # the rules are for the whole file's names
        from .converters import RenameRules

        rules = RenameRules(tuple(best.diff.rename_rules))
        result.suggestions.append(
            f"registry convert {path} --to {best.variant} {rules.as_options()} -o converted.safetensors"
        )


def match_checkpoint(
    reg: Any,
    info: CheckpointInfo,
    *,
    family: str | None = None,
    variant: str | None = None,
    nearest: int = 5,
) -> MatchResult:
    """The registered build that loads `info` (see the module docstring for the order of evidence).

    `family`/`variant` restrict the answer (a trainer that builds diffusers UNets asks for
    `family="diffusers-unet"`, which turns an LDM checkpoint into a `convertible` answer).
    Returns a `MatchResult`; raises `DatabaseError` only for database failures.
    """
    scope = Scope(family=family, variant=variant)
    result = MatchResult(status=NONE, fingerprint=info.schema.fingerprint)
    path = info.path
    for step in (_from_embedded, _from_record, _from_fingerprint, _from_converters):
        if step(reg, info, result, scope):
            return result
    if _from_inference(reg, info, result, scope):
        return result
    _nearest(reg, info, result, scope, path, nearest)
    return result
