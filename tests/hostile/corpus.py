"""Hostile and corrupt checkpoints, built in a test's tmp_path (and two helpers for ordinary ones).

Every code-execution payload, unpickled by `pickle.loads` or `torch.load(weights_only=False)`,
creates its marker file; `test_readers_hostile.py` proves that (a control run) and then that the
registry never does. Pickles are written opcode by opcode, so each technique is exactly what it
claims to be.
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."  # legacy torch magic number pickle
PROTOCOL = b"\x80\x02M\xe9\x03."  # legacy protocol version 1001
SYS_INFO = b"\x80\x02}q\x00(X\x0d\x00\x00\x00little_endianq\x01\x88u."


def text(value: str) -> bytes:
    """BINUNICODE."""
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def short(value: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    raw = value.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def glob(module: str, name: str) -> bytes:
    """GLOBAL."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def binbytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def payloads(marker: Path, helper_module: str = "evil_helpers") -> dict[str, tuple[bytes, str]]:
    """Technique name -> (pickle that creates `marker` when unpickled, the global our error names)."""
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    one, two = b"\x85", b"\x86"
    system = b"\x80\x02" + glob("os", "system") + text(cmd) + one + b"R."
    return {
        "reduce-os-system": (system, "os.system"),
        "reduce-posix-system": (b"\x80\x02" + glob("posix", "system") + text(cmd) + one + b"R.", "posix.system"),
        "subprocess-call": (b"\x80\x02" + glob("subprocess", "call") + b"](" + text("touch") + text(str(marker))
                            + b"e" + one + b"R.", "subprocess.call"),
        "builtins-eval": (b"\x80\x02" + glob("builtins", "eval") + text(code) + one + b"R.", "builtins.eval"),
        "builtins-exec": (b"\x80\x02" + glob("builtins", "exec") + text(code) + one + b"R.", "builtins.exec"),
        "getattr-import-chain": (b"\x80\x02" + glob("builtins", "getattr") + glob("builtins", "__import__")
                                 + text("os") + one + b"R" + text("system") + two + b"R" + text(cmd) + one + b"R.",
                                 "builtins.getattr"),
        "protocol0-inst": (b"(S'" + cmd.encode() + b"'\nios\nsystem\n.", "os.system"),
        "protocol0-obj": (b"(cos\nsystem\nS'" + cmd.encode() + b"'\no.", "os.system"),
        "build-setstate": (b"\x80\x02" + glob("argparse", "Namespace") + b")\x81N}" + text("__setstate__")
                           + glob("os", "system") + b"s" + two + b"b" + text(cmd) + b"b.", "os.system"),
        "append-attribute": (b"\x80\x02" + glob("argparse", "Namespace") + b")\x81N}" + text("append")
                             + glob(helper_module, "run") + b"s" + two + b"b" + text(cmd) + b"a.",
                             f"{helper_module}.run"),
        "stack-global-protocol4": (b"\x80\x04" + short("os") + short("system") + b"\x93" + text(cmd) + one + b"R.",
                                   "os.system"),
        "dotted-name-through-pathlib": (b"\x80\x04" + short("pathlib") + short("os.system") + b"\x93" + text(cmd)
                                        + one + b"R.", "pathlib.os.system"),
        "runpy-run-code": (b"\x80\x02" + glob("runpy", "_run_code") + text(code) + b"}" + two + b"R.",
                           "runpy._run_code"),
        "pydoc-locate": (b"\x80\x02" + glob("pydoc", "locate") + text("os.system") + one + b"R" + text(cmd)
                         + one + b"R.", "pydoc.locate"),
        "importlib-methodcaller": (b"\x80\x02" + glob("operator", "methodcaller") + text("system") + text(cmd) + two
                                   + b"R" + glob("importlib", "import_module") + text("os") + one + b"R" + one
                                   + b"R.", "operator.methodcaller"),
        "functools-partial": (b"\x80\x02" + glob("functools", "partial") + glob("os", "system") + text(cmd) + two
                              + b"R)R.", "functools.partial"),
        "nested-pickle-loads": (b"\x80\x03" + glob("pickle", "loads") + binbytes(system) + one + b"R.",
                                "pickle.loads"),
        "unknown-module-function": (b"\x80\x02" + glob(helper_module, "run") + text(cmd) + one + b"R.",
                                    f"{helper_module}.run"),
    }


