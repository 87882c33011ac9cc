"""Bounds on what a reader accepts, and the internal errors readers raise.

Every bound exists so that a hostile or corrupt file ends in a clear error within bounded time and
memory. The defaults are far above what real checkpoints need (a 100,000-tensor checkpoint has a
~15 MB pickle record and ~3M pickle instructions) and far below what would hurt a shared node.
"""

from __future__ import annotations

import os
import stat

MiB = 1 << 20


class Limits:
    """Per-read bounds; `Limits(max_pickle_bytes=1 << 20)` overrides some and keeps the rest.

    A plain class rather than a dataclass: generating a 13-field dataclass costs milliseconds
    of start-up, and `registry fingerprint` is mostly start-up.
    """

    max_pickle_bytes: int = 64 * MiB  # a pickle record after decompression
    max_instructions: int = 5_000_000  # pickle opcodes per record: bounds time and objects made
    max_depth: int = 1_000  # open MARKs (nesting of tuples/lists/dicts being built)
    max_memo: int = 2_000_000  # memo entries
    max_tensors: int = 1_000_000  # tensor records in one file
    max_long_bytes: int = 1_024  # one pickled integer (checkpoints hold small ints)
    max_zip_members: int = 2_000_000
    max_central_directory_bytes: int = 256 * MiB
    max_header_bytes: int = 100 * MiB  # safetensors JSON header (the safetensors library's own cap)
    max_json_bytes: int = 64 * MiB  # index.json / config.json of folders
    max_shards: int = 100_000
    metadata_nodes: int = 2_000  # values copied into `metadata` per top-level key; the rest summarised
    metadata_depth: int = 16

    def __init__(self, **overrides: int):
        for name, value in overrides.items():
            if name.startswith("_") or not isinstance(getattr(Limits, name, None), int):
                raise TypeError(f"unknown limit {name!r}")
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"Limits({', '.join(f'{k}={v}' for k, v in vars(self).items())})"  # the overridden ones


DEFAULT_LIMITS = Limits()


class FormatError(Exception):
    """What is wrong with a file, without its path; `read_checkpoint` turns it into a `CheckpointError`.

    `message` reads after "cannot read PATH: ".
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class LimitError(FormatError):
    """A bound of `Limits` was reached: the file is hostile, corrupt or far outside normal."""


class NeedMoreData(Exception):
    """Internal: the pickle runs past the bytes read so far (the caller reads more and retries)."""


def read_capped(path: str, cap: int, what: str, *, missing: str | None = None) -> bytes:
    """The bytes of the small file `path` (a folder's JSON, a DCP `.metadata`), read only when it
    is a regular file of at most `cap` bytes; `what` names it in errors (`config.json`).

    Raises FormatError when it is missing (`missing`, else "WHAT is missing") or not a regular
    file (a FIFO would block the read), LimitError when it is larger than `cap`.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FormatError(missing or f"{what} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise FormatError(f"{what} is not a regular file")
    if info.st_size > cap:
        raise LimitError(f"{what} is {info.st_size:,} bytes, over the {cap:,}-byte limit")
    with open(path, "rb") as handle:
        return handle.read(cap + 1)


def human_bytes(count: int) -> str:
    """`3441250000` -> `3.44 GB` (decimal units, as disk tools print them)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
