"""Run `registry` with the first incident's bug planted: Attention builds RMSNorm whatever its flag says.

`python examples/planted_change.py check` is what CI would run on the commit that introduced the
bug; the demo uses it to show `registry check` failing on that commit.
"""

from __future__ import annotations

import registry.models.ctvit_attention as attention
from registry.command.cli import main

_original_init = attention.Attention.__init__


def _hardcoded_rmsnorm(self, *args, use_rms_norm=False, **kwargs):  # noqa: ARG001 (the flag is ignored: the bug)
    _original_init(self, *args, use_rms_norm=True, **kwargs)


attention.Attention.__init__ = _hardcoded_rmsnorm

if __name__ == "__main__":
    main(prog_name="registry")