def helper_module_source() -> str:
    """An innocent-looking module a hostile checkpoint ships beside itself (`evil_helpers.run`)."""
    return "import os\n\ndef run(command):\n    os.system(command)\n"


def torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None,
              extra: dict[str, bytes] | None = None, root: str = "archive") -> Path:
    """A torch zip checkpoint written by hand (what torch.save writes, without torch)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", data_pkl)
        archive.writestr(f"{root}/byteorder", "little")
        for key, raw in (storages or {}).items():
            archive.writestr(f"{root}/data/{key}", raw)
        for name, raw in (extra or {}).items():
            archive.writestr(name, raw)
        archive.writestr(f"{root}/version", "3\n")
    return path


def legacy_file(path: Path, *pickles: bytes) -> Path:
    path.write_bytes(b"".join(pickles))
    return path


def tensor_pickle(shape=(2, 3), numel: int = 6, key: str = "0", storage_class: str = "FloatStorage",
                  name: str = "w") -> bytes:
    """data.pkl of `{name: tensor}` viewing storage `key` (contiguous, offset 0), as torch writes it."""
    stride = []
    step = 1
    for size in reversed(shape):
        stride.insert(0, step)
        step *= size
    ints = lambda values: b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"  # noqa: E731
    return (b"\x80\x02}(" + text(name) + glob("torch._utils", "_rebuild_tensor_v2")
            + b"((" + text("storage") + glob("torch", storage_class) + text(key) + text("cpu")
            + b"J" + struct.pack("<i", numel) + b"tQ" + b"K\x00" + ints(shape) + ints(stride) + b"\x89"
            + glob("collections", "OrderedDict") + b")Rt" + b"Ru.")


def deep_lists(depth: int) -> bytes:
    """A pickle of lists nested `depth` deep, built through the memo (constant stack height)."""
    body = io.BytesIO()
    body.write(b"\x80\x02]r\x00\x00\x00\x00")
    for i in range(1, depth):
        body.write(b"0]j" + struct.pack("<I", i - 1) + b"ar" + struct.pack("<I", i))
    body.write(b".")
    return body.getvalue()


def laughs(levels: int, fan: int = 10) -> bytes:
    """Memo amplification: level i is a list holding level i-1 `fan` times (fan**levels leaves)."""
    body = io.BytesIO()
    body.write(b"\x80\x02" + text("A" * 1000) + b"r\x00\x00\x00\x00")
    for i in range(1, levels + 1):
        body.write(b"0](" + (b"j" + struct.pack("<I", i - 1)) * fan + b"er" + struct.pack("<I", i))
    body.write(b".")
    return body.getvalue()


def safetensors_bytes(header: bytes, data: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def patch_uncompressed_size(path: Path, member: str, size: int) -> None:
    """Make a zip lie about `member`'s uncompressed size, in its local and central headers."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
        central = archive.start_dir
    raw = bytearray(path.read_bytes())
    struct.pack_into("<L", raw, info.header_offset + 22, size)
    pos = central
    while raw[pos:pos + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<3H", raw, pos + 28)
        if raw[pos + 46:pos + 46 + name_len] == member.encode():
            struct.pack_into("<L", raw, pos + 24, size)
        pos += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(raw))


def write_safetensors(path: Path, state: dict, metadata: dict | None = None) -> Path:
    """`state`'s tensors as a safetensors file (non-tensor values dropped, shared storage copied)."""
    import torch
    from safetensors.torch import save_file

    tensors = {k: v.detach().clone().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, str(path), metadata=metadata)
    return path


def build_variant(name: str):
    """A live model of a built-in variant (`ctvit/tiny`), seeded so repeated builds agree."""
    import torch

    from registry.catalog import get_builtin_variant
    from registry.families import get_family, make_config

    variant = get_builtin_variant(name)
    family = get_family(variant.family)
    torch.manual_seed(0)
    return family.build(make_config(family, variant.config))
