"""Run `registry` with a bug planted, as CI would run it on the commit that introduced the bug.

`PLANTED_CHANGE` picks the bug:
- `rmsnorm` (the default): the first incident — Attention builds RMSNorm whatever its flag says.
  The layout moves (`.gamma/.beta` → `.weight`), so the schema check catches it.
- `geglu-gates`: a tidy-up of GEGLU swaps its halves, gating the features with GELU of the other
  half the wrong way round. Every name, shape and module class stays as it was, checkpoints still
  load strictly, and the model computes something else: only the behaviour check catches it.

    PLANTED_CHANGE=geglu-gates python examples/planted_change.py check ctvit/tiny
"""

from __future__ import annotations

import os
import sys

import torch.nn.functional as F

import registry.models.ctvit_attention as attention
from registry.command.cli import main

_original_init = attention.Attention.__init__


def _hardcoded_rmsnorm(self, *args, use_rms_norm=False, **kwargs):  # noqa: ARG001 (the flag is ignored: the bug)
    _original_init(self, *args, use_rms_norm=True, **kwargs)


def _swapped_gates(self, x):
    gate, x = x.chunk(2, dim=-1)  # the bug: was `x, gate = ...`
    return F.gelu(gate) * x


PLANTS = {
    "rmsnorm": (attention.Attention, "__init__", _hardcoded_rmsnorm),
    "geglu-gates": (attention.GEGLU, "forward", _swapped_gates),
}

_choice = os.environ.get("PLANTED_CHANGE", "rmsnorm")
if _choice not in PLANTS:  # a usage error (exit 2), said in one line rather than a KeyError traceback
    print(f"PLANTED_CHANGE={_choice!r} plants nothing; choose one of: {', '.join(PLANTS)}", file=sys.stderr)
    sys.exit(2)
_owner, _attribute, _bug = PLANTS[_choice]
setattr(_owner, _attribute, _bug)

if __name__ == "__main__":
    main(prog_name="registry")
