"""`registry convert`: turn a checkpoint into one a registered variant loads strictly.

The source file is never modified. The result's fingerprint is verified against the target
variant's latest schema version before a byte is written. A `.safetensors` output from a torch
zip or safetensors source is streamed (`registry.streaming`): names are converted by the
converter's own renaming function (a renaming converter: no model code runs, torch is not
imported) or by running the converter once on meta tensors (any other converter), bytes are
copied by the kernel, memory stays flat. Other outputs, and converters that compute tensors, go
through memory (load, convert, save).

Nothing is half-written: the output is written to a temporary file and fsynced, the conversion
is recorded in the registry (a checkpoint row and an event, one transaction), and only then is
the file renamed into place. A failed recording (read-only database, ...) removes the temporary
file; an interrupt during recording and rename is deferred until both are done.

Output path rules: `-o DIR` or `-o DIR/` for an existing folder writes `DIR/<source stem>.safetensors`;
an output whose folder does not exist is refused (exit 2), never created.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .converters import ConversionError, Converter, RenameRules, converters  # ConversionError: also importable from here
from .diff import diff_schemas
from .errors import UsageError
from .families import get_family, make_config
from .matching import CONVERTIBLE, EXACT, match_checkpoint
from .readers import CheckpointInfo, read_checkpoint
from .schema import Schema, TensorEntry, schema_of_state_dict, short_form
from .tensors import REGISTRY_KEY, load_state_dict, save_checkpoint

# (stage, done, total): stages "reading", "matching", "converting" carry no counts; "writing" counts bytes.
Progress = Callable[[str, int, int], None]


class OutputError(UsageError):
    """The output path cannot be written (missing folder, no permission, disk full): exit 2."""


@dataclass(frozen=True)
class Conversion:
    source: str
    output: str
    variant: str
    schema_version: int
    fingerprint: str
    method: str  # a converter's name, "rename", or "extract" (a sub-model taken out as it is)
    exact: bool
    step: int | None
    streamed: bool = False  # written tensor by tensor from the source file (never all in memory)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Method:
    """How `info` becomes the target: renames, a sub-model taken as it is, or a converter."""

    name: str  # "rename", "extract" or the converter's name
    exact: bool
    prefix: str = ""
    renames: RenameRules | None = None
    converter: Converter | None = None
    source_config: Any = None


def matched_converter(match: Any) -> tuple[Converter, Any]:
    """The converter a `convertible` match names, and the checkpoint's own config to convert from."""
    converter = next(c for c in converters() if c.name == match.converter)
    return converter, make_config(get_family(converter.source_family), match.source_config)


def conversion_method(reg: Any, info: CheckpointInfo, variant: str, renames: RenameRules | None = None) -> Method:
    """The way `info` converts into `variant`. Raises `ConversionError` when neither the renames nor
    a registered converter produce the target's schema."""
    target_sv = reg.latest_schema_version(variant)
    if renames and renames.rules:
        renamed = renames.apply_to_schema(info.schema)
        if renamed.fingerprint != target_sv.fingerprint:
            lines = diff_schemas(reg.load_schema(target_sv.id), renamed).lines(limit=3)
            raise ConversionError(
                f"after the renames the checkpoint still differs from {variant}: {'; '.join(lines)}"
            )
        return Method("rename", True, renames=renames)
    match = match_checkpoint(reg, info, variant=variant)
    if match.status == EXACT:
        return Method("extract", True, prefix=match.prefix)
    if match.status == CONVERTIBLE:
        converter, source_config = matched_converter(match)
        return Method(converter.name, converter.exact, match.prefix, converter=converter, source_config=source_config)
    hint = match.suggestions[0] if match.suggestions else None
    summary = "; ".join(match.diff.lines(limit=2)) if match.diff else "no registered converter applies"
    raise ConversionError(f"no converter turns {info.path} into {variant}: {summary}", hint=hint)


