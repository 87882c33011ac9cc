"""A checkpoint's other entries (optimizer, scheduler, epoch, ...) across a resume.

They are handed back untouched, with one exception: optimizer state is positional (torch keys it
by the parameter's index in `model.parameters()`), so after an in-memory conversion a state in the
old layout would load into the new model without an error and put every moment on the wrong
parameter. Such state is converted with the weights when its positions line up with the source
model's parameters (AdamW's moments are shaped like their parameter, so the weights' converter
applies to them), and removed with a warning otherwise — never left in the old layout.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .optimizer_state import convert_optimizer_state


def is_optimizer_state(value: Any) -> bool:
    """True for what `torch.optim.Optimizer.state_dict()` returns: {"state": {...}, "param_groups": [...]}."""
    return (isinstance(value, Mapping) and isinstance(value.get("state"), Mapping)
            and isinstance(value.get("param_groups"), list))


def optimizer_keys(extra: Mapping[str, Any]) -> list[str]:
    """Top-level keys holding an optimizer state, or a list of them (Lightning's `optimizer_states`)."""
    return [key for key, value in extra.items()
            if is_optimizer_state(value)
            or (isinstance(value, (list, tuple)) and value and all(is_optimizer_state(v) for v in value))]


def without_optimizers(extra: dict[str, Any], why: str) -> tuple[dict[str, Any], list[str]]:
    """`extra` without its optimizer states, and one warning per entry removed."""
    keys = optimizer_keys(extra)
    kept = {key: value for key, value in extra.items() if key not in keys and key != "optimizer_param_names"}
    return kept, [f"checkpoint entry {key!r} (optimizer state) was removed: {why}; start a fresh optimizer"
                  for key in keys]


def _lines_up(optimizer: Mapping[str, Any], names: list[str], shapes: Mapping[str, Any]) -> bool:
    """Each state's tensors have the shape of the parameter at its position (a cheap check that the
    optimizer was built over these parameters, in this order)."""
    groups = optimizer["param_groups"]
    if len(groups) != 1 or sorted(groups[0].get("params", [])) != list(range(len(names))):
        return False
    for index, state in optimizer["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(names) or names[index] not in shapes:
            return False
        for value in state.values():
            if getattr(value, "dim", lambda: 0)() > 0 and tuple(value.shape) != tuple(shapes[names[index]]):
                return False
    return True


def converted_optimizers(
    extra: dict[str, Any],
    *,
    source_names: Callable[[], list[str]],
    source_state: Mapping[str, Any],
    convert: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None,
    target_names: Callable[[], list[str]],
) -> tuple[dict[str, Any], list[str]]:
    """`extra` with every optimizer state carried into the target layout, or removed with a warning.

    `source_names()` lists the source model's parameters in `model.parameters()` order (our
    trainer stores them as `optimizer_param_names`, which wins); `convert` is the weights' exact
    conversion (None for a lossy one: nothing is carried).
    """
    keys = optimizer_keys(extra)
    if not keys:
        return extra, []
    if convert is None:
        return without_optimizers(extra, "the conversion is not exact")
    stored = extra.get("optimizer_param_names")
    names = list(stored) if isinstance(stored, list) else source_names()
    shapes = {name: tuple(tensor.shape) for name, tensor in source_state.items()}
    targets = target_names()
    out, warnings = dict(extra), []
    for key in keys:
        value = extra[key]
        states = list(value) if isinstance(value, (list, tuple)) else [value]
        carried = [convert_optimizer_state(s, names, source_state, convert, targets) if _lines_up(s, names, shapes)
                   else None for s in states]
        if any(c is None for c in carried):
            del out[key]
            warnings.append(f"checkpoint entry {key!r} (optimizer state) was removed: its parameters do not line up "
                            "with the converted model's (one parameter group over model.parameters() in order is "
                            "what can be carried); start a fresh optimizer")
        else:
            out[key] = carried if isinstance(value, (list, tuple)) else carried[0]
    if isinstance(stored, list):
        out["optimizer_param_names"] = targets
    return out, warnings
