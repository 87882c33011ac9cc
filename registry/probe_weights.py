"""Deterministic weights for the behaviour probe, derived from each tensor's name (DESIGN §11).

Every floating-point entry of a model's state dict is overwritten with values drawn from a
generator seeded by the SHA-256 of its name and shape. So the weights do not depend on the order
in which modules were built, on the global RNG, or on the process: the same names and shapes give
the same numbers, and only the code that computes with them can change the outputs.

Scales keep activations sane without knowing the architecture:
- a tensor of two or more dimensions is a weight: normal with std 1/sqrt(fan in), fan in being the
  product of every dimension but the first (Linear `in`, Conv `in/groups · kernel`);
- a vector or scalar is a scale when its name or its module says so (`weight`/`gamma`/`g`/`*scale`,
  or any vector of a `*Norm*` module that is not a bias): 1 + 0.2·normal, so a norm that computes
  `x * w` and one that computes `x * (1 + w)` give different outputs; else it is a bias or a shift:
  0.2·normal;
- buffers: a running variance is positive (1 + 0.2·|normal|); a buffer whose built value is one
  repeated constant (a flag such as a codebook's `initted`, a LayerNorm's zero `beta` buffer) keeps
  it, since constructors set those without the RNG; other float buffers are drawn like weights;
- integer and bool tensors (step counters, index tables) are left as built.
Tied tensors (one storage under several names) take the values of their first name in sorted order.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

SCALE_NAMES = frozenset({"weight", "gamma", "g", "scale"})
SHIFT_NAMES = frozenset({"bias", "beta", "b", "shift"})
SPREAD = 0.2  # spread of scales around 1 and of biases around 0


def name_seed(name: str, shape: tuple[int, ...]) -> int:
    """A 63-bit seed from a tensor's name and shape (stable across processes and machines)."""
    digest = hashlib.sha256(f"{name}\t{list(shape)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def _role(name: str, ndim: int, owner_class: str, is_buffer: bool) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if is_buffer and ("running_var" in leaf or leaf.endswith("_var")):
        return "variance"
    if ndim >= 2:
        return "weight"
    if leaf in SHIFT_NAMES or leaf.endswith("_bias") or "running_mean" in leaf:
        return "shift"
    if leaf in SCALE_NAMES or leaf.endswith("scale") or "Norm" in owner_class:
        return "scale"
    return "shift"


def name_derived_values(name: str, shape: tuple[int, ...], role: str) -> Any:
    """The float32 values the probe gives tensor `name` of `shape` in `role`
    (`weight`, `scale`, `shift` or `variance`)."""
    import torch

    generator = torch.Generator().manual_seed(name_seed(name, shape))
    values = torch.randn(shape, generator=generator, dtype=torch.float32)
    if role == "weight":
        fan_in = math.prod(shape[1:]) or 1
        return values / math.sqrt(fan_in)
    if role == "scale":
        return 1.0 + SPREAD * values
    if role == "variance":
        return 1.0 + SPREAD * values.abs()
    return SPREAD * values


def _owners(model: Any) -> tuple[dict[str, str], set[str]]:
    """State-dict name → class name of the module holding it, and the names that are buffers."""
    owner_class, buffers = {}, set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for leaf, _ in module.named_parameters(recurse=False):
            owner_class[prefix + leaf] = type(module).__name__
        for leaf, _ in module.named_buffers(recurse=False):
            owner_class[prefix + leaf] = type(module).__name__
            buffers.add(prefix + leaf)
    return owner_class, buffers


def set_name_derived_weights(model: Any) -> int:
    """Overwrite every floating-point state-dict entry of `model` in place; returns how many were set.

    Integer/bool entries and constant buffers stay as built (see the module docstring).
    """
    import torch

    owner_class, buffers = _owners(model)
    state = model.state_dict(keep_vars=True)
    filled: set[int] = set()
    count = 0
    with torch.no_grad():
        for name in sorted(state):
            tensor = state[name]
            if not tensor.is_floating_point() or tensor.numel() == 0 or tensor.data_ptr() in filled:
                continue
            filled.add(tensor.data_ptr())
            is_buffer = name in buffers
            role = _role(name, tensor.ndim, owner_class.get(name, ""), is_buffer)
            if is_buffer and not _running_statistic(name) and _constant(tensor):
                continue
            tensor.copy_(name_derived_values(name, tuple(tensor.shape), role).to(tensor.dtype))
            count += 1
    return count


def _running_statistic(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf.startswith("running_") or leaf.endswith("_var") or leaf.endswith("_mean")


def _constant(tensor: Any) -> bool:
    flat = tensor.detach().reshape(-1)
    return bool((flat == flat[0]).all())
