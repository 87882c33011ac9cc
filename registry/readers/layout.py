"""Where the state dict is inside a checkpoint, which wrapper prefix its keys carry, and what else
the checkpoint holds (step, epoch, the trainer's embedded registry record).

The container is chosen the way a careful loader would: the top level if it is a mapping of
names to tensors; else a well-known key (`state_dict`, `model`, `ema`, ...) holding one, possibly
one level down (`{"model": {"state_dict": ...}}`); else the one such mapping if exactly one
exists; otherwise an error listing the candidates - never a guess. Optimizer state (mappings of
ints to tensors) is never a candidate.
"""

from __future__ import annotations

from typing import Any

from registry.schema import TensorEntry

from .limits import FormatError, Limits
from .metadata import summarise_metadata
from .records import Global, Instance, TensorRecord

# In order of preference when several hold a state dict (the model before its EMA copy).
WELL_KNOWN = ("state_dict", "model_state_dict", "model", "module", "net", "network", "params",
              "ema", "state_dict_ema", "model_ema", "ema_model", "ema_state_dict", "params_ema")
# Never the model, even when they hold a mapping of names to tensors.
NOT_MODEL = frozenset({"optimizer", "optimizer_state_dict", "optimizer_states", "optim", "opt", "lr_scheduler",
                       "lr_schedulers", "scheduler", "scaler", "grad_scaler", "amp", "rng_state", "rng_states",
                       "random_state", "callbacks", "loops"})
WRAPPERS = ("module.", "_orig_mod.")  # DistributedDataParallel / DataParallel, torch.compile


class Layout:
    """The model's tensor entries (wrapper stripped) and where they were found."""

    __slots__ = ("container", "wrapper", "entries", "metadata", "warnings")

    def __init__(self, container: str | None, wrapper: str | None, entries: list[TensorEntry],
                 metadata: dict[str, Any], warnings: list[str]):
        self.container = container
        self.wrapper = wrapper
        self.entries = entries
        self.metadata = metadata
        self.warnings = warnings


def find_layout(root: Any, limits: Limits) -> Layout:
    """Container, wrapper, entries and metadata of an unpickled checkpoint.

    A nested container is reported as `outer/inner`. Raises FormatError when no state dict is
    found or the choice would be a guess.
    """
    top = as_mapping(root)
    if top is None:
        raise FormatError(f"it holds {describe(root)}, not a mapping of names to tensors (a state dict)")
    if is_state_dict(top):
        path: tuple[str, ...] = ()
        chosen, warnings = top, []
    else:
        path, chosen, warnings = _choose(top)
    names = [name for name, value in chosen.items() if type(value) is TensorRecord]
    odd = next((name for name in names if "\t" in name or "\n" in name), None)
    if odd is not None:  # the canonical text (DESIGN §3) is tab- and newline-separated
        raise FormatError(f"tensor name {odd[:80]!r} holds a tab or a newline, which a fingerprint cannot represent")
    wrapper = _wrapper(names)
    cut = len(wrapper)
    entries = [TensorEntry(name[cut:], value.shape, value.dtype)
               for name, value in chosen.items() if type(value) is TensorRecord]
    metadata = {}
    if path:
        metadata = {str(key): value for key, value in top.items() if key != path[0]}
        metadata, meta_warnings = summarise_metadata(metadata, limits)
        warnings.extend(meta_warnings)
    return Layout("/".join(path) or None, wrapper or None, entries, metadata, warnings)


def as_mapping(value: Any) -> dict | None:
    """The dict a value stands for: a dict, or the items of a dict subclass instance."""
    if type(value) is dict:
        return value
    if type(value) is Instance and value.items is not None:
        return value.items
    return None


def is_state_dict(mapping: dict) -> bool:
    """Names to tensors: string keys, at least one tensor, and any other value under a module
    path (`fc._packed_params.dtype`) or an `_extra_state` key - not a trainer's `step`."""
    tensors = 0
    for key, value in mapping.items():
        if type(key) is not str:
            return False
        if type(value) is TensorRecord:
            tensors += 1
        elif "." not in key and not key.endswith("_extra_state"):
            return False
    return tensors > 0


