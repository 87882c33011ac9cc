"""The built-in model families. Installed as `registry.models` (see setup.cfg).

The registry loads this package like any other family plugin, through the entry point
`builtin = registry.models` of the group `registry.families` (registry/plugins.py). Each module
registers its family (and declares its built-in variants) when imported; this file imports each
one by name so the list of built-in families is explicit.
"""

from . import ctvit  # noqa: F401
from . import diffusers_unet  # noqa: F401
from . import ldm_unet  # noqa: F401
from . import converters  # noqa: F401  (after the families it converts between)
from . import ctvit_inference  # noqa: F401
from . import unet_inference  # noqa: F401
from . import unet_choices  # noqa: F401
from . import probes  # noqa: F401  (behaviour probes, after the families they extend)
