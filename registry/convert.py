"""`registry convert`: turn a checkpoint into one a registered variant loads strictly.

The source file is never modified; the output is written atomically, its fingerprint is verified
against the target variant's latest schema version before it is written, and the conversion is
recorded in the registry (a checkpoint row and an event naming source, converter and target).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .converters import Converter, RenameRules, converters
from .diff import diff_schemas
from .errors import RegistryError, UsageError
from .families import get_family, make_config
from .matching import CONVERTIBLE, EXACT, match_checkpoint
from .readers import CheckpointInfo, read_checkpoint
from .schema import schema_of_state_dict, short_form
from .tensors import load_state_dict, save_checkpoint


class ConversionError(RegistryError):
    """No converter (or the given renames) turns the checkpoint into the target: a negative answer."""

    exit_code = 1


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

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def matched_converter(match: Any) -> tuple[Converter, Any]:
    """The converter a `convertible` match names, and the checkpoint's own config to convert from."""
    converter = next(c for c in converters() if c.name == match.converter)
    return converter, make_config(get_family(converter.source_family), match.source_config)


def converted_state_dict(reg: Any, info: CheckpointInfo, variant: str, renames: RenameRules | None = None) -> tuple[dict, str, bool]:
    """The state dict of `info` converted for `variant`, the method used, and whether it is exact.

    Raises `ConversionError` when neither the renames nor a registered converter produce the
    target's schema.
    """
    target_sv = reg.latest_schema_version(variant)
    if renames and renames.rules:
        renamed = renames.apply_to_schema(info.schema)
        if renamed.fingerprint != target_sv.fingerprint:
            lines = diff_schemas(reg.load_schema(target_sv.id), renamed).lines(limit=3)
            raise ConversionError(
                f"after the renames the checkpoint still differs from {variant}: {'; '.join(lines)}"
            )
        return renames.apply_to_state_dict(load_state_dict(info)), "rename", True

    match = match_checkpoint(reg, info, variant=variant)
    if match.status == EXACT:
        return load_state_dict(info, prefix=match.prefix), "extract", True
    if match.status == CONVERTIBLE:
        converter, source_config = matched_converter(match)
        state = converter.convert_state_dict(load_state_dict(info, prefix=match.prefix), source_config)
        return state, converter.name, converter.exact
    hint = match.suggestions[0] if match.suggestions else None
    summary = "; ".join(match.diff.lines(limit=2)) if match.diff else "no registered converter applies"
    raise ConversionError(f"no converter turns {info.path} into {variant}: {summary}", hint=hint)


def convert_checkpoint(
    reg: Any,
    path: str,
    *,
    to: str,
    output: str,
    renames: RenameRules | None = None,
    allow_unsafe: bool = False,
    force: bool = False,
) -> Conversion:
    """Convert `path` for variant `to`, write `output` atomically, record it; returns what was done."""
    source, target = Path(path).resolve(), Path(output).resolve()
    if source == target:
        raise UsageError("the output must be a new file: the source checkpoint is never modified")
    if target.exists() and not force:
        raise UsageError(f"{output} exists", hint="choose another -o path, or pass --force to replace it")
    variant = reg.require_variant(to)
    target_sv = reg.latest_schema_version(to)
    if target_sv is None:
        raise UsageError(f"variant {to!r} has no schema version yet", hint="run `registry init` or `registry variants bump`")

    info = read_checkpoint(str(source), allow_unsafe=allow_unsafe)
    state, method, exact = converted_state_dict(reg, info, to, renames)
    fingerprint = schema_of_state_dict(state).fingerprint
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
        "converted_from": {"path": str(source), "fingerprint": info.schema.fingerprint, "method": method},
    }
    save_checkpoint(target, state, metadata)
    stat = os.stat(target)
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
        converted_from={"source": str(source), "source_fingerprint": info.schema.fingerprint, "method": method, "exact": exact},
    )
    return Conversion(str(source), str(target), to, target_sv.version, fingerprint, method, exact, step)

