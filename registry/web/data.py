"""What each page of the web view shows, as plain dicts with the command line's `--json` field names.

The HTML pages, the JSON API and the static report all render these; nothing here knows about
HTTP or files. Every function reads the registry only (no writes), through `store.browse` for
anything that grows with the number of runs and checkpoints.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from registry.errors import UsageError
from registry.schema import short_form
from registry.store import browse

from .graph import RunForest, build_graph
from .svg import render_svg

PAGE_SIZE = 100
CHAINS_PER_PAGE = 50
UNMATCHED_PER_PAGE = 25  # each group reads one file header for its nearest build


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _not_found(what: str) -> UsageError:
    return UsageError(f"no {what} in this registry")


# --- variants ----------------------------------------------------------------------------------


def variants(reg: Any, page: int = 1) -> dict[str, Any]:
    found = browse.variants_overview(reg, page=page, size=PAGE_SIZE)
    return {"page": found.number, "pages": found.pages, "total": found.total,
            "variants": [v.to_json() for v in found.items]}


def variant(reg: Any, variant_id: int) -> dict[str, Any]:
    """The variant, its schema versions over time and the grouped diff between consecutive ones."""
    from registry.diff import diff_schemas, diff_signatures

    name = browse.variant_name(reg, variant_id)
    if name is None:
        raise _not_found(f"variant with id {variant_id}")
    record = reg.require_variant(name)
    versions = reg.schema_versions(name)
    transitions = []
    for before, after in zip(versions, versions[1:]):
        diff = None
        if before.fingerprint != after.fingerprint:
            diff = diff_schemas(reg.load_schema(after.id), reg.load_schema(before.id),
                                missing_label="added", unexpected_label="removed")
        modules = diff_signatures(reg.load_signature(before.id), reg.load_signature(after.id)) \
            if before.signature_hash != after.signature_hash else []
        packages = {k: [before.package_versions.get(k), after.package_versions.get(k)]
                    for k in sorted(set(before.package_versions) | set(after.package_versions))
                    if before.package_versions.get(k) != after.package_versions.get(k)}
        transitions.append({"from_version": before.version, "to_version": after.version,
                            "schema_diff": diff.to_json() if diff else None,
                            "schema_lines": diff.lines(limit=30) if diff else [],
                            "module_changes": [g.to_json() for g in modules],
                            "package_changes": packages})
    return {"variant": {**record.as_dict(), "id": variant_id}, "versions": [v.as_dict() for v in versions],
            "transitions": transitions}


# --- lineage -----------------------------------------------------------------------------------


def _cached(cache: dict | None, key: Any, compute: Any) -> Any:
    """`compute()`, kept in `cache` (a dict the static report keeps across its pages) when given."""
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _conversions(reg: Any, cache: dict | None = None) -> list[Any]:
    return _cached(cache, "conversions", lambda: _read_conversions(reg))


def _read_conversions(reg: Any) -> list[Any]:
    """The audit's `Conversion` records: one query for the events and one for the files they wrote."""
    from registry.audit import conversion_from_event

    events = [SimpleNamespace(**e) for e in browse.conversion_events(reg)]
    ids = [e.details.get("id") for e in events if e.details.get("id") is not None]
    files = browse.checkpoints_by_id(reg, ids)
    return [conversion_from_event(e, files) for e in events]


def _forest(reg: Any, conversions: list[Any], cache: dict | None = None) -> RunForest:
    return _cached(cache, "forest", lambda: _read_forest(reg, conversions))


def _read_forest(reg: Any, conversions: list[Any]) -> RunForest:
    """Every run's parent; a run resumed from a converted file descends from the source's writer."""
    sources = browse.checkpoints_by_path(reg, [c.source for c in conversions if not c.in_memory and c.source])
    writers = {c.checkpoint_id: sources[c.source].run_id for c in conversions
               if not c.in_memory and c.checkpoint_id is not None and c.source in sources and sources[c.source].run_id}
    return RunForest(browse.run_links(reg), writers)


