"""How a schema's entries and a module signature are packed into one compressed blob each.

Format (frozen: stored blobs depend on it): zlib (level 6) of UTF-8 lines
`name<TAB>[d0,d1,...]<TAB>dtype<LF>` sorted by name for schemas, `path<TAB>class<LF>` sorted by
path for module signatures. Sorted names share long prefixes, so zlib does well on them.
"""

from __future__ import annotations

import hashlib
import zlib

from registry.schema import ModuleSignature, Schema, TensorEntry

LEVEL = 6


def schema_text(schema: Schema) -> str:
    """The uncompressed blob text: the canonical fingerprint lines plus each entry's dtype."""
    return "".join(f"{e.name}\t[{','.join(map(str, e.shape))}]\t{e.dtype}\n" for e in schema.entries)


def content_hash(text: str) -> str:
    """`sha256:<hex>` of a blob's text: identity of a schema including dtypes."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def encode_text(text: str) -> bytes:
    return zlib.compress(text.encode("utf-8"), LEVEL)


def decode_schema(blob: bytes) -> Schema:
    """The `Schema` held in a blob; raises ValueError on a corrupt blob."""
    entries = []
    for line in zlib.decompress(blob).decode("utf-8").splitlines():
        name, shape_text, dtype = line.split("\t")
        inner = shape_text[1:-1]
        shape = tuple(int(d) for d in inner.split(",")) if inner else ()
        entries.append(TensorEntry(name, shape, dtype))
    return Schema(entries)


def decode_signature(blob: bytes) -> ModuleSignature:
    """The `ModuleSignature` held in a blob (the signature's canonical text, compressed)."""
    text = zlib.decompress(blob).decode("utf-8")
    return ModuleSignature(tuple(tuple(line.split("\t", 1)) for line in text.splitlines()))  # type: ignore[misc]
