"""Which runs used which architecture: runs, their resume chains, checkpoints and conversions.

Reads the store only through `Registry` methods (no SQL here) and returns plain dataclasses whose
`to_json()` field names are stable (scripts on clusters depend on them).

A run's *parent* is the run it resumed: `parent_run_id`, else the run that wrote the checkpoint it
resumed from (`resumed_from_checkpoint_id`). A *resume chain* is a first run (one without a
parent) and every run resumed from it, directly or not, in resume order (depth first, siblings by
start time). A conversion is a `checkpoint.convert` event: a file written by `registry convert`,
or a run that converted its starting checkpoint in memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import UsageError

CONVERT_ACTION = "checkpoint.convert"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?$")


def parse_since(text: str, option: str = "--since") -> datetime:
    """The moment `text` names, timezone-aware in UTC.

    Accepts an ISO date or date and time (`2026-11-01`, `2026-11-01T12:00`, `2026-11-01 12:00:30`),
    optionally with `Z` or an offset (`+02:00`); without one it is UTC. A date alone is midnight.
    Raises `UsageError` (exit 2) naming the option for anything else.
    """
    value = text.strip()
    moment = None
    if _DATE.match(value):
        try:
            moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            moment = None
    if moment is None:
        raise UsageError(f"{option} {text!r} is not a date: use an ISO date or date and time in UTC, "
                         "e.g. 2026-11-01 or 2026-11-01T12:00")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversion:
    """A recorded conversion: `registry convert` wrote `target`, or run `run_id` converted in memory."""

    at: datetime
    source: str | None
    source_fingerprint: str | None
    target: str | None  # the converted file's path; None for an in-memory conversion
    variant: str | None  # the variant the result loads into
    method: str | None
    exact: bool | None
    in_memory: bool
    checkpoint_id: int | None  # the converted file's id, or (in memory) the source checkpoint's
    run_id: str | None
    who: str
    host: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "source": self.source, "source_fingerprint": self.source_fingerprint,
                "target": self.target, "variant": self.variant, "method": self.method, "exact": self.exact,
                "in_memory": self.in_memory, "checkpoint_id": self.checkpoint_id, "run_id": self.run_id,
                "who": self.who, "host": self.host}


@dataclass(frozen=True)
class RunSummary:
    """A run with what the audit adds: its schema version number, step range and resume link."""

    run: Any  # RunRecord
    schema_version: int | None
    first_step: int | None  # min/max step over the run's checkpoints
    last_step: int | None
    checkpoints: int
    resumed_from_run_id: str | None
    resumed_from_step: int | None
    conversion: Conversion | None  # how the run converted its starting checkpoint in memory
    depth: int  # how many resumes from the first run of its chain (0: it is the first)
    resumed_from_path: str | None = None  # the checkpoint file it started from (None: not recorded)

    def to_json(self) -> dict[str, Any]:
        return {**self.run.as_dict(), "schema_version": self.schema_version, "first_step": self.first_step,
                "last_step": self.last_step, "checkpoints": self.checkpoints,
                "resumed_from_run_id": self.resumed_from_run_id, "resumed_from_step": self.resumed_from_step,
                "resumed_from_path": self.resumed_from_path,
                "conversion": self.conversion.to_json() if self.conversion else None, "depth": self.depth}


@dataclass(frozen=True)
class Chain:
    """The selected runs of one resume chain, in resume order; `root` is its first run's id (which
    a filter may have left out)."""

    root: str
    runs: list[RunSummary]

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "runs": [r.to_json() for r in self.runs]}


@dataclass(frozen=True)
class AuditReport:
    variant: str | None
    family: str | None
    since: datetime | None
    chains: list[Chain]
    conversions: list[Conversion]

    @property
    def run_count(self) -> int:
        return sum(len(c.runs) for c in self.chains)

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "family": self.family,
                "since": self.since.isoformat() if self.since else None, "runs": self.run_count,
                "chains": [c.to_json() for c in self.chains], "conversions": [c.to_json() for c in self.conversions]}


@dataclass(frozen=True)
class RunDetail:
    """What `registry runs show` prints: the run, its checkpoints, its parents back to the first
    run (nearest first) and the runs resumed from it."""

    run: RunSummary
    checkpoints: list[Any]  # CheckpointRecord
    parents: list[RunSummary]
    children: list[RunSummary]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run.to_json(), "checkpoints": [c.as_dict() for c in self.checkpoints],
                "parents": [p.to_json() for p in self.parents], "children": [c.to_json() for c in self.children]}


# --- the run graph ----------------------------------------------------------------------------


@dataclass
class _Graph:
    """Every run and checkpoint, indexed: parents, children, step ranges, in-memory conversions."""

    runs: dict[str, Any]
    checkpoints: dict[int, Any]
    conversions: list[Conversion]
    versions: dict[int, int] = field(default_factory=dict)  # schema_version_id -> version number
    children: dict[str, list[str]] = field(default_factory=dict)
    steps: dict[str, list[int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for ckpt in self.checkpoints.values():
            if ckpt.run_id is not None:
                self.counts[ckpt.run_id] = self.counts.get(ckpt.run_id, 0) + 1
                if ckpt.step is not None:
                    self.steps.setdefault(ckpt.run_id, []).append(ckpt.step)
        for run in sorted(self.runs.values(), key=_start_key):
            parent = self.parent(run.id)
            if parent is not None:
                self.children.setdefault(parent, []).append(run.id)

    def parent(self, run_id: str) -> str | None:
        run = self.runs[run_id]
        if run.parent_run_id is not None:
            return run.parent_run_id if run.parent_run_id in self.runs else None
        source = self.checkpoints.get(run.resumed_from_checkpoint_id) if run.resumed_from_checkpoint_id else None
        if source is not None and source.run_id in self.runs and source.run_id != run_id:
            return source.run_id
        return None

    def ancestors(self, run_id: str) -> list[str]:
        """Parents of `run_id`, nearest first, back to the first run (a cycle stops the walk)."""
        seen, out = {run_id}, []
        parent = self.parent(run_id)
        while parent is not None and parent not in seen:
            out.append(parent)
            seen.add(parent)
            parent = self.parent(parent)
        return out

    def root(self, run_id: str) -> str:
        ancestors = self.ancestors(run_id)
        return ancestors[-1] if ancestors else run_id

    def chain_order(self, root: str) -> list[str]:
        """The runs of the chain from `root`, depth first, siblings by start time."""
        return resume_order(root, self.children)

    def summary(self, run_id: str) -> RunSummary:
        run = self.runs[run_id]
        steps = self.steps.get(run_id, [])
        parent = self.parent(run_id)
        source = self.checkpoints.get(run.resumed_from_checkpoint_id) if run.resumed_from_checkpoint_id else None
        conversion = next((c for c in self.conversions if c.in_memory and c.run_id == run_id), None)
        return RunSummary(
            run=run, schema_version=self.versions.get(run.schema_version_id) if run.schema_version_id else None,
            first_step=min(steps) if steps else None, last_step=max(steps) if steps else None,
            checkpoints=self.counts.get(run_id, 0), resumed_from_run_id=parent,
            resumed_from_step=source.step if source is not None else None, conversion=conversion,
            depth=len(self.ancestors(run_id)), resumed_from_path=source.path if source is not None else None,
        )


def resume_order(root: str, children: dict[str, list[str]]) -> list[str]:
    """`root` and every run resumed from it, directly or not: depth first, each run's children in
    the order given (start time); a cycle stops the walk."""
    order: list[str] = []
    stack, seen = [root], set()
    while stack:
        run_id = stack.pop()
        if run_id in seen:
            continue
        seen.add(run_id)
        order.append(run_id)
        stack.extend(reversed(children.get(run_id, [])))
    return order


def _start_key(run: Any) -> tuple[datetime, str]:
    return run.started_at, run.id


def conversion_from_event(event: Any, checkpoints: dict[int, Any]) -> Conversion:
    """The `Conversion` a `checkpoint.convert` event records; `checkpoints` (by id) names the file
    a `registry convert` wrote when it is known."""
    details = event.details
    in_memory = bool(details.get("in_memory")) or event.subject.startswith("run ")
    if in_memory:
        target, checkpoint_id = None, details.get("checkpoint_id")
    else:
        checkpoint_id = details.get("id")
        known = checkpoints.get(checkpoint_id)
        target = known.path if known is not None else event.subject.removeprefix("checkpoint ")
    return Conversion(
        at=event.at, source=details.get("source"), source_fingerprint=details.get("source_fingerprint"),
        target=target, variant=event.variant or details.get("target"), method=details.get("method"),
        exact=details.get("exact"), in_memory=in_memory, checkpoint_id=checkpoint_id,
        run_id=details.get("run_id"), who=event.who, host=event.host,
    )


def conversions(reg: Any, since: datetime | None = None, variant: str | None = None,
                checkpoints: dict[int, Any] | None = None) -> list[Conversion]:
    """Every recorded conversion (oldest first) since `since` whose result is of `variant`."""
    if checkpoints is None:
        checkpoints = {c.id: c for c in reg.list_checkpoints()}
    return [conversion_from_event(e, checkpoints) for e in reg.events(since=since, variant=variant)
            if e.action == CONVERT_ACTION]


def _graph(reg: Any) -> _Graph:
    checkpoints = {c.id: c for c in reg.list_checkpoints()}
    runs = {r.id: r for r in reg.list_runs()}
    graph = _Graph(runs=runs, checkpoints=checkpoints, conversions=conversions(reg, checkpoints=checkpoints))
    for version_id in {r.schema_version_id for r in runs.values() if r.schema_version_id is not None}:
        try:
            graph.versions[version_id] = reg.get_schema_version(version_id).version
        except UsageError:  # a version id no longer in the store: shown as unknown
            pass
    return graph


# --- the questions ----------------------------------------------------------------------------


def check_filters(reg: Any, variant: str | None = None, family: str | None = None) -> None:
    """Refuse a filter that names nothing registered (a typo would otherwise answer "no runs").

    Raises `UsageError` (exit 2) for an unknown variant or a family without registered variants.
    """
    if variant is not None:
        reg.require_variant(variant)
    if family is not None and not reg.list_variants(family):
        raise UsageError(f"no registered variant of family {family!r}",
                         hint="`registry variants list` shows the registered variants")


def find_run(reg: Any, run_id: str) -> Any:
    """The run with id `run_id`, or the only one whose id starts with it (at least 4 characters).

    Raises `UsageError` (exit 2) for an unknown or ambiguous id.
    """
    run = reg.get_run(run_id)
    if run is not None:
        return run
    found = [r for r in reg.list_runs() if len(run_id) >= 4 and r.id.startswith(run_id)]
    if len(found) == 1:
        return found[0]
    if found:
        raise UsageError(f"run id {run_id!r} is ambiguous: {', '.join(r.id for r in found[:5])}",
                         hint="give more characters of the id")
    raise UsageError(f"unknown run {run_id!r}", hint="`registry runs list` shows the runs")


def list_runs(reg: Any, variant: str | None = None, family: str | None = None,
              since: datetime | None = None) -> list[RunSummary]:
    """The runs of `variant` / `family` started at or after `since`, oldest first.

    Raises `UsageError` for an unknown variant or family (`check_filters`).
    """
    check_filters(reg, variant, family)
    selected = reg.list_runs(variant=variant, family=family, since=since)
    if not selected:
        return []
    graph = _graph(reg)
    return [graph.summary(run.id) for run in selected]


def run_detail(reg: Any, run_id: str) -> RunDetail:
    """The run (`find_run`), its checkpoints, its parents back to the first run and its children."""
    run = find_run(reg, run_id)
    graph = _graph(reg)
    return RunDetail(
        run=graph.summary(run.id),
        checkpoints=[c for c in graph.checkpoints.values() if c.run_id == run.id],
        parents=[graph.summary(p) for p in graph.ancestors(run.id)],
        children=[graph.summary(c) for c in graph.children.get(run.id, [])],
    )


def list_checkpoints(reg: Any, run_id: str | None = None, variant: str | None = None) -> list[tuple[Any, Conversion | None]]:
    """Checkpoints (`CheckpointRecord`), oldest first, each with the conversion that wrote it (or None)."""
    if variant is not None:
        reg.require_variant(variant)
    if run_id is not None:
        run_id = find_run(reg, run_id).id
    records = reg.list_checkpoints(run_id=run_id, variant=variant)
    by_id = {c.id: c for c in records}
    written = {c.checkpoint_id: c for c in conversions(reg, checkpoints=by_id) if not c.in_memory}
    return [(c, written.get(c.id)) for c in records]


def audit(reg: Any, variant: str | None = None, family: str | None = None,
          since: datetime | None = None) -> AuditReport:
    """Which runs used `variant` / `family` since `since`, grouped into resume chains, and the
    conversions whose result is of that variant/family since then.

    A chain lists only the selected runs; its `root` may be a run the filters left out (a resume
    that crossed from another variant, or a first run before `since`). Raises `UsageError` for an
    unknown variant or family.
    """
    check_filters(reg, variant, family)
    selected = {r.id for r in reg.list_runs(variant=variant, family=family, since=since)}
    graph = _graph(reg)
    by_root: dict[str, list[str]] = {}
    for run_id in sorted(selected, key=lambda i: _start_key(graph.runs[i])):
        by_root.setdefault(graph.root(run_id), []).append(run_id)
    chains = []
    for root, members in by_root.items():
        order = [run_id for run_id in graph.chain_order(root) if run_id in selected]
        order += [run_id for run_id in members if run_id not in order]  # only through a cycle
        chains.append(Chain(root, [graph.summary(run_id) for run_id in order]))
    found = [c for c in graph.conversions if since is None or c.at >= since]
    if variant is not None:
        found = [c for c in found if c.variant == variant]
    if family is not None:
        families = {v.name: v.family for v in reg.list_variants(family)}
        found = [c for c in found if c.variant in families]
    return AuditReport(variant, family, since, chains, found)
