"""Grouped differences between two schemas (or module signatures) that a person can act on.

A flat "Missing key(s) / Unexpected key(s)" list of hundreds of names is what made the second
incident look hopeless. Here differences are explained in the order a person would reason:
1. a prefix offset (every checkpoint name carries `model.diffusion_model.`);
2. changed suffixes inside the same module (`.gamma/.beta → .weight`: the CTViT incident);
3. renames explained by one substitution of a name component (`.attn. → .self_attn.`);
4. shape changes, with both shapes;
5. what remains missing or unexpected, summarised by pattern (`layers.{0..3}.0.dsconv.*`).
When substring renames alone turn one schema into the other, `rename_rules` holds them, verified
by applying them.

Vocabulary follows torch's `load_state_dict`: `expected` is the schema a model needs (a registered
version, a target variant), `actual` is what a checkpoint (or the current code) has. "missing" =
expected but absent; "unexpected" = present but not expected.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from .schema import ModuleSignature, Schema


@dataclass(frozen=True)
class DiffGroup:
    kind: str  # "prefix" | "suffix" | "rename" | "shape" | "missing" | "unexpected" | "class" | "added" | "removed"
    summary: str  # one line for people
    count: int  # entries (or modules) affected
    names: tuple[str, ...] = ()  # affected names, expected side where there is one

    def to_json(self) -> dict:
        return {"kind": self.kind, "summary": self.summary, "count": self.count, "names": list(self.names)}


EXPLAINED_WEIGHT = 0.9


@dataclass
class SchemaDiff:
    expected_entries: int
    actual_entries: int
    matching: int  # same name and shape on both sides
    groups: list[DiffGroup] = field(default_factory=list)
    # Names (both sides counted) paired by a prefix offset, a suffix change or a rename: a refactor
    # that renamed everything is still close to its source, not as far as an unrelated model.
    explained: int = 0
    rename_rules: list[tuple[str, str]] = field(default_factory=list)  # verified: they explain everything

    @property
    def identical(self) -> bool:
        return not self.groups

    @property
    def score(self) -> float:
        """Similarity in [0, 1]: the share of both sides' names that are equal (name and shape), with
        names a prefix, suffix or rename group explains counting 0.9 each — close, but 1.0 stays
        reserved for identical schemas."""
        total = self.expected_entries + self.actual_entries
        return 1.0 if total == 0 else min(1.0, (2 * self.matching + EXPLAINED_WEIGHT * self.explained) / total)

    def lines(self, limit: int = 12) -> list[str]:
        shown = [g.summary for g in self.groups[:limit]]
        if len(self.groups) > limit:
            shown.append(f"... and {len(self.groups) - limit} more groups")
        return shown

    def to_json(self) -> dict:
        return {
            "expected_entries": self.expected_entries,
            "actual_entries": self.actual_entries,
            "matching": self.matching,
            "explained": self.explained,
            "score": round(self.score, 6),
            "groups": [g.to_json() for g in self.groups],
            "rename_rules": [list(rule) for rule in self.rename_rules],
        }


# --- name patterns -----------------------------------------------------------------------------


def _render_numbers(values: set[str]) -> str:
    numbers = sorted(int(v) for v in values)
    if len(numbers) == 1:
        return str(numbers[0])
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{{{numbers[0]}..{numbers[-1]}}}"
    return "{" + ",".join(map(str, numbers)) + "}"


def _merge_words(words: Iterable[str]) -> str:
    """`enc_spatial_transformer`, `enc_temporal_transformer` -> `enc_*_transformer` (on `_` tokens)."""
    words = sorted(set(words))
    if len(words) == 1:
        return words[0]
    tokens = [w.split("_") for w in words]
    head = os.path.commonprefix(tokens)
    rest = [t[len(head):] for t in tokens]
    tail = os.path.commonprefix([r[::-1] for r in rest])[::-1]
    if head or tail:
        return "_".join([*head, "*", *tail])
    return "{" + ",".join(words) + "}"


def _join(parts: tuple[str, ...], leaves: frozenset[str]) -> str:
    leaf = next(iter(leaves)) if len(leaves) == 1 else "*"
    return ".".join((*parts, leaf))


def compress_names(names: Iterable[str]) -> list[tuple[str, int]]:
    """Summarise dotted names as patterns with counts, largest first.

    Names are grouped by module (all but the last component) with numeric components folded into
    ranges; patterns that differ in one word fold into `head*tail`; several leaves become `*`.
    """
    leaves_by_module: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for name in names:
        *module, leaf = name.split(".")
        leaves_by_module[tuple(module)].add(leaf)

    # 1. Fold numeric components: same path with digits masked, same leaves.
    folded: dict[tuple, list[tuple[str, ...]]] = defaultdict(list)
    for module, leaves in leaves_by_module.items():
        masked = tuple("#" if part.isdigit() else part for part in module)
        folded[(masked, frozenset(leaves))].append(module)
    patterns = [
        (
            tuple(_render_numbers({m[i] for m in modules}) if part == "#" else part for i, part in enumerate(masked)),
            leaves,
            len(modules) * len(leaves),
        )
        for (masked, leaves), modules in folded.items()
    ]

    # 2. Fold patterns that differ in exactly one component, biggest families first.
    families: dict[tuple, list[int]] = defaultdict(list)
    for index, (parts, leaves, _) in enumerate(patterns):
        for i in range(len(parts)):
            families[(i, parts[:i], parts[i + 1 :], leaves)].append(index)
    counts: dict[str, int] = defaultdict(int)
    taken: set[int] = set()
    for (i, before, after, leaves), members in sorted(families.items(), key=lambda kv: -len(kv[1])):
        members = [m for m in members if m not in taken]
        if len(members) < 2:
            continue
        word = _merge_words(patterns[m][0][i] for m in members)
        counts[_join(before + (word,) + after, leaves)] += sum(patterns[m][2] for m in members)
        taken.update(members)
    for index, (parts, leaves, count) in enumerate(patterns):
        if index not in taken:
            counts[_join(parts, leaves)] += count
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _pattern_summary(names: list[str]) -> str:
    patterns = compress_names(names)
    shown = [f"{p} ({n} entr{'y' if n == 1 else 'ies'})" for p, n in patterns[:4]]
    if len(patterns) > 4:
        shown.append(f"... {len(patterns) - 4} more patterns")
    return "; ".join(shown)


def _module_patterns(paths: Iterable[str], limit: int = 3) -> str:
    """Module paths (no leaf) summarised as patterns: `enc_*_transformer.layers.{0..3}.1.norm`."""
    patterns = compress_names(f"{p}.x" for p in paths)  # a dummy leaf, so the whole path is the module
    return "; ".join(p.removesuffix(".x") for p, _ in patterns[:limit])


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


# --- schema diff -------------------------------------------------------------------------------


def _common_prefix(names: list[str]) -> str:
    """Longest dotted prefix (ending in '.') shared by every name."""
    if not names:
        return ""
    first = names[0].split(".")[:-1]
    length = len(first)
    for name in names[1:]:
        parts = name.split(".")[:-1]
        length = min(length, len(parts))
        for i in range(length):
            if parts[i] != first[i]:
                length = i
                break
    return ".".join(first[:length]) + "." if length else ""


def _prefix_offset(expected: Schema, actual: Schema) -> tuple[str, str] | None:
    """(prefix, side) when one side is the other under a prefix: side is 'actual' or 'expected'."""
    for side, longer, shorter in (("actual", actual, expected), ("expected", expected, actual)):
        prefix = _common_prefix(longer.names)
        if prefix and len(longer) and longer.under(prefix) == shorter:
            return prefix, side
    return None


def apply_renames(schema: Schema, rules: list[tuple[str, str]]) -> Schema:
    """The schema with every substring rule OLD→NEW applied to each name, in order."""
    from .schema import TensorEntry

    def rename(name: str) -> str:
        for old, new in rules:
            name = name.replace(old, new)
        return name

    return Schema(TensorEntry(rename(e.name), e.shape, e.dtype) for e in schema)


def _rule_text(old: str, new: str, positions: set[str]) -> tuple[str, str]:
    """Component rename as a substring rule that cannot hit a longer component."""
    if positions == {"inner"}:
        return f".{old}.", f".{new}."
    if positions == {"first"}:
        return f"{old}.", f"{new}."
    if positions == {"last"}:
        return f".{old}", f".{new}"
    return old, new


def diff_schemas(
    expected: Schema, actual: Schema, *, missing_label: str = "missing", unexpected_label: str = "unexpected"
) -> SchemaDiff:
    """Grouped differences turning `actual` into `expected` (see the module docstring).

    The labels name the leftover groups: a drift report, which turns the registered schema into
    the current build, calls them "added" and "no longer built".
    """
    exp, act = expected.by_name, actual.by_name
    matching = sum(1 for n, e in exp.items() if n in act and act[n].shape == e.shape)
    diff = SchemaDiff(len(expected), len(actual), matching)
    if expected == actual or (matching == len(exp) == len(act)):
        return diff

    offset = _prefix_offset(expected, actual)
    if offset:
        prefix, side = offset
        where = "checkpoint" if side == "actual" else "expected schema"
        diff.groups.append(
            DiffGroup("prefix", f"every {where} entry carries the extra prefix `{prefix}`", len(act), ())
        )
        diff.explained = len(exp) + len(act)
        return diff

    missing = {n for n in exp if n not in act}
    unexpected = {n for n in act if n not in exp}

    # Suffix changes within one module: {gamma, beta} -> {weight}.
    def by_module(names: set[str]) -> dict[str, set[str]]:
        grouped: dict[str, set[str]] = defaultdict(set)
        for n in names:
            module, _, leaf = n.rpartition(".")
            grouped[module].add(leaf)
        return grouped

    missing_mod, unexpected_mod = by_module(missing), by_module(unexpected)
    suffix_groups: dict[tuple, list[str]] = defaultdict(list)
    for module in sorted(set(missing_mod) & set(unexpected_mod)):
        key = (tuple(sorted(unexpected_mod[module])), tuple(sorted(missing_mod[module])))
        suffix_groups[key].append(module)
    for (old_leaves, new_leaves), modules in sorted(suffix_groups.items(), key=lambda kv: -len(kv[1])):
        names = [f"{m}.{leaf}" for m in modules for leaf in new_leaves]
        where = _module_patterns(modules)
        count = len(modules) * (len(old_leaves) + len(new_leaves))
        diff.groups.append(
            DiffGroup(
                "suffix",
                f"{count} entries differ only by suffix `.{'/.'.join(old_leaves)}` → `.{'/.'.join(new_leaves)}` "
                f"in {len(modules)} module{'s' if len(modules) > 1 else ''}: {where}",
                count,
                tuple(sorted(names)),
            )
        )
        diff.explained += count
        for m in modules:
            missing -= {f"{m}.{leaf}" for leaf in new_leaves}
            unexpected -= {f"{m}.{leaf}" for leaf in old_leaves}

    # Renames of one name component, with equal shapes on both sides.
    pairs = _component_renames(missing, unexpected, exp, act)
    applied: list[tuple[str, str]] = []
    for (old, new, positions), matched in pairs:
        rule = _rule_text(old, new, positions)
        applied.append(rule)
        names = tuple(sorted(m for _, m in matched))
        diff.groups.append(
            DiffGroup(
                "rename",
                f"{len(matched)} entries explained by renaming `{rule[0]}` → `{rule[1]}`: {_pattern_summary(list(names))}",
                len(matched),
                names,
            )
        )
        diff.explained += 2 * len(matched)
        for u, m in matched:
            unexpected.discard(u)
            missing.discard(m)

    shape_changes = sorted(n for n in exp if n in act and act[n].shape != exp[n].shape)
    if shape_changes:
        by_change: dict[tuple, list[str]] = defaultdict(list)
        for n in shape_changes:
            by_change[(act[n].shape, exp[n].shape)].append(n)
        for (old_shape, new_shape), names in sorted(by_change.items(), key=lambda kv: -len(kv[1])):
            diff.groups.append(
                DiffGroup(
                    "shape",
                    f"{len(names)} shape change{'s' if len(names) > 1 else ''} "
                    f"{_shape_text(old_shape)} → {_shape_text(new_shape)}: {_pattern_summary(names)}",
                    len(names),
                    tuple(names),
                )
            )
    if missing:
        names = sorted(missing)
        diff.groups.append(DiffGroup("missing", f"{len(names)} {missing_label}: {_pattern_summary(names)}", len(names), tuple(names)))
    if unexpected:
        names = sorted(unexpected)
        diff.groups.append(
            DiffGroup("unexpected", f"{len(names)} {unexpected_label}: {_pattern_summary(names)}", len(names), tuple(names))
        )

    only_renames = all(g.kind == "rename" for g in diff.groups)
    if only_renames and applied and apply_renames(actual, applied) == expected:
        diff.rename_rules = applied
    return diff


def _component_renames(
    missing: set[str], unexpected: set[str], exp: dict, act: dict
) -> list[tuple[tuple[str, str, frozenset[str]], list[tuple[str, str]]]]:
    """Rules `old component → new component` pairing unexpected with missing names of equal shape.

    Names are bucketed by (position, the name with that component masked, shape), so the search is
    linear in the number of names times their depth. Rules are taken greedily, most pairs first.
    """
    buckets: dict[tuple, list[str]] = defaultdict(list)
    for m in missing:
        parts = m.split(".")
        for i in range(len(parts)):
            buckets[(i, tuple(parts[:i]), tuple(parts[i + 1 :]), exp[m].shape)].append(m)
    candidates: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for u in unexpected:
        parts = u.split(".")
        for i in range(len(parts)):
            for m in buckets.get((i, tuple(parts[:i]), tuple(parts[i + 1 :]), act[u].shape), ()):
                position = "first" if i == 0 else "last" if i == len(parts) - 1 else "inner"
                candidates[(parts[i], m.split(".")[i])].append((u, m, position))
    rules = []
    used_u: set[str] = set()
    used_m: set[str] = set()
    for (old, new), found in sorted(candidates.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        matched = []
        positions = set()
        for u, m, position in sorted(found):
            if u in used_u or m in used_m:
                continue
            matched.append((u, m))
            positions.add(position)
        if not matched:
            continue
        used_u.update(u for u, _ in matched)
        used_m.update(m for _, m in matched)
        rules.append(((old, new, frozenset(positions)), matched))
    return rules


# --- module signature diff ---------------------------------------------------------------------


def _short_class(qualified: str) -> str:
    return qualified.rsplit(".", 1)[-1]


def diff_signatures(expected: ModuleSignature, actual: ModuleSignature) -> list[DiffGroup]:
    """Modules whose class changed, grouped by (old class → new class), plus added/removed modules."""
    exp, act = expected.as_dict(), actual.as_dict()
    groups: list[DiffGroup] = []
    changed: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(set(exp) & set(act)):
        if exp[path] != act[path]:
            changed[(exp[path], act[path])].append(path)
    for (old, new), paths in sorted(changed.items(), key=lambda kv: -len(kv[1])):
        where = _module_patterns(paths)
        groups.append(
            DiffGroup(
                "class",
                f"{len(paths)} module{'s' if len(paths) > 1 else ''} changed class "
                f"{_short_class(old)} → {_short_class(new)} ({old} → {new}): {where or '(root)'}",
                len(paths),
                tuple(paths),
            )
        )
    for kind, paths in (("removed", sorted(set(exp) - set(act))), ("added", sorted(set(act) - set(exp)))):
        if paths:
            where = _module_patterns(paths)
            groups.append(DiffGroup(kind, f"{len(paths)} module{'s' if len(paths) > 1 else ''} {kind}: {where}", len(paths), tuple(paths)))
    return groups
