"""What one build says: its distance to the checkpoint, and the values a perturbation proposes.

Used by `inference_search`. The distance puts the top-level structure first (how many blocks),
then the entries that differ; a perturbation of an integer field (x -> x2) turns every dimension or
numbered-name count that moved into a law solved for the checkpoint's value.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping

from .inference_space import name_pattern

Shapes = dict[str, tuple[int, ...]]


def containers(shapes: Mapping[str, Any]) -> tuple[Counter, Counter]:
    """How many numbered children each container has: top-level ones (`blocks`, `h`) and deeper ones
    (`blocks.#.layers`), counted over every instance. Returns (top level, deeper) Counters."""
    top: Counter = Counter()
    deeper: Counter = Counter()
    seen: set[str] = set()
    for name in shapes:
        parts = name.split(".")
        numbered = 0
        for index, part in enumerate(parts[:-1]):
            if not part.isdigit():
                continue
            instance = ".".join(parts[: index + 1])
            if instance not in seen:
                seen.add(instance)
                pattern = name_pattern(".".join(parts[:index]) + ".") if index else ""
                (deeper if numbered else top)[pattern] += 1
            numbered += 1
    return top, deeper


def _count_gap(mine: Counter, theirs: Counter) -> int:
    return sum(abs(mine[key] - theirs[key]) for key in mine.keys() | theirs.keys())


def schema_distance(shapes: Shapes, target: Shapes, target_containers: tuple[Counter, Counter]) -> tuple[float, ...]:
    """How far a build is from the checkpoint, compared in this order:
    1. numbered children of top-level containers (how many blocks): the top structure first, or a
    model too small everywhere would look closer than the right structure with wrong widths;
    2. entries missing + unexpected + reshaped (0: exact fingerprint); then, to break ties, 3. the
    gap in numbered children of deeper containers (layers per block) and 4. how far the reshaped
    entries' dimensions are off (log2)."""
    missing = sum(1 for name in target if name not in shapes)
    unexpected = 0
    reshaped = 0
    off = 0.0
    for name, shape in shapes.items():
        wanted = target.get(name)
        if wanted is None:
            unexpected += 1
        elif wanted != shape:
            reshaped += 1
            if len(wanted) != len(shape):
                off += 8.0
            else:
                off += sum(abs(math.log2(max(a, 1) / max(b, 1))) for a, b in zip(shape, wanted))
    top, deeper = containers(shapes)
    return (float(_count_gap(top, target_containers[0])), float(missing + unexpected + reshaped),
            float(_count_gap(deeper, target_containers[1])), off)


def dimension_proposals(x: int, x2: int, base: Shapes, moved: Shapes, target: Shapes, votes: Counter) -> None:
    """Solve dim = a*x + b (or dim = c*x**k) for every dimension that moved between x and x2."""
    for name, before in base.items():
        after, wanted = moved.get(name), target.get(name)
        if after is None or wanted is None or not (len(before) == len(after) == len(wanted)):
            continue
        for b, p, t in zip(before, after, wanted):
            if b == p or t == b:
                continue
            step, delta = p - b, x2 - x
            if ((t - b) * delta) % step == 0:
                votes[x + (t - b) * delta // step] += 1
            elif b > 0 and p > 0 and x > 0 and x2 > 0 and x2 != x:
                power = math.log(p / b) / math.log(x2 / x)
                if power > 1.5 and abs(power - round(power)) < 1e-6:
                    k = round(power)
                    value = round(x * (t / b) ** (1 / k))
                    if value > 0 and b * value**k == t * x**k:
                        votes[value] += 1


def count_proposals(x: int, x2: int, base: Shapes, moved: Shapes, target_patterns: Counter, votes: Counter) -> None:
    """Solve count = a*x + b for every numbered-name pattern whose count moved between x and x2."""
    before = Counter(name_pattern(n) for n in base)
    after = Counter(name_pattern(n) for n in moved)
    for pattern in set(before) | set(after):
        b, p, t = before[pattern], after[pattern], target_patterns[pattern]
        if b == p or t == 0:
            continue
        step, delta = p - b, x2 - x
        if ((t - b) * delta) % step == 0:
            votes[x + (t - b) * delta // step] += 3


def moved_names(before: Shapes, after: Shapes) -> set[str]:
    """Names present in one build only, or with another shape."""
    return {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}


def perturbations(x: int) -> list[int]:
    return [v for v in dict.fromkeys([2 * x, x + 1, x // 2, x - 1]) if v > 0 and v != x] if x > 0 else [1, 2]


def resized(value: tuple, length: int) -> tuple:
    return tuple(value[:length]) + (value[-1],) * max(0, length - len(value)) if value else value
