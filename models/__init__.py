"""The built-in model families. Installed as `registry.models` (see setup.cfg).

Each module registers its family (and declares its built-in variants) when imported; this file
imports each one by name so the list of families is explicit.
"""

from . import ctvit  # noqa: F401
from . import diffusers_unet  # noqa: F401
from . import ldm_unet  # noqa: F401
from . import converters  # noqa: F401  (after the families it converts between)
from . import ctvit_inference  # noqa: F401
from . import unet_inference  # noqa: F401
