"""`read_checkpoint`: any checkpoint file or folder -> `CheckpointInfo`, safely and from metadata only."""

from __future__ import annotations

import os
import stat

from registry.errors import CheckpointError, RegistryError, UnsafeCheckpointError
from registry.schema import Schema

from .info import CheckpointInfo
from .layout import find_layout
from .limits import DEFAULT_LIMITS, FormatError, Limits
from .metadata import safetensors_metadata
from .sniff import HEAD_BYTES, describe, lfs_description, sniff
from .torch_pickle import RawCheckpoint
from .zipdir import FileView, PolyglotError, polyglot_prefix


def read_checkpoint(path: str | os.PathLike, *, allow_unsafe: bool = False, limits: Limits | None = None) -> CheckpointInfo:
    """Read a checkpoint's tensor names, shapes and dtypes, its layout and its plain metadata.

    Never runs code from the file and never reads tensor data: only the zip directory and the
    pickle record (torch zip), the pickles (legacy torch), the JSON header (safetensors) or the
    index and headers of a folder's model files.

    Raises `UnsafeCheckpointError` (exit 3) when the file would run code under
    `torch.load(weights_only=False)` (unless `allow_unsafe`, which reads it anyway - still
    without running anything - and says so in `warnings`), and `CheckpointError` (exit 3) when
    it is missing, corrupt, truncated, hostile or not a checkpoint.
    """
    display = os.fspath(path)
    limits = limits or DEFAULT_LIMITS
    try:
        return _read(display, allow_unsafe, limits)
    except FormatError as exc:
        raise CheckpointError(f"cannot read {display}: {exc.message}") from exc
    except RegistryError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read {display}: {exc.strerror or exc}") from exc
    except Exception as exc:  # a hostile file must end in one line, even if it found a bug here
        raise CheckpointError(
            f"cannot read {display}: unexpected {type(exc).__name__} ({str(exc)[:100]}); "
            "run with --debug and report it"
        ) from exc


def _read(display: str, allow_unsafe: bool, limits: Limits) -> CheckpointInfo:
    try:
        info = os.stat(display)
    except FileNotFoundError:
        if os.path.islink(display):
            raise FormatError(f"it is a dangling symbolic link (to {os.readlink(display)})") from None
        raise FormatError("no such file or directory") from None
    if stat.S_ISDIR(info.st_mode):
        from .folders import read_folder

        return read_folder(display, allow_unsafe=allow_unsafe, limits=limits)
    if not stat.S_ISREG(info.st_mode):
        raise FormatError("it is not a regular file (a device, pipe or socket)")
    if display.endswith(".json"):
        if display.endswith(".index.json"):
            from .folders import read_index

            return read_index(display, allow_unsafe=allow_unsafe, limits=limits)
        raise FormatError("it is a JSON file; pass the checkpoint, its folder, or its *.index.json")
    name = os.path.basename(display)
    if name == ".metadata":  # a torch.distributed.checkpoint folder's metadata: the folder is the checkpoint
        from .dcp import read_dcp

        return read_dcp(os.path.dirname(display) or ".", allow_unsafe=allow_unsafe, limits=limits)
    if name.endswith("_model_states.pt"):  # DeepSpeed: ZeRO-3 placeholders need `param_shapes`
        from .deepspeed import MODEL_STATES, read_deepspeed

        if MODEL_STATES.match(name):
            return read_deepspeed(display, allow_unsafe=allow_unsafe, limits=limits)
    fmt, raw, size = read_file(display, allow_unsafe=allow_unsafe, limits=limits)
    return build_info(display, fmt, raw, size, limits)


def read_file(display: str, *, allow_unsafe: bool, limits: Limits, expect: str | None = None) -> tuple[str, RawCheckpoint, int]:
    """(format, raw contents, size in bytes) of one checkpoint file, its format told by its bytes.

    A `.safetensors` file (or `expect="safetensors"`) is read as safetensors or refused - never
    as a pickle. Raises FormatError / UnsafeCheckpointError.
    """
    fd = os.open(display, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FormatError("it is not a regular file")
        view = FileView(fd, info.st_size)
        head = os.pread(fd, HEAD_BYTES, 0)
        kind = sniff(head)
        if expect == "safetensors" or display.endswith(".safetensors"):
            if kind != "safetensors":
                _refuse_misnamed(view, head, display, limits)
        # each format's reader is imported only when a file needs it: start-up is most of the budget
        if kind == "safetensors":
            from .safetensors_header import read_safetensors

            return "safetensors", read_safetensors(view, display, limits=limits), info.st_size
        if kind == "zip":
            from .torch_zip import read_torch_zip

            return "torch-zip", read_torch_zip(view, display, limits=limits, allow_unsafe=allow_unsafe), info.st_size
        if kind == "pickle":
            from .torch_legacy import read_torch_legacy

            return "torch-legacy", read_torch_legacy(view, display, limits=limits, allow_unsafe=allow_unsafe), info.st_size
        raise _not_a_checkpoint(kind, view, head)
    finally:
        os.close(fd)


def _not_a_checkpoint(kind: str, view: FileView, head: bytes) -> FormatError:
    if kind == "lfs":
        return FormatError(f"it is {lfs_description(head)}")
    if kind == "tar":
        return FormatError("it is an old tar-format torch checkpoint (PyTorch before 1.0), which is not read "
                           "here; load and re-save it with torch in a trusted environment")
    if kind == "empty":
        return FormatError("the file is empty")
    prefix = polyglot_prefix(view)
    if prefix is not None:
        return PolyglotError(prefix)
    return FormatError(f"it is {describe(head, view.size)}, not a checkpoint (torch zip, legacy torch or safetensors)")


def _refuse_misnamed(view: FileView, head: bytes, display: str, limits: Limits) -> None:
    """A `.safetensors` file that is something else. A pickle is scanned (never loaded) so that a
    disguised payload is named as such; the file is refused either way."""
    what = describe(head, view.size)
    if sniff(head) == "pickle":
        from .policy import Findings
        from .unpickler import MetadataUnpickler

        findings = Findings()
        data = view.read(0, min(view.size, limits.max_pickle_bytes), "the pickle")
        try:
            MetadataUnpickler(data, limits=limits, findings=findings, complete=True).load()
        except FormatError:
            pass
        reasons = findings.unsafe_reasons()
        if reasons:
            raise UnsafeCheckpointError(
                f"refusing {display}: it is a pickle disguised as safetensors, and it {'; '.join(reasons)}, which "
                "would run code under torch.load(weights_only=False); do not load it"
            )
    raise FormatError(f"it is not a safetensors file but {what}; a .safetensors file is never read as anything "
                      "else (rename it if it is a torch checkpoint)")


def build_info(display: str, fmt: str, raw: RawCheckpoint, size: int, limits: Limits,
               extra_metadata: dict | None = None) -> CheckpointInfo:
    """Layout discovery and metadata on top of a format reader's result."""
    layout = find_layout(raw.root, limits)
    metadata = dict(layout.metadata)
    warnings = list(raw.warnings) + layout.warnings
    if raw.metadata:
        strings, meta_warnings = safetensors_metadata(raw.metadata, limits)
        metadata.update(strings)
        warnings.extend(meta_warnings)
    metadata.update(extra_metadata or {})
    try:
        schema = Schema(layout.entries)
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    return CheckpointInfo(
        path=display, format=fmt, container=layout.container, wrapper=layout.wrapper, schema=schema,
        metadata=metadata, warnings=warnings, files=raw.files, size_bytes=size,
    )