def named_target_method(reg: Any, info: CheckpointInfo, variant: str) -> Method | None:
    """The method for a named target from registered facts alone, or None to ask full matching.

    The checkpoint (or a sub-model of it) already has the target's fingerprint: extract it. Or it
    has the fingerprint of a registered variant of a converter's source family, and the converter
    maps that variant's config onto the target's config: convert with it. No model is built (full
    matching builds the target on the meta device, seconds for an SD UNet); the result is still
    verified against the target's fingerprint before a byte is written.
    """
    from .families import config_dict

    target_sv = reg.latest_schema_version(variant)
    prefixes = {"": info.fingerprint, **{sub.prefix: sub.fingerprint for sub in info.submodels()}}
    for prefix, fingerprint in prefixes.items():
        if fingerprint == target_sv.fingerprint:
            return Method("extract", True, prefix=prefix)
    target = reg.require_variant(variant)
    candidates = [c for c in converters() if c.target_family == target.family]
    if not candidates:
        return None
    target_config = config_dict(make_config(get_family(target.family), target.config))
    registered = reg.find_by_fingerprints(prefixes.values())
    for converter in candidates:
        for prefix, fingerprint in prefixes.items():
            for sv in registered.get(fingerprint, []):
                if sv.family != converter.source_family:
                    continue
                source_config = make_config(get_family(sv.family), reg.require_variant(sv.variant).config)
                if config_dict(converter.target_config(source_config)) == target_config:
                    return Method(converter.name, converter.exact, prefix, converter=converter, source_config=source_config)
    return None


def converted_state_dict(reg: Any, info: CheckpointInfo, variant: str, renames: RenameRules | None = None) -> tuple[dict, str, bool]:
    """The state dict of `info` converted for `variant` (in memory), the method used, and whether it is exact."""
    method = conversion_method(reg, info, variant, renames)
    return _state_in_memory(info, method), method.name, method.exact


def _state_in_memory(info: CheckpointInfo, method: Method) -> dict:
    if method.renames is not None:
        return method.renames.apply_to_state_dict(load_state_dict(info))
    state = load_state_dict(info, prefix=method.prefix)
    return method.converter.convert_state_dict(state, method.source_config) if method.converter else state


def _streamed_tensors(info: CheckpointInfo, method: Method, allow_unsafe: bool) -> list | None:
    """The target tensors as byte ranges of the source file, or None when only memory can convert it."""
    from .streaming import NotStreamable, lazy_tensors, rename_tensors

    try:
        tensors = lazy_tensors(info, allow_unsafe=allow_unsafe)
        if method.renames is not None:
            try:
                return rename_tensors(tensors, method.renames.rename)
            except ValueError as exc:  # two names mapped onto one
                raise UsageError(f"--rename {exc}") from None
        cut = len(method.prefix)
        inner = {name[cut:]: t.renamed(name[cut:]) for name, t in tensors.items() if name.startswith(method.prefix)}
        if method.converter is None:
            return list(inner.values())
        if method.converter.renames is not None:  # a pure rename: no tracing, no torch
            try:
                return rename_tensors(inner, method.converter.renamer(method.source_config))
            except ValueError as exc:  # two names mapped onto one
                raise ConversionError(f"{method.converter.name} {exc}") from None
        from .families import canonical_config_json
        from .streaming.plan import apply_plan
        from .streaming.plan_cache import cached_plan

        config_text = canonical_config_json(method.source_config)
        return apply_plan(cached_plan(method.converter, inner, method.source_config, config_text), inner)
    except NotStreamable:
        return None


def output_path(source: Path, output: str) -> Path:
    """Where `-o output` writes: a file path, or `<folder>/<source stem>.safetensors` for an
    existing folder. Raises `OutputError` when the folder does not exist or is not writable."""
    target = Path(output).absolute()
    if target.is_dir():
        name = source.name[: -len(".index.json")] if source.name.endswith(".index.json") else source.name
        target = target / (Path(name).stem + ".safetensors")
    elif output.endswith(("/", os.sep)):
        raise OutputError(f"output folder {output} does not exist", hint=f"create it first: mkdir -p {output}")
    folder = target.parent
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write {output}: {folder} is a file, not a folder")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist", hint=f"create it first: mkdir -p {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {folder}: permission denied")
    return target


