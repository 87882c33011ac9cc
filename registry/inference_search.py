"""The search behind config inference: build, compare with the checkpoint, move one field at a time.

Each step builds a config on the meta device and measures its distance to the checkpoint's schema
(`inference_signals.schema_distance`: the top-level structure, then the entries that differ).
Zero differing entries is the checkpoint's exact fingerprint.

What a field does is learned by building and diffing. An integer field is built once more with a
perturbed value (twice, or plus one): every dimension that moved gives a linear (or power) law, and
solving it for the checkpoint's dimension proposes a value; names that appeared or disappeared
(numbered layers) give a count law the same way. A sequence field has a length (proposed from
numbered-layer counts) and one such integer per index. Booleans and choices are tried. The best
proposal of each field is kept when it brings the distance down (coordinate descent); when no
single field helps, pairs of near misses are tried, then a look ahead from the closest near misses
(a product such as heads x head width), then the checkpoint's own dimensions.

A proposal the config class or the model rejects is repaired where that is generic: sequences that
had the same length are resized with it, fields the error message names are shrunk, integers
another field must divide are reduced to a common divisor.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from .inference_signals import (Shapes, containers, count_proposals, dimension_proposals, moved_names, perturbations,
                                resized, schema_distance)
from .inference_space import CHOICE, CHOICE_SEQ, INT, INT_SEQ, Knob, Space, assemble, dimension_pool, freeze, layer_counts, name_pattern
from .schema import Schema

FAILED = (math.inf, math.inf, math.inf, math.inf)
MAX_PROPOSALS = 4
MAX_REPAIRS = 8
MAX_ROUNDS = 12
MAX_PAIRS = 28
FALLBACK_PER_FIELD = 6
LOOKAHEAD_MISSES = 3
PAIRED_MISSES = 8


class OutOfBudget(Exception):
    """The build budget is spent (internal: the solver returns the nearest config found)."""


@dataclass
class Outcome:
    distance: tuple[float, ...]  # see `schema_distance`
    shapes: Shapes | None = None
    schema: Schema | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.shapes is not None

    @property
    def exact(self) -> bool:
        return self.distance[1] == 0

    @property
    def differing(self) -> int:
        """Entries missing, unexpected or reshaped."""
        return int(self.distance[1])


class Evaluator:
    """Builds configs on the meta device, once each (cached by canonical config), within a budget."""

    def __init__(self, family: Any, target: Schema, space: Space, budget: int):
        self.family = family
        self.target = target
        self.target_shapes: Shapes = {e.name: e.shape for e in target}
        self.target_patterns = Counter(name_pattern(n) for n in self.target_shapes)
        self.target_containers = containers(self.target_shapes)
        self.sequence_types = {k.path: k.sequence_type for k in space.knobs if k.kind in (INT_SEQ, CHOICE_SEQ)}
        self.budget = budget
        self.builds = 0
        self.rejected = 0
        self.build_seconds = 0.0
        self._cache: dict[tuple, Outcome] = {}

    def __call__(self, flat: Mapping[str, Any]) -> Outcome:
        key = freeze(flat)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        outcome = self._evaluate(flat)
        self._cache[key] = outcome
        return outcome

    def _evaluate(self, flat: Mapping[str, Any]) -> Outcome:
        import time

        from .families import build_on_meta
        from .schema import schema_of_module

        try:
            config = assemble(self.family.config_class, flat, self.sequence_types)
        except Exception as exc:  # the config class's own validation: no model was built
            self.rejected += 1
            return Outcome(FAILED, error=str(exc))
        if self.builds >= self.budget:
            raise OutOfBudget
        self.builds += 1
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                schema = schema_of_module(build_on_meta(self.family, config))
        except Exception as exc:  # user model code may raise anything for a config it cannot build
            return Outcome(FAILED, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.build_seconds += time.perf_counter() - started
        shapes = {e.name: e.shape for e in schema}
        return Outcome(schema_distance(shapes, self.target_shapes, self.target_containers), shapes, schema)


def _key(change: Mapping[str, Any]) -> str:
    return repr(sorted(change.items(), key=lambda item: item[0]))


# --- the solver --------------------------------------------------------------------------------


@dataclass
class Search:
    """Coordinate descent over a family's knobs towards the checkpoint's schema."""

    evaluate: Evaluator
    space: Space
    current: dict[str, Any]
    order: int = 0  # 0: choices, lengths, numbers; 1 (a restart): lengths, numbers, choices, reversed
    outcome: Outcome = field(init=False)
    # per coordinate that did not improve: (distance, its best move, did that move add/remove names?)
    near_misses: list[tuple[tuple[float, ...], dict[str, Any], bool]] = field(default_factory=list)
    sensitive: set[str] = field(default_factory=set)
    # per coordinate: (names when last visited, names its moves changed): see `_settled`
    footprints: dict[tuple[str, str], tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)
    _moved: dict[str, set[str]] = field(default_factory=dict)  # names the last perturbation changed
    _probes: set[str] = field(default_factory=set)  # perturbations that no law proposed

    def __post_init__(self) -> None:
        self.start = dict(self.current)  # the defaults (and --fix values) the search began from
        self.outcome = self.evaluate(self.current)
        self._pool: list[int] | None = None

    @property
    def pool(self) -> list[int]:
        if self._pool is None:
            self._pool = dimension_pool(self.evaluate.target)
        return self._pool

    def run(self) -> None:
        """Move until the schema is matched, nothing improves, or the budget is spent (OutOfBudget)."""
        for _ in range(MAX_ROUNDS):
            if self.outcome.exact:
                return
            if self._round() or self._pairs() or self._lookahead() or self._fallback():
                continue
            return

    # one round: every coordinate once
    def _round(self) -> bool:
        improved = False
        self.near_misses = []
        # choices first (a flag may add a module per block), then sequence lengths: they fix the
        # structure, and a smaller structure builds faster; then the numbers
        coordinates = [(k, label, structural, moves)
                       for k in self.space.knobs for label, structural, moves in self._coordinates(k)]
        if self.order == 0:
            coordinates.sort(key=lambda c: (c[0].kind != CHOICE, not c[2]))
        else:  # a restart: the structure first, the choices last, fields in reverse
            coordinates = coordinates[::-1]
            coordinates.sort(key=lambda c: (not c[2], c[0].kind == CHOICE))
        for knob, label, _, moves in coordinates:
            if self.outcome.exact:
                return True
            if self._settled((knob.path, label)):
                continue
            improved |= self._try(knob, moves(), (knob.path, label))
        return improved

    def _settled(self, coordinate: tuple[str, str]) -> bool:
        """True when revisiting a coordinate cannot help: every entry it moved last time now matches
        the checkpoint, or it moved nothing and the set of names has not changed since."""
        seen = self.footprints.get(coordinate)
        if seen is None:
            return False
        names, footprint = seen
        if not footprint:
            return names == frozenset(self.outcome.shapes)
        target, shapes = self.evaluate.target_shapes, self.outcome.shapes
        return all(target.get(name) == shapes.get(name) for name in footprint)

    def _coordinates(self, knob: Knob) -> Iterator[tuple[str, bool, Callable[[], list[dict[str, Any]]]]]:
        """(label, structural?, a function returning the moves) for each coordinate of a knob."""
        if knob.kind == INT:
            yield "value", False, lambda: self._int_moves(knob.path)
        elif knob.kind == CHOICE:
            yield "value", False, lambda: [{knob.path: c} for c in knob.choices if c != self.current.get(knob.path)]
        else:
            yield "length", True, lambda: self._length_moves(knob)
            if knob.kind == INT_SEQ:
                yield "drop", False, lambda: self._drop_moves(knob)
            for index in range(len(self.current.get(knob.path) or ())):
                yield f"[{index}]", False, lambda index=index: self._element_moves(knob, index)

    def _try(self, knob: Knob, moves: list[dict[str, Any]], coordinate: tuple[str, str] | None = None) -> bool:
        """Evaluate each move (repairing the ones that fail); keep the best if it is closer."""
        best: tuple[Outcome, dict[str, Any]] | None = None
        miss: tuple[Outcome, dict[str, Any]] | None = None  # the best move that is not a mere probe
        footprint: set[str] = set(self._moved.pop(knob.path, ()))
        for move in moves:
            outcome, change = self._evaluate_repaired(move)
            if outcome.ok:
                footprint |= moved_names(self.outcome.shapes, outcome.shapes)
            if outcome.ok and (best is None or outcome.distance < best[0].distance):
                best = outcome, change
            if outcome.ok and _key(move) not in self._probes and (miss is None or outcome.distance < miss[0].distance):
                miss = outcome, change
        if coordinate is not None:
            self.footprints[coordinate] = (frozenset(self.outcome.shapes), frozenset(footprint))
        if best is None:
            return False
        if best[0].shapes != self.outcome.shapes:
            self.sensitive.add(knob.path)
        if best[0].distance < self.outcome.distance:
            self.current = {**self.current, **best[1]}
            self.outcome = best[0]
            return True
        if miss is not None and miss[0].shapes != self.outcome.shapes:
            structural = miss[0].shapes.keys() != self.outcome.shapes.keys()
            self.near_misses.append((miss[0].distance, miss[1], structural))
        return False

    def _evaluate_repaired(self, change: dict[str, Any], blind: bool = True) -> tuple[Outcome, dict[str, Any]]:
        """The outcome of a change, repaired if it failed; `blind=False` repairs only what the error
        names or what a length change implies (enough for a perturbation, which has alternatives)."""
        outcome = self.evaluate({**self.current, **change})
        if outcome.ok:
            return outcome, change
        best: tuple[Outcome, dict[str, Any]] = (outcome, change)
        for repair in self._repairs(change, outcome.error or "", blind):
            repaired = {**change, **repair}
            candidate = self.evaluate({**self.current, **repaired})
            if candidate.ok and candidate.distance < best[0].distance:
                best = candidate, repaired
        return best

    def _repairs(self, change: dict[str, Any], error: str, blind: bool = True) -> Iterator[dict[str, Any]]:
        """Generic fixes for a change the config or model refused (at most MAX_REPAIRS)."""
        named = {k.path for k in self.space.knobs if re.search(rf"\b{re.escape(k.path.rsplit('.', 1)[-1])}\b", error)}
        if not named and not blind:
            named = {""}  # repair nothing by guess
        produced = 0
        [(path, value)] = list(change.items())[:1] or [(None, None)]
        old = self.current.get(path) if path else None
        coupled: dict[str, Any] = {}
        if isinstance(old, tuple) and isinstance(value, tuple) and len(old) != len(value):
            for other_path, other in self.current.items():  # knobs or not: block type names too
                if other_path != path and isinstance(other, tuple) and len(other) == len(old):
                    coupled[other_path] = resized(other, len(value))
            if coupled:
                produced += 1
                yield coupled
        for knob in self.space.knobs:
            if produced >= MAX_REPAIRS or knob.path == path:
                continue
            other = self.current.get(knob.path)
            if knob.kind in (INT_SEQ, CHOICE_SEQ) and knob.path in named and isinstance(other, tuple) and len(other) > 1:
                for index in range(len(other)):
                    produced += 1
                    yield {**coupled, knob.path: other[:index] + other[index + 1:]}
            elif knob.kind == INT and isinstance(other, int) and isinstance(value, int) and value > 0 \
                    and (not named or knob.path in named):
                divisor = math.gcd(other, value)  # `n_embd % n_head == 0`: the other must divide
                if divisor not in (other, 1) or (knob.path in named and divisor != other):
                    produced += 1
                    yield {**coupled, knob.path: divisor}

    # --- moves per kind ---

    def _learn(self, path: str, x: int, perturbed_values: list[int], replace: Callable[[int], dict[str, Any]]) -> list[int]:
        """Build one perturbation of an integer (at `path`) and return values it proposes, best first."""
        for x2 in perturbed_values:
            moved = self._evaluate_repaired(replace(x2), blind=False)[0]
            if not moved.ok:
                continue
            if moved.shapes == self.outcome.shapes:
                return []
            self.sensitive.add(path)
            self._moved[path] = moved_names(self.outcome.shapes, moved.shapes)
            votes: Counter = Counter()
            dimension_proposals(x, x2, self.outcome.shapes, moved.shapes, self.evaluate.target_shapes, votes)
            count_proposals(x, x2, self.outcome.shapes, moved.shapes, self.evaluate.target_patterns, votes)
            proposals = [v for v, _ in votes.most_common() if v > 0 and v != x][:MAX_PROPOSALS]
            if x2 in proposals:
                return proposals
            self._probes.add(_key(replace(x2)))  # tried for what it teaches, not proposed
            return [x2, *proposals]
        return []

    def _int_moves(self, path: str) -> list[dict[str, Any]]:
        x = self.current.get(path)
        knob_optional = next(k.optional for k in self.space.knobs if k.path == path)
        if x is None:
            return [{path: v} for v in self.pool[:2]]
        values = self._learn(path, x, perturbations(x), lambda v: {path: v})
        moves = [{path: v} for v in values]
        return moves + ([{path: None}] if knob_optional else [])

    def _length_moves(self, knob: Knob) -> list[dict[str, Any]]:
        value = self.current.get(knob.path)
        if not value:
            return []
        length = len(value)
        lengths = self._learn(knob.path, length, [length + 1, length - 1],
                              lambda n: {knob.path: resized(value, n)})
        if knob.path in self.sensitive:
            common = [n for n, _ in layer_counts(self.evaluate.target).most_common(6) if 0 < n <= 2 * length + 4]
            lengths += [n for n in common if n not in lengths][:3]
        return [{knob.path: resized(value, n)} for n in lengths if n > 0 and n != length]

    def _drop_moves(self, knob: Knob) -> list[dict[str, Any]]:
        """One element fewer (down to empty: `attention_resolutions=()` is a layout too), or one
        more of the starting value's elements (an empty sequence has no length to learn from)."""
        value = self.current.get(knob.path) or ()
        if len(value) > 8:
            return []
        drops = [value[:i] + value[i + 1:] for i in range(len(value))]
        adds = [value + (item,) for item in dict.fromkeys(self.start.get(knob.path) or ()) if item not in value]
        return [{knob.path: v} for v in dict.fromkeys(drops + adds)]

    def _element_moves(self, knob: Knob, index: int) -> list[dict[str, Any]]:
        value = self.current.get(knob.path) or ()
        if index >= len(value):
            return []

        def replace(item: Any) -> dict[str, Any]:
            return {knob.path: value[:index] + (item,) + value[index + 1:]}

        if knob.kind == CHOICE_SEQ:
            return [replace(c) for c in knob.choices if c != value[index]]
        item = value[index]
        if not isinstance(item, int) or isinstance(item, bool):
            return []
        return [replace(v) for v in self._learn(knob.path, item, perturbations(item), replace)]

    # --- when no single field helps ---

    def _pairs(self) -> bool:
        """Combine two near misses of different fields (a product such as heads x head width)."""
        # moves that add or remove modules pair first (blocks per level x layers per block)
        misses = sorted(self.near_misses, key=lambda m: (not m[2], m[0]))[:PAIRED_MISSES]
        best: tuple[Outcome, dict[str, Any]] | None = None
        tried = 0
        for i, (_, first, _) in enumerate(misses):
            for _, second, _ in misses[i + 1:]:
                if set(first) & set(second) or tried >= MAX_PAIRS:
                    continue
                tried += 1
                outcome, change = self._evaluate_repaired({**first, **second})
                if outcome.ok and (best is None or outcome.distance < best[0].distance):
                    best = outcome, change
        if best is not None and best[0].distance < self.outcome.distance:
            self.current = {**self.current, **best[1]}
            self.outcome = best[0]
            return True
        return False

    def _lookahead(self) -> bool:
        """From each of the closest near misses, learn every other sensitive integer (and sequence
        element) again and keep the best result if it beats the current config: a product (heads x
        head width, base width x multiplier) whose factors only fit together, where the second
        factor's right value shows only after the first."""
        start_config, start_outcome = self.current, self.outcome
        best: tuple[Outcome, dict[str, Any]] | None = None
        numeric = {k.path for k in self.space.knobs if k.kind in (INT, INT_SEQ)}
        # misses of numeric fields first: a product's factor is a number
        ranked = sorted(self.near_misses, key=lambda m: (not set(m[1]) <= numeric, m[0]))
        for _, miss, _ in ranked[:LOOKAHEAD_MISSES]:
            outcome = self.evaluate({**start_config, **miss})
            if not outcome.ok:
                continue
            self.current, self.outcome = {**start_config, **miss}, outcome
            for knob in self.space.knobs:
                if knob.kind not in (INT, INT_SEQ) or knob.path in miss or knob.path not in self.sensitive:
                    continue
                moves = self._int_moves(knob.path) if knob.kind == INT else self._length_moves(knob) + [
                    move for index in range(len(self.current.get(knob.path) or ()))
                    for move in self._element_moves(knob, index)]
                for move in moves:
                    found, change = self._evaluate_repaired(move)
                    if found.ok and (best is None or found.distance < best[0].distance):
                        best = found, {**miss, **change}
            self.current, self.outcome = start_config, start_outcome
        if best is not None and best[0].distance < start_outcome.distance:
            self.current, self.outcome = {**start_config, **best[1]}, best[0]
            return True
        return False

    def _fallback(self) -> bool:
        """Try the checkpoint's own dimensions (and their divisors, products, layer counts) per field."""
        improved = False
        for knob in self.space.knobs:
            if knob.kind != INT or knob.path not in self.sensitive:
                continue
            x = self.current.get(knob.path)
            values = [v for v in self.pool if v != x][:FALLBACK_PER_FIELD]
            improved |= self._try(knob, [{knob.path: v} for v in values])
            if self.outcome.exact:
                return True
        return improved
