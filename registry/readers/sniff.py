"""What a file is, from its first bytes - so the right reader runs and a wrong file is named."""

from __future__ import annotations

import re
import struct

HEAD_BYTES = 512

_PROTOCOL0 = re.compile(rb"^(c[\w.]+\n[\w.]+\n|[(\]}][(\]}SVIFLNXUTKJMcdlt.])")
_LFS = b"version https://git-lfs.github.com/spec/"
_OTHER_MAGICS = [
    (b"\x1f\x8b", "a gzip-compressed file; decompress it first"),
    (b"\x93NUMPY", "a NumPy .npy array, not a checkpoint"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras/TensorFlow weights?), not a PyTorch checkpoint"),
    (b"GGUF", "a GGUF file (llama.cpp), not a PyTorch checkpoint"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable (ELF)"),
]


def sniff(head: bytes) -> str:
    """One of: zip, pickle, safetensors, lfs, tar, empty, other."""
    if not head:
        return "empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(_LFS):
        return "lfs"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack_from("<Q", head)[0] >= 2:
        return "safetensors"
    if _PROTOCOL0.match(head):
        return "pickle"
    return "other"


def describe(head: bytes, size: int) -> str:
    """A phrase naming what the file is, for an error message ("an HTML page (a failed download?)")."""
    kind = sniff(head)
    if kind == "empty":
        return "an empty file"
    if kind == "zip":
        return "a zip archive (a torch checkpoint?)"
    if kind == "pickle":
        return "a pickle (a torch checkpoint?)"
    if kind == "safetensors":
        return "a safetensors file"
    if kind == "tar":
        return "a tar archive"
    if kind == "lfs":
        return lfs_description(head)
    for magic, text in _OTHER_MAGICS:
        if head.startswith(magic):
            return text
    stripped = head.lstrip()
    if stripped[:1] == b"<":
        return "an HTML/XML page (a failed download?)"
    if stripped[:1] in (b"{", b"["):
        return "a JSON or text file"
    if size < 64:
        return f"a {size}-byte file of unknown format"
    return f"an unknown format (first bytes {head[:8].hex(' ')})"


def lfs_description(head: bytes) -> str:
    """`a Git LFS pointer (oid sha256:ab12..., 3.4 GB)`: the checkpoint itself was never fetched."""
    text = head.decode("utf-8", "replace")
    oid = re.search(r"^oid (\S+)", text, re.M)
    size = re.search(r"^size (\d+)", text, re.M)
    details = ", ".join(filter(None, [oid and oid.group(1)[:20] + "...", size and f"{int(size.group(1)):,} bytes"]))
    return f"a Git LFS pointer file ({details}), not the checkpoint; run `git lfs pull` to fetch it"