def _day(text: str | None, option: str) -> datetime | None:
    if not text:
        return None
    from registry.audit import parse_since

    return parse_since(text, option)


def lineage(reg: Any, *, page: int = 1, variant: str | None = None, family: str | None = None,
            user: str | None = None, job: str | None = None, since: str | None = None,
            until: str | None = None, cache: dict | None = None) -> dict[str, Any]:
    """Resume chains (newest first), each with its runs' variants, users and jobs; filtered by any run."""
    start, end = _day(since, "since"), _day(until, "until")
    conversions = _conversions(reg, cache)
    forest = _forest(reg, conversions, cache)

    def selected(link: Any) -> bool:
        return ((not variant or link.variant == variant) and (not family or link.family == family)
                and (not user or link.user == user) and (not job or job in (link.scheduler_job_id or ""))
                and (start is None or link.started_at >= start) and (end is None or link.started_at <= end))

    chains: dict[str, list[Any]] = {}
    for link in forest.links.values():
        chains.setdefault(forest.root_of(link.id), []).append(link)
    rows = []
    for root, members in chains.items():
        if not any(selected(m) for m in members):
            continue
        last = max(members, key=lambda m: m.started_at)
        rows.append({"root": root, "runs": len(members), "variants": sorted({m.variant for m in members}),
                     "families": sorted({m.family for m in members}), "users": sorted({m.user for m in members}),
                     "scheduler_job_ids": sorted({m.scheduler_job_id for m in members if m.scheduler_job_id}),
                     "started_at": _iso(min(m.started_at for m in members)), "last_started_at": _iso(last.started_at),
                     "last_status": last.status})
    rows.sort(key=lambda r: (r["last_started_at"] or "", r["root"]), reverse=True)
    number = max(1, page)
    size = CHAINS_PER_PAGE
    return {"page": number, "pages": max(1, -(-len(rows) // size)), "total": len(rows),
            "filters": {"variant": variant, "family": family, "user": user, "job": job, "since": since,
                        "until": until},
            "chains": rows[(number - 1) * size: number * size]}


def chain(reg: Any, root: str, links: Any, *, full: bool = False, cache: dict | None = None) -> dict[str, Any]:
    """The graph of the resume chain that starts at run `root` (collapsed unless `full`), and its runs."""
    conversions = _conversions(reg, cache)
    forest = _forest(reg, conversions, cache)
    if root not in forest.links:
        raise _not_found(f"run {root!r}")
    root = forest.root_of(root)
    order = forest.chain(root)
    runs = browse.runs_by_id(reg, order)
    checkpoints = browse.checkpoints_of_runs(reg, order)
    targets = browse.checkpoints_by_id(reg, [c.checkpoint_id for c in conversions
                                             if not c.in_memory and c.checkpoint_id is not None])
    graph = build_graph(root, forest, runs, checkpoints, conversions, targets, links, collapse=not full)
    table = [{"id": r, "variant": runs[r].variant, "status": runs[r].status, "user": runs[r].user,
              "scheduler_job_id": runs[r].scheduler_job_id, "started_at": _iso(runs[r].started_at),
              "parent_run_id": forest.parent.get(r), "checkpoints": len(checkpoints.get(r, [])),
              "last_step": max((c.step for c in checkpoints.get(r, []) if c.step is not None), default=None)}
             for r in order if r in runs]
    return {"root": root, "full": full, "graph": graph.to_json(), "svg": render_svg(graph), "runs": table}


def run(reg: Any, run_id: str, cache: dict | None = None) -> dict[str, Any]:
    """The run (a unique prefix of at least 4 characters works), its checkpoints, parent and children."""
    from registry.audit import find_run

    record = find_run(reg, run_id)
    conversions = _conversions(reg, cache)
    forest = _forest(reg, conversions, cache)
    children = forest.children.get(record.id, [])
    written = browse.checkpoints_of_runs(reg, [record.id]).get(record.id, [])
    resumed = browse.checkpoints_by_id(reg, [record.resumed_from_checkpoint_id]) \
        if record.resumed_from_checkpoint_id else {}
    return {"run": record.as_dict(), "root": forest.root_of(record.id), "parent_run_id": forest.parent.get(record.id),
            "children": children, "checkpoints": [c.as_dict() for c in written],
            "resumed_from": next((c.as_dict() for c in resumed.values()), None),
            "conversion": next((c.to_json() for c in conversions if c.in_memory and c.run_id == record.id), None)}


# --- checkpoints -------------------------------------------------------------------------------


def checkpoint(reg: Any, checkpoint_id: int, cache: dict | None = None) -> dict[str, Any]:
    """Path, format, layout, step, match evidence, the run that wrote it, the runs resumed from it,
    the conversions it went through (as source or result)."""
    found = browse.checkpoints_by_id(reg, [checkpoint_id])
    if checkpoint_id not in found:
        raise _not_found(f"checkpoint with id {checkpoint_id}")
    ckpt = found[checkpoint_id]
    evidence: dict[str, Any]
    if ckpt.schema_version_id is not None:
        version = reg.get_schema_version(ckpt.schema_version_id)
        evidence = {"status": "exact", "variant": version.variant, "schema_version": version.version,
                    "fingerprint": version.fingerprint, "prefix": ckpt.prefix}
    else:
        found_nearest = _cached(cache, ("nearest", ckpt.fingerprint), lambda: nearest(reg, ckpt.path))
        evidence = {"status": "no matching build", **found_nearest}
    conversions = [c.to_json() for c in _conversions(reg, cache)
                   if c.checkpoint_id == checkpoint_id or (c.source and c.source == ckpt.path)]
    resumed_by = browse.runs_resumed_from(reg, checkpoint_id)
    return {"checkpoint": ckpt.as_dict(), "short_fingerprint": short_form(ckpt.fingerprint), "evidence": evidence,
            "written_by": ckpt.run_id, "resumed_by": resumed_by, "conversions": conversions}


def nearest(reg: Any, path: str) -> dict[str, Any]:
    """The nearest registered schema to the file at `path` and the grouped diff, read from the file's
    header (the registry stores a checkpoint's fingerprint, not its entries)."""
    from registry.diff import diff_schemas
    from registry.errors import RegistryError
    from registry.readers import read_checkpoint

    if not os.path.exists(path):
        return {"nearest": None, "note": "the file is not readable from here, so its nearest build is unknown"}
    try:
        info = read_checkpoint(path)
    except RegistryError as exc:
        return {"nearest": None, "note": exc.message}
    found = reg.nearest_candidates(info.schema, limit=1)
    if not found:
        return {"nearest": None, "note": "no registered schema is near"}
    version, _ = found[0]
    diff = diff_schemas(reg.load_schema(version.id), info.schema)
    return {"nearest": {"variant": version.variant, "schema_version": version.version,
                        "fingerprint": version.fingerprint, "score": round(diff.score, 6),
                        "diff": diff.to_json(), "lines": diff.lines(limit=12)}}


def unmatched(reg: Any, page: int = 1, *, with_nearest: bool = True) -> dict[str, Any]:
    """Checkpoints recorded with no loading build, one group per schema, with the nearest variant."""
    found = browse.unmatched_groups(reg, page=page, size=UNMATCHED_PER_PAGE)
    groups = []
    for group in found.items:
        row = {"fingerprint": group.fingerprint, "short_fingerprint": short_form(group.fingerprint),
               "checkpoints": group.checkpoints, "bytes": group.bytes, "example_path": group.example_path,
               "example_id": group.newest_id}
        if with_nearest:
            row.update(nearest(reg, group.example_path))
        groups.append(row)
    return {"page": found.number, "pages": found.pages, "total": found.total, "groups": groups}


def search(reg: Any, text: str) -> dict[str, Any]:
    found = browse.search(reg, text)
    ids = {name: browse.variant_id(reg, name) for name in found["variants"]}
    return {"query": text,
            "variants": [{"name": n, "id": ids[n]} for n in found["variants"]],
            "schema_versions": found["schema_versions"],
            "checkpoints": [c.as_dict() for c in found["checkpoints"]]}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
