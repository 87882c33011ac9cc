"""The lineage graph of one resume chain: runs, the checkpoints that link them, conversions.

A chain is a first run and every run resumed from it, directly or not. A `registry convert` in
between does not break it: the converted file's writer is taken to be the run that wrote the
source file, so the run resumed from the converted file descends from that run.

The graph shows each run, the checkpoints other runs resumed from, the files conversions wrote
and read, and each run's last checkpoint; a run's other checkpoints are counted in its label.
Long straight stretches of resumes (each run resumed exactly once, with no conversion) collapse
into one node that links to the expanded graph, so a chain of 200 runs stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

# A straight stretch of at least this many runs collapses (its first and last run stay visible).
COLLAPSE_MIN_RUNS = 5


@dataclass
class Node:
    id: str  # "run-<id>", "checkpoint-<id>" or "collapsed-<first run id>"
    kind: str  # "run" | "checkpoint" | "collapsed"
    label: str
    detail: str
    href: str | None
    status: str = ""


@dataclass
class Edge:
    source: str
    target: str
    label: str = ""
    kind: str = "wrote"  # "wrote" | "resumed" | "converted" | "collapsed"


@dataclass
class LineageGraph:
    root: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    collapsed_runs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "collapsed_runs": self.collapsed_runs,
                "nodes": [n.__dict__ for n in self.nodes], "edges": [e.__dict__ for e in self.edges]}


class RunForest:
    """Parents and children of every run, from `browse.run_links` (one query for the whole registry)."""

    def __init__(self, links: Iterable[Any], converted_writers: dict[int, str] | None = None):
        self.links = {link.id: link for link in links}
        self.children: dict[str, list[str]] = {}
        converted_writers = converted_writers or {}
        self.parent: dict[str, str | None] = {}
        self._roots: dict[str, str] | None = None
        for link in self.links.values():  # oldest first, so siblings stay in start order
            parent = link.parent_run_id
            if parent is None and link.resumed_from_checkpoint_id is not None:
                parent = converted_writers.get(link.resumed_from_checkpoint_id)
            if parent not in self.links or parent == link.id:
                parent = None
            self.parent[link.id] = parent
            if parent is not None:
                self.children.setdefault(parent, []).append(link.id)

    def root_of(self, run_id: str) -> str:
        """The first run of `run_id`'s chain (a parent cycle stops the walk)."""
        if self._roots is None:
            self._roots = {}
        found = self._roots.get(run_id)
        if found is not None:
            return found
        path, seen = [run_id], {run_id}
        while (parent := self.parent.get(path[-1])) is not None and parent not in seen:
            if parent in self._roots:  # the rest of the walk is known: stop there
                path.append(parent)
                break
            seen.add(parent)
            path.append(parent)
        root = self._roots.get(path[-1], path[-1])
        for member in path:
            self._roots[member] = root
        return root

    def roots(self) -> list[str]:
        return [run_id for run_id, parent in self.parent.items() if parent is None]

    def chain(self, root: str) -> list[str]:
        """The runs of the chain from `root`, depth first, siblings by start time (as `registry audit`)."""
        from registry.audit import resume_order

        return resume_order(root, self.children)


def _straight_stretches(order: list[str], forest: RunForest, converted: set[str]) -> list[list[str]]:
    """Maximal runs r1..rn where each r_i's only child is r_{i+1} and no resume converts."""
    stretches, current = [], []
    for run_id in order:
        if current and forest.parent.get(run_id) == current[-1] and len(forest.children.get(current[-1], [])) == 1 \
                and run_id not in converted:
            current.append(run_id)
            continue
        if len(current) >= COLLAPSE_MIN_RUNS:
            stretches.append(current)
        current = [run_id]
    if len(current) >= COLLAPSE_MIN_RUNS:
        stretches.append(current)
    return stretches


def _steps(checkpoints: list[Any]) -> str:
    steps = [c.step for c in checkpoints if c.step is not None]
    if not steps:
        return f"{len(checkpoints)} checkpoint{'s' * (len(checkpoints) != 1)}"
    return f"{len(checkpoints)} checkpoint{'s' * (len(checkpoints) != 1)}, steps {min(steps)}–{max(steps)}"


