"""Nearest-match candidate retrieval: MinHash sketches of a schema's features, banded for LSH.

Similarity of two schemas is the Jaccard index of their feature sets. A schema's features are
- every entry name (`n:blocks.0.attn.to_q.weight`), and
- every entry's last two name segments with its shape and an occurrence number
  (`s:to_q.weight[512,512]#3`), so a renamed parent module (`.attn.` -> `.self_attn.`) still
  looks structurally alike while a changed shape does not.

The sketch is one-permutation MinHash (64 slots of a 64-bit blake2b hash, empty slots filled by
rotation from the next slot), packed as 64 big-endian uint32. The 64 slots form 32 bands of 2;
each band hashes to a signed 64-bit bucket stored in `schema_sketch_bands`. Two schemas with
Jaccard J share at least one bucket with probability 1-(1-J^2)^32: 0.73 at J=0.2, 0.99 at J=0.4.

Frozen: stored sketches depend on every constant here (migration 0003 backfills with it).
"""

from __future__ import annotations

import hashlib
import operator
import struct
from functools import lru_cache
from typing import Iterable

from registry.schema import Schema

SLOTS = 64
ROWS_PER_BAND = 2
BANDS = SLOTS // ROWS_PER_BAND
_EMPTY = 0xFFFFFFFF
_PACK = struct.Struct(f">{SLOTS}I")


def features(schema: Schema) -> set[str]:
    """The feature set whose Jaccard index defines schema similarity."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for entry in schema.entries:
        found.add("n:" + entry.name)
        leaf = ".".join(entry.name.rsplit(".", 2)[-2:])
        key = f"{leaf}[{','.join(map(str, entry.shape))}]"
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        found.add(f"s:{key}#{occurrence}")
    return found


@lru_cache(maxsize=1 << 18)
def _hash64(feature: str) -> int:
    return int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")


def sketch(feature_set: Iterable[str]) -> bytes:
    """The packed MinHash sketch of a feature set (all slots empty for an empty set)."""
    slots = [_EMPTY] * SLOTS
    for feature in feature_set:
        h = _hash64(feature)
        slot = h & (SLOTS - 1)
        value = (h >> 6) & 0xFFFFFFFF
        if value < slots[slot]:
            slots[slot] = value
    if any(v == _EMPTY for v in slots) and any(v != _EMPTY for v in slots):
        filled = list(slots)
        for i in range(SLOTS):
            if slots[i] != _EMPTY:
                continue
            step = 1
            while slots[(i + step) % SLOTS] == _EMPTY:
                step += 1
            # Offset by the distance so borrowed values differ from the slot they came from.
            filled[i] = (slots[(i + step) % SLOTS] + step * 0x9E3779B1) & 0xFFFFFFFF
        slots = filled
    return _PACK.pack(*slots)


def unpack(sketch_bytes: bytes) -> tuple[int, ...]:
    return _PACK.unpack(sketch_bytes)


def bands(sketch_bytes: bytes) -> list[int]:
    """The LSH bucket of each band: signed 64-bit integers (what a BIGINT column holds)."""
    buckets = []
    for band in range(BANDS):
        chunk = sketch_bytes[band * 4 * ROWS_PER_BAND : (band + 1) * 4 * ROWS_PER_BAND]
        digest = hashlib.blake2b(bytes([band]) + chunk, digest_size=8).digest()
        buckets.append(int.from_bytes(digest, "big", signed=True))
    return buckets


def estimate(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Estimated Jaccard index from two unpacked sketches."""
    return sum(map(operator.eq, a, b)) / SLOTS


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard index of two feature sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