def _choose(top: dict) -> tuple[tuple[str, ...], dict, list[str]]:
    candidates: dict[tuple[str, ...], dict] = {}
    for key, value in top.items():
        inner = as_mapping(value)
        if type(key) is not str or inner is None or key in NOT_MODEL:
            continue
        if is_state_dict(inner):
            candidates[(key,)] = inner
            continue
        for key2, value2 in inner.items():
            inner2 = as_mapping(value2)
            if type(key2) is str and inner2 is not None and key2 not in NOT_MODEL and is_state_dict(inner2):
                candidates[(key, key2)] = inner2
    rank = {name: i for i, name in enumerate(WELL_KNOWN)}
    known = [p for p in candidates if all(k in rank for k in p)]
    if known:
        path = min(known, key=lambda p: (len(p), [rank[k] for k in p]))
    elif len(candidates) == 1:
        path = next(iter(candidates))
    else:
        raise FormatError(_no_container_message(top, candidates))
    others = [p for p in candidates if p != path]
    warnings = []
    if others:
        listed = ", ".join(f"{'/'.join(p)} ({_tensor_count(candidates[p])} tensors)" for p in others[:5])
        warnings.append(f"also holds {listed}; fingerprinted {'/'.join(path)}")
    return path, candidates[path], warnings


def _no_container_message(top: dict, candidates: dict) -> str:
    if candidates:
        listed = ", ".join(f"{'/'.join(p)} ({_tensor_count(m)} tensors)" for p, m in list(candidates.items())[:6])
        return (f"it holds several mappings of names to tensors ({listed}) and none under a well-known key "
                f"({', '.join(WELL_KNOWN[:4])}, ...), so which one is the model would be a guess; save the "
                "model's state_dict under 'model' or 'state_dict'")
    keys = [str(k) for k in list(top)[:8]]
    if "state" in top and "param_groups" in top:
        return "it holds an optimizer state_dict (state, param_groups), not a model"
    if _tensor_count(top):
        return (f"its top level mixes {_tensor_count(top)} tensors with other values ({', '.join(_non_tensor_keys(top))}),"
                " so it is not a state dict; save the model's state_dict under 'model' or 'state_dict'")
    return (f"no mapping of names to tensors found; the top level holds {', '.join(keys) or 'nothing'}"
            + (" ..." if len(top) > 8 else ""))


def _tensor_count(mapping: dict) -> int:
    return sum(1 for value in mapping.values() if type(value) is TensorRecord)


def _non_tensor_keys(mapping: dict) -> list[str]:
    return [str(k) for k, v in mapping.items() if type(v) is not TensorRecord][:5]


def _wrapper(names: list[str]) -> str:
    """The wrapper prefixes every name carries (`module.`, `_orig_mod.`, `module._orig_mod.`)."""
    stripped = ""
    while names:
        for prefix in WRAPPERS:
            if all(name.startswith(prefix) and len(name) > len(prefix) for name in names):
                stripped += prefix
                names = [name[len(prefix):] for name in names]
                break
        else:
            break
    return stripped


def describe(value: Any) -> str:
    """`a single tensor`, `a list of 3 items`, `a pickled __main__.Net object (torch.save(model))`."""
    if type(value) is TensorRecord:
        return f"a single {value.dtype} tensor of shape {list(value.shape)}"
    if type(value) is Instance:
        state = value.state if type(value.state) is dict else {}
        if "_parameters" in state and "_modules" in state:
            return (f"a pickled {value.type_name} module (torch.save(model)), which only runs with its code; "
                    "save model.state_dict() instead")
        return f"a {value.type_name} object"
    if type(value) in (list, tuple):
        return f"a {type(value).__name__} of {len(value)} items"
    if type(value) is Global:
        return f"a reference to {value.path}"
    return f"a {type(value).__name__}"