class _DeferredInterrupts:
    """Holds Ctrl-C from `hold()` to `release()` (recording + rename: no row without its file),
    then raises the KeyboardInterrupt it held back."""

    def __init__(self) -> None:
        self.previous: Any = None
        self.caught = False

    def hold(self) -> None:
        try:
            self.previous = signal.signal(signal.SIGINT, self._catch)
        except ValueError:  # not the main thread, which is the one Python delivers signals to
            self.previous = None

    def _catch(self, *_: Any) -> None:
        self.caught = True

    def release(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
        if self.caught:
            self.caught = False
            raise KeyboardInterrupt


def convert_checkpoint(
    reg: Any,
    path: str,
    *,
    to: str,
    output: str,
    renames: RenameRules | None = None,
    allow_unsafe: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> Conversion:
    """Convert `path` for variant `to`, write it at `output` (see the module's path rules), record it.

    Returns what was done. Raises `UsageError`/`OutputError` (exit 2) for a bad variant or output
    path, `CheckpointError` (exit 3) for an unreadable source, `ConversionError` (exit 1) when no
    conversion reaches the target, `DatabaseError` (exit 4) when recording fails - in every case
    nothing is left at `output`.
    """
    report = progress or (lambda stage, done, total: None)
    source = Path(path).resolve()
    target = output_path(source, output)
    if source == target.resolve():
        raise UsageError("the output must be a new file: the source checkpoint is never modified")
    if target.exists() and not force:
        raise UsageError(f"{target} exists", hint="choose another -o path, or pass --force to replace it")
    variant = reg.require_variant(to)
    target_sv = reg.latest_schema_version(to)
    if target_sv is None:
        raise UsageError(f"variant {to!r} has no schema version yet", hint="run `registry init` or `registry variants bump`")

    report("reading", 0, 0)
    info = read_checkpoint(str(source), allow_unsafe=allow_unsafe)
    report("matching", 0, 0)
    method = None if renames and renames.rules else named_target_method(reg, info, to)
    method = method or conversion_method(reg, info, to, renames)
    report("converting", 0, 0)
    streamed = _streamed_tensors(info, method, allow_unsafe) if target.suffix == ".safetensors" else None
    if streamed is not None:
        schema = Schema(TensorEntry(t.name, t.shape, t.dtype) for t in streamed)
    else:
        state = _state_in_memory(info, method)
        schema = schema_of_state_dict(state)
    fingerprint = schema.fingerprint
    if fingerprint != target_sv.fingerprint:  # a converter bug must never produce a mislabeled file
        raise ConversionError(
            f"conversion produced {short_form(fingerprint)}, not {to}'s {short_form(target_sv.fingerprint)}; nothing written"
        )
    step = info.step
    metadata = {
        "variant": to,
        "family": variant.family,
        "config": variant.config,
        "fingerprint": fingerprint,
        "step": step,
        "converted_from": {"path": str(source), "fingerprint": info.schema.fingerprint, "method": method.name},
    }

    def record(tmp: Path) -> None:
        stat = os.stat(tmp)  # the rename keeps size and mtime: this is the final file's identity
        reg.register_checkpoint(
            str(target),
            size=stat.st_size,
            mtime=stat.st_mtime,
            format="safetensors" if target.suffix == ".safetensors" else "torch-zip",
            container=None if target.suffix == ".safetensors" else "model",
            wrapper=None,
            prefix="",
            fingerprint=fingerprint,
            step=step,
            schema_version_id=target_sv.id,
            converted_from={"source": str(source), "source_fingerprint": info.schema.fingerprint,
                            "method": method.name, "exact": method.exact},
        )

    interrupts = _DeferredInterrupts()

    def record_deferring_interrupts(tmp: Path) -> None:
        interrupts.hold()  # released in the finally below, after the rename
        record(tmp)

    try:
        if streamed is not None:
            from .streaming import write_safetensors

            write_safetensors(target, streamed, metadata={REGISTRY_KEY: json.dumps(metadata)},
                              progress=lambda done, total: report("writing", done, total),
                              before_rename=record_deferring_interrupts)
        else:
            save_checkpoint(target, state, metadata, before_rename=record_deferring_interrupts)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        interrupts.release()
    return Conversion(str(source), str(target), to, target_sv.version, fingerprint, method.name, method.exact, step,
                      streamed is not None)
