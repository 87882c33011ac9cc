"""Carry an optimizer's state across a layout conversion.

`Optimizer.state_dict()` keys its per-parameter state by position in `model.parameters()`. Our
checkpoints also store the parameter names in that order, so the state can be re-keyed by name,
passed through the same converter as the weights (a moment tensor is shaped like its parameter,
so renames and reshapes apply to it unchanged) and re-keyed for the target model's order.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping


def convert_optimizer_state(
    optimizer: Mapping[str, Any],
    source_names: list[str],
    source_state: Mapping[str, Any],
    convert: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    target_names: list[str],
) -> dict[str, Any] | None:
    """The optimizer state for a model whose parameters are `target_names`, or None if it cannot be carried.

    `convert(state_dict)` is the weights' conversion; `source_state` fills in entries without
    optimizer state (buffers), which a converter may expect to find. None when the state has
    several parameter groups, the names do not line up with it, or a target parameter ends up
    without state — the caller then starts a fresh optimizer and says so.
    """
    groups = optimizer.get("param_groups") or []
    per_index = optimizer.get("state") or {}
    if len(groups) != 1 or len(groups[0].get("params", [])) != len(source_names):
        return None
    by_name = {source_names[i]: per_index[i] for i in groups[0]["params"] if i in per_index}
    if not by_name:
        return None
    shaped_keys = {k for state in by_name.values() for k, v in state.items() if getattr(v, "dim", lambda: 0)() > 0}
    converted: dict[str, dict[str, Any]] = {name: {} for name in target_names}
    for key in sorted(shaped_keys):
        moments = {name: by_name[name][key] if name in by_name else tensor for name, tensor in source_state.items()}
        for name, tensor in convert(moments).items():
            if name in converted:
                converted[name][key] = tensor
    scalars = {k: v for state in by_name.values() for k, v in state.items() if k not in shaped_keys}
    if any(set(state) != shaped_keys for state in converted.values()):
        return None
    for state in converted.values():
        state.update({k: v.clone() if hasattr(v, "clone") else v for k, v in scalars.items()})
    group = dict(groups[0], params=list(range(len(target_names))))
    return {"state": {i: converted[name] for i, name in enumerate(target_names)}, "param_groups": [group]}
