"""Converting big checkpoints at disk speed: tensors are described first and their bytes moved later.

A `LazyTensor` is one tensor's name, shape, dtype and size plus where its bytes are: a contiguous
byte range of a file (copied by the kernel, never through Python memory) or a `load()` callable
(for anything else: strided views, compressed zip members, shards a reader must assemble).

- `lazy_tensors(info)`: the tensors of a checkpoint `read_checkpoint` described (torch zip,
  safetensors, and folders of those), without reading their bytes; `NotStreamable` when the
  format needs a real loader (legacy torch files, big-endian files, tensors without storage).
- `rename_tensors(tensors, rename)`: the same bytes under new names (`--rename`, and renaming
  converters such as the built-in LDM -> diffusers one: no model code runs, torch is not imported).
- `trace_conversion(convert, tensors, config)`: which source bytes land at which target name,
  learned by running a state-dict converter once on meta tensors (`NotStreamable` if it computes).
- `write_safetensors(path, tensors, ...)`: header first, then each tensor's bytes, one fsync,
  atomic rename; memory stays flat whatever the file's size.
- `plan_cache.cached_plan(...)`: a traced plan kept on disk for the next checkpoint of the same
  layout (keyed by converter code, versions, entries and config).

Importing this package imports neither torch nor numpy; only `trace_conversion` and the
`load()` fallbacks do.
"""

from .lazy import LazyTensor, NotStreamable
from .plan import rename_tensors, trace_conversion
from .sources import lazy_tensors
from .writer import write_safetensors

__all__ = ["LazyTensor", "NotStreamable", "lazy_tensors", "trace_conversion", "rename_tensors", "write_safetensors"]
