"""Top-level checkpoint values other than the state dict, made JSON-ready and bounded.

Plain values (step, epoch, strings, small plain containers) are copied; tensors, opaque
placeholders and large containers are summarised by type and size. The trainer's embedded
`registry` record is surfaced only when it is entirely plain data. Every walk has a node budget,
so a pickle that shares one list a million times (memo amplification) costs no more than a small one.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .limits import Limits
from .records import Global, Instance, TensorRecord


def summarise_metadata(values: dict[str, Any], limits: Limits) -> tuple[dict[str, Any], list[str]]:
    """JSON-ready top-level values: plain data copied (within a node budget per key), tensors and
    opaque objects summarised by type. `registry` is copied only if it is entirely plain data."""
    out: dict[str, Any] = {}
    warnings = []
    for key, value in values.items():
        if key == "registry":
            plain = plain_copy(value, limits.metadata_nodes * 5, limits.metadata_depth)
            if type(plain) is dict:
                out[key] = plain
            else:
                warnings.append(f"the embedded registry record is not plain data ({_brief(value)}); ignored")
            continue
        out[key] = summarise(value, limits)
    return out, warnings


class _NotPlain(Exception):
    pass


def plain_copy(value: Any, budget: int, depth: int) -> Any:
    """A copy made only of str/int/float/bool/None/list/dict (tuples become lists), or None when
    the value holds anything else or is larger than `budget` nodes / deeper than `depth`."""
    remaining = [budget]

    def copy(item: Any, level: int) -> Any:
        remaining[0] -= 1
        if remaining[0] < 0 or level > depth:
            raise _NotPlain()
        kind = type(item)
        if kind in (str, int, bool, type(None)):
            return item
        if kind is float:
            return item if math.isfinite(item) else str(item)
        if kind in (list, tuple):
            return [copy(x, level + 1) for x in item]
        if kind is dict and all(type(k) is str for k in item):
            return {k: copy(v, level + 1) for k, v in item.items()}
        raise _NotPlain()

    try:
        return copy(value, 0)
    except _NotPlain:
        return None


def summarise(value: Any, limits: Limits) -> Any:
    """A JSON-ready rendering of one metadata value: shown whole when it is at most
    `limits.metadata_nodes` nodes and holds no tensor, else a one-line summary of its type and size.
    Nodes reached twice count twice, so shared references (memo amplification) stay bounded."""
    size = _measure(value, limits.metadata_nodes, limits.metadata_depth)
    if size is None:
        return _brief(value)
    return _render(value)


def _measure(value: Any, budget: int, depth: int) -> int | None:
    """Nodes under `value`, or None past the budget or depth or when a tensor is found."""
    pending, seen = [(value, 0)], 0
    while pending:
        item, level = pending.pop()
        seen += 1
        if seen > budget or level > depth or type(item) is TensorRecord:
            return None
        kind = type(item)
        if kind is dict:
            pending.extend((v, level + 1) for v in item.values())
        elif kind in (list, tuple, set, frozenset):
            pending.extend((v, level + 1) for v in item)
    return seen


def _render(value: Any) -> Any:
    kind = type(value)
    if kind in (int, bool, type(None)):
        return value
    if kind is float:
        return value if math.isfinite(value) else str(value)
    if kind is str:
        return value if len(value) <= 1000 else f"<str of {len(value):,} chars>"
    if kind in (list, tuple, set, frozenset):
        return [_render(item) for item in value]
    if kind is dict:
        return {k if type(k) is str else str(k) if type(k) in (int, float, bool) else repr(k): _render(v)
                for k, v in value.items()}
    return _brief(value)


def _brief(value: Any) -> Any:
    kind = type(value)
    if kind in (bytes, bytearray):
        return f"<bytes of {len(value):,}>"
    if kind is TensorRecord:
        return f"<tensor {value.dtype} {list(value.shape)}>"
    if kind is Instance:
        if type(value.value) in (int, float, str, bool):
            return _render(value.value)
        return f"<{value.type_name}>"
    if kind is Global:
        return f"<{value.path}>"
    if kind in (list, tuple, set, frozenset, dict):
        return f"<{kind.__name__} of {len(value):,} items>"
    return f"<{kind.__name__}>"


def safetensors_metadata(strings: dict[str, str], limits: Limits) -> tuple[dict[str, Any], list[str]]:
    """A safetensors `__metadata__`: strings kept (long ones summarised); `registry` parsed from JSON."""
    out: dict[str, Any] = {}
    warnings = []
    for key, text in strings.items():
        if key != "registry":
            out[key] = text if len(text) <= 1000 else f"<str of {len(text):,} chars>"
            continue
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            parsed = None
        plain = plain_copy(parsed, limits.metadata_nodes * 5, limits.metadata_depth)
        if type(plain) is dict:
            out[key] = plain
        else:
            warnings.append("the embedded registry record is not a JSON object; ignored")
    return out, warnings