def build_graph(root: str, forest: RunForest, runs: dict[str, Any], checkpoints: dict[str, list[Any]],
                conversions: list[Any], targets: dict[int, Any], links: Any, *, collapse: bool = True) -> LineageGraph:
    """The graph of the chain from `root`.

    `runs` are `RunRecord`s by id, `checkpoints` each run's `CheckpointRecord`s, `conversions` the
    audit's `Conversion`s (file and in-memory), `targets` the files conversions wrote (by id), and
    `links` the page linker (`run`, `checkpoint`, `chain`).
    """
    order = forest.chain(root)
    in_memory = {c.run_id: c for c in conversions if c.in_memory and c.run_id}
    file_conversions = [c for c in conversions if not c.in_memory and c.checkpoint_id is not None]
    converted_files = {c.checkpoint_id for c in file_conversions}
    # A resume through a conversion is never collapsed: it is what the lineage is read for.
    converted_resumes = set(in_memory) | {r for r in order if r in runs
                                          and runs[r].resumed_from_checkpoint_id in converted_files}
    graph = LineageGraph(root)
    hidden: set[str] = set()
    collapsed_into: dict[str, str] = {}
    if collapse:
        for stretch in _straight_stretches(order, forest, converted_resumes):
            middle = stretch[1:-1]
            node_id = f"collapsed-{middle[0]}"
            hidden.update(middle)
            for run_id in middle:
                collapsed_into[run_id] = node_id
            steps = [c.step for r in middle for c in checkpoints.get(r, []) if c.step is not None]
            span = f", steps {min(steps)}–{max(steps)}" if steps else ""
            graph.nodes.append(Node(node_id, "collapsed", f"{len(middle)} resumed runs",
                                    f"straight resumes{span} · expand", links.chain(root, full=True, anchor=f"run-{middle[0]}")))
            graph.collapsed_runs += len(middle)

    by_path = {c.path: c for run_id in order for c in checkpoints.get(run_id, [])}
    resumed_from = {runs[r].resumed_from_checkpoint_id for r in order if r in runs and runs[r].resumed_from_checkpoint_id}
    converted_sources = {c.source for c in file_conversions}
    shown: dict[int, Any] = {}
    for run_id in order:
        if run_id in hidden or run_id not in runs:
            continue
        run = runs[run_id]
        written = checkpoints.get(run_id, [])
        graph.nodes.append(Node(f"run-{run_id}", "run", f"run {run_id[:8]} · {run.variant}",
                                f"{run.user}@{run.host}{' · job ' + run.scheduler_job_id if run.scheduler_job_id else ''}"
                                f" · {_steps(written)}", links.run(run_id), run.status))
        keep = [c for c in written if c.id in resumed_from or c.path in converted_sources]
        if written and written[-1] not in keep:
            keep.append(written[-1])
        for ckpt in keep:
            shown[ckpt.id] = ckpt
            graph.nodes.append(_checkpoint_node(ckpt, links))
            graph.edges.append(Edge(f"run-{run_id}", f"checkpoint-{ckpt.id}", "wrote", "wrote"))
    for conversion in file_conversions:
        source = by_path.get(conversion.source)
        if source is None or source.id not in shown:
            continue
        target = targets.get(conversion.checkpoint_id)
        if target is None:
            continue
        if target.id not in shown:
            shown[target.id] = target
            graph.nodes.append(_checkpoint_node(target, links))
        graph.edges.append(Edge(f"checkpoint-{source.id}", f"checkpoint-{target.id}",
                                f"converted ({conversion.method or 'converter'})", "converted"))
    for run_id in order:
        if run_id in hidden or run_id not in runs or run_id == root:
            continue
        run = runs[run_id]
        parent = forest.parent.get(run_id)
        label = "resumed"
        if run_id in in_memory:
            label = f"resumed, converted in memory ({in_memory[run_id].method or 'converter'})"
        if run.resumed_from_checkpoint_id in shown:
            graph.edges.append(Edge(f"checkpoint-{run.resumed_from_checkpoint_id}", f"run-{run_id}", label, "resumed"))
        elif parent in collapsed_into:
            graph.edges.append(Edge(collapsed_into[parent], f"run-{run_id}", label, "resumed"))
        elif parent is not None:
            graph.edges.append(Edge(f"run-{parent}", f"run-{run_id}", label, "resumed"))
    for node_id in dict.fromkeys(collapsed_into.values()):
        first = node_id.removeprefix("collapsed-")
        parent = forest.parent.get(first)
        resumed = runs[first].resumed_from_checkpoint_id if first in runs else None
        source = f"checkpoint-{resumed}" if resumed in shown else f"run-{parent}"
        graph.edges.append(Edge(source, node_id, "resumed", "collapsed"))
    return graph


def _checkpoint_node(ckpt: Any, links: Any) -> Node:
    name = ckpt.path.rsplit("/", 1)[-1]
    step = f"step {ckpt.step}" if ckpt.step is not None else "step ?"
    build = ckpt.variant or "no matching build"
    return Node(f"checkpoint-{ckpt.id}", "checkpoint", name, f"{step} · {build}", links.checkpoint(ckpt.id))
