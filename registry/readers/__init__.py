"""Safe, metadata-only checkpoint readers (DESIGN §4).

`read_checkpoint(path)` reads a torch zip, legacy torch, safetensors, sharded, diffusers or
accelerate checkpoint and returns its schema (names, shapes, dtypes after container and wrapper
discovery), layout and plain metadata - without running code from the file and without reading
tensor data. Importing this package imports neither torch nor numpy.
"""

from .checkpoint import read_checkpoint
from .info import CheckpointInfo, SubModel
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["read_checkpoint", "CheckpointInfo", "SubModel", "Limits", "DEFAULT_LIMITS"]
