"""Config inference for any family: the config whose meta-device build has a checkpoint's schema.

No family-specific code: the solver (`inference_search`) learns what each config field does by
building and diffing, within a build budget. It accepts only the exact fingerprint; otherwise it
returns the nearest config it built, with the grouped diff. Fields the schema does not decide (a
GPT's `n_head` when only `n_embd` has a shape) are reported as undetermined with the values that
were tried and also build the schema; they keep their default (or the `--fix` value), never a
silent guess. Free strings are searched only among the choices a family declares
(`Family.config_choices`); the result says which fields needed them.

Families with a hand-written `infer_configs` hook use it first in `registry match` (an
accelerator); this solver needs none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .config_types import plain
from .errors import UsageError
from .inference_search import Evaluator, OutOfBudget, Search
from .inference_signals import perturbations
from .inference_space import CHOICE, CHOICE_SEQ, INT, INT_SEQ, Knob, Space, dimension_pool, flatten, search_space
from .schema import Schema

if TYPE_CHECKING:
    from .diff import SchemaDiff

DEFAULT_BUDGET = 400
# Start values tried, in order, for searchable fields that have no default.
REQUIRED_INT_GUESSES = (2, 32)


@dataclass(frozen=True)
class UndeterminedField:
    """A field whose value the schema does not decide: `admissible` values all build it exactly.

    `source` says where the value kept in the config comes from: `default`, `fixed` (--fix) or
    `search` (the default does not build this schema, so one admissible value had to be taken).
    """

    field: str
    value: Any
    source: str
    admissible: tuple[Any, ...]

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "value": plain(self.value), "source": self.source,
                "admissible": [plain(v) for v in self.admissible]}


@dataclass
class InferenceResult:
    """What `infer_config` found. `exact` means `config` builds the checkpoint's fingerprint."""

    family: str
    exact: bool
    config: Any  # the family's config object (the nearest one when not exact)
    fingerprint: str | None  # of what `config` builds
    target_fingerprint: str
    builds: int
    rejected: int  # configs the config class refused before any build
    seconds: float
    build_seconds: float
    distance: int  # entries missing + unexpected + reshaped (0 when exact)
    undetermined: list[UndeterminedField] = field(default_factory=list)
    declared_choices: list[str] = field(default_factory=list)
    not_searched: list[str] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    budget_exhausted: bool = False
    diff: SchemaDiff | None = None  # expected = what `config` builds, actual = the checkpoint

    def config_values(self) -> dict[str, Any]:
        """The config as plain JSON values (nested dataclasses as mappings)."""
        return plain(self.config)

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "exact": self.exact,
            "config": self.config_values(),
            "fingerprint": self.fingerprint,
            "target_fingerprint": self.target_fingerprint,
            "builds": self.builds,
            "rejected_configs": self.rejected,
            "seconds": round(self.seconds, 3),
            "distance": self.distance,
            "undetermined": [u.to_json() for u in self.undetermined],
            "declared_choices": self.declared_choices,
            "not_searched": self.not_searched,
            "fixed": {k: plain(v) for k, v in self.fixed.items()},
            "budget_exhausted": self.budget_exhausted,
            "diff": self.diff.to_json() if self.diff else None,
        }


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{"a.b": 1}` -> `{"a": {"b": 1}}` (what `make_config` reads)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _start(family: Any, fixed: Mapping[str, Any], space: Space, target: Schema) -> Any:
    """The config the search starts from: defaults and `fixed`; required fields get small guesses."""
    from .families import make_config

    if not space.required:
        return make_config(family, _nested(fixed))
    kinds = {k.path: k for k in space.knobs}
    error: UsageError | None = None
    for guess in (*REQUIRED_INT_GUESSES, *dimension_pool(target)[:1]):
        values = dict(fixed)
        for path in space.required:
            knob = kinds[path]
            values[path] = guess if knob.kind == INT else [guess] if knob.kind == INT_SEQ else knob.choices[0]
        try:
            return make_config(family, _nested(values))
        except UsageError as exc:
            error = exc
    assert error is not None
    raise error


def infer_config(family: Any, schema: Schema, *, fixed: Mapping[str, Any] | None = None,
                 budget: int = DEFAULT_BUDGET) -> InferenceResult:
    """Search `family`'s configs for one whose meta build has exactly `schema`'s fingerprint.

    `fixed` maps dotted field paths to values the search must keep (`--fix`). `budget` bounds the
    number of model builds (configs the config class rejects cost none). Returns an
    `InferenceResult`: exact, or the nearest config with its grouped diff. Raises `UsageError`
    for a `fixed` key or value the family's config does not accept.
    """
    started = time.perf_counter()
    fixed = dict(fixed or {})
    declared = dict(getattr(family, "config_choices", None) or {})
    probe_space = search_space(family.config_class, None, declared, frozenset(fixed))
    config = _start(family, fixed, probe_space, schema)
    space = search_space(family.config_class, config, declared, frozenset(fixed))
    fixed_values = {path: value for path, value in flatten(config).items() if path in fixed}
    evaluate = Evaluator(family, schema, space, budget)
    exhausted = False
    search: Search | None = None
    try:
        search = Search(evaluate, space, flatten(config))
        search.run()
        if not search.outcome.exact:  # stuck in a local minimum: once more in another order
            again = Search(evaluate, space, flatten(config), order=1)
            again.run()
            if again.outcome.distance < search.outcome.distance:
                search = again
    except OutOfBudget:
        exhausted = True
    undetermined: list[UndeterminedField] = []
    if search is not None and search.outcome.exact:
        try:
            undetermined = _undetermined(family, search, space)
        except OutOfBudget:
            exhausted = True
    return _result(family, schema, space, evaluate, search, undetermined, fixed_values, exhausted, started)


def _defaults(family: Any) -> dict[str, Any]:
    try:
        return flatten(family.config_class())
    except Exception:  # required fields: no defaults to restore
        return {}


def _alternatives(knob: Knob, value: Any, default: Any) -> list[Any]:
    """Other values of a field to test at an exact config: its default first, then neighbours."""
    found: list[Any] = []
    if default is not None and default != value and not isinstance(default, list):
        found.append(default)
    if knob.kind == INT and isinstance(value, int):
        found += [v for v in (2 * value, value // 2, value + 1) if v > 0 and v != value]
    elif knob.kind == CHOICE:
        found += [c for c in knob.choices if c != value]
    elif knob.kind in (INT_SEQ, CHOICE_SEQ) and value:
        first = value[0]
        if knob.kind == CHOICE_SEQ:
            found += [(c,) + value[1:] for c in knob.choices if c != first][:2]
        elif isinstance(first, int):
            found += [(v,) + value[1:] for v in perturbations(first)[:1]]
    return list(dict.fromkeys(found))[:6]


def _undetermined(family: Any, search: Search, space: Space) -> list[UndeterminedField]:
    """Fields that other values also build exactly; each keeps its default when the default fits."""
    defaults = _defaults(family)
    found = []
    for knob in space.knobs:
        value = search.current.get(knob.path)
        admissible, moved = [], 0
        for alt in _alternatives(knob, value, defaults.get(knob.path)):
            outcome = search.evaluate({**search.current, knob.path: alt})
            if outcome.exact:
                admissible.append(alt)
            elif outcome.ok:
                moved += 1
                if moved == 2 and not admissible:  # two values move the schema: it decides this field
                    break
        if not admissible:
            continue
        default = defaults.get(knob.path)
        if knob.path in defaults and default in admissible:
            search.current = {**search.current, knob.path: default}
            admissible = [value if a == default else a for a in admissible]
            value = default
        source = "default" if knob.path in defaults and value == defaults[knob.path] else "search"
        found.append(UndeterminedField(knob.path, value, source, (value, *admissible)))
    return found


def _result(family: Any, schema: Schema, space: Space, evaluate: Evaluator, search: Search | None,
            undetermined: list[UndeterminedField], fixed: dict[str, Any], exhausted: bool,
            started: float) -> InferenceResult:
    from .diff import diff_schemas
    from .inference_space import assemble

    outcome = search.outcome if search is not None else None
    config = assemble(family.config_class, search.current, evaluate.sequence_types) if search else None
    exact = bool(outcome and outcome.exact and outcome.schema.fingerprint == schema.fingerprint)
    diff = None
    if outcome is not None and outcome.ok and not exact:
        diff = diff_schemas(outcome.schema, schema)
    declared = [k.path for k in space.knobs if k.declared]
    return InferenceResult(
        family=family.name,
        exact=exact,
        config=config,
        fingerprint=outcome.schema.fingerprint if outcome is not None and outcome.ok else None,
        target_fingerprint=schema.fingerprint,
        builds=evaluate.builds,
        rejected=evaluate.rejected,
        seconds=time.perf_counter() - started,
        build_seconds=evaluate.build_seconds,
        distance=outcome.differing if outcome is not None and outcome.ok else len(schema),
        undetermined=undetermined,
        declared_choices=declared,
        not_searched=list(space.not_searched),
        fixed=fixed,
        budget_exhausted=exhausted,
        diff=diff,
    )


# --- which part of a checkpoint a family should explain ----------------------------------------

_TOP_LEVEL: dict[str, frozenset[str]] = {}


def family_top_level(family: Any) -> frozenset[str]:
    """The top-level module names of the family's default build (cached per process); empty when
    the family has no buildable default (required fields, or its default does not build)."""
    from .families import build_schema

    if family.name not in _TOP_LEVEL:
        try:
            names = build_schema(family, family.default_config()).schema.names
        except Exception:  # a class with required arguments, or a default its code refuses
            names = []
        _TOP_LEVEL[family.name] = frozenset(name.split(".", 1)[0] for name in names)
    return _TOP_LEVEL[family.name]


def top_level_overlap(family: Any, schema: Schema) -> float:
    """Jaccard similarity of the top-level names of `schema` and of the family's default build."""
    mine = family_top_level(family)
    theirs = {name.split(".", 1)[0] for name in schema.by_name}
    return len(mine & theirs) / len(mine | theirs) if mine and theirs else 0.0


def candidate_prefixes(info: Any, max_depth: int = 2) -> list[tuple[str, Schema]]:
    """("", the whole schema) then every sub-model prefix up to `max_depth` dots, shortest first."""
    subs = sorted(info.submodels(), key=lambda s: (s.prefix.count("."), s.prefix))
    return [("", info.schema)] + [(s.prefix, info.schema.under(s.prefix)) for s in subs if s.prefix.count(".") <= max_depth]


def infer_checkpoint(info: Any, family: Any, *, fixed: Mapping[str, Any] | None = None, prefix: str | None = None,
                     budget: int = DEFAULT_BUDGET) -> tuple[InferenceResult, str]:
    """`infer_config` on a read checkpoint (`CheckpointInfo`): the whole state dict, or the
    sub-model under `prefix`, or (prefix None) the part whose top-level names best fit the family's
    default build.

    Returns (result, prefix used). Raises `UsageError` for a prefix with no entries or a bad
    `fixed` key or value.
    """
    if prefix is not None:
        schema = info.schema.under(prefix) if prefix else info.schema
        if not len(schema):
            raise UsageError(f"no entries under prefix {prefix!r} in {info.path}")
        return infer_config(family, schema, fixed=fixed, budget=budget), prefix
    candidates = candidate_prefixes(info)
    best = max(candidates, key=lambda c: (top_level_overlap(family, c[1]), -len(c[0])))
    return infer_config(family, best[1], fixed=fixed, budget=budget), best[0]
