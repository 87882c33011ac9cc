"""torch's zip checkpoint format (`torch.save` since 1.6): the directory and `data.pkl` only.

Layout of a torch zip: every member under one top-level folder `<archive>/`: `data.pkl` (the
pickle), `data/<key>` (one member per storage, raw bytes), `version`, `byteorder`,
`.format_version`, `.storage_alignment`, `.data/serialization_id`. Storage members are checked
from the directory alone (present, large enough); their bytes are never read.
"""

from __future__ import annotations

from registry.errors import UnsafeCheckpointError

from .limits import FormatError, Limits
from .policy import Findings
from .records import StorageRef
from .torch_pickle import RawCheckpoint, check_views, storage_from_pid
from .unpickler import MetadataUnpickler
from .zipdir import FileView, read_directory, read_member

_KNOWN_MEMBERS = {"data.pkl", "version", ".data/version", "byteorder", ".data/serialization_id",
                  ".format_version", ".storage_alignment"}


def read_torch_zip(view: FileView, display: str, *, limits: Limits, allow_unsafe: bool) -> RawCheckpoint:
    """The unpickled `data.pkl` of a torch zip checkpoint, storages checked against the directory.

    Raises FormatError (corrupt or not a torch checkpoint), LimitError, or UnsafeCheckpointError
    (the pickle would run code, or the file is a TorchScript archive).
    """
    members = read_directory(view, limits)
    if not members:
        raise FormatError("the zip archive is empty")
    root = _archive_root(members)
    if f"{root}constants.pkl" in members or any(name.startswith(f"{root}code/") for name in members):
        raise UnsafeCheckpointError(
            f"refusing {display}: it is a TorchScript archive (torch.jit.save), which torch.load hands to "
            "torch.jit.load to run its code; load it with torch.jit.load only if you trust its source, and "
            "save a state_dict() for the registry"
        )
    record = members.get(f"{root}data.pkl")
    if record is None:
        raise FormatError(f"the zip has no {root}data.pkl, so it is not a torch checkpoint")
    warnings = []
    unexpected = []
    for name in members:
        relative = name[len(root):]
        if relative.endswith(".pkl") and relative != "data.pkl":
            raise FormatError(
                f"the zip holds a second pickle {name!r} besides data.pkl; torch.save writes one, and a file "
                "that tools can read differently is refused"
            )
        if relative not in _KNOWN_MEMBERS and not relative.startswith("data/"):
            unexpected.append(name)
    if unexpected:
        warnings.append(f"unexpected zip members (not read): {', '.join(unexpected[:5])}"
                        + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))

    storages: dict[str, StorageRef] = {}

    def persistent_load(pid):
        ref, _view = storage_from_pid(pid, legacy=False)
        known = storages.get(ref.key)
        if known is not None:
            # torch.save refuses to write one storage viewed as two dtypes, so this is corruption
            if (known.nbytes, known.dtype) != (ref.nbytes, ref.dtype):
                raise FormatError(f"storage {ref.key!r} is declared twice with different types or sizes")
            return known
        member = members.get(f"{root}data/{ref.key}")
        if member is None:
            raise FormatError(f"storage {ref.key!r} named by data.pkl is missing from the archive")
        if member.usize < ref.nbytes:
            raise FormatError(f"storage {ref.key!r} holds {member.usize:,} bytes; data.pkl says it has {ref.nbytes:,}")
        storages[ref.key] = ref
        return ref

    data = read_member(view, record, limits.max_pickle_bytes)
    findings = Findings()
    machine = MetadataUnpickler(data, limits=limits, findings=findings, persistent_load=persistent_load)
    try:
        value = machine.load()
    except FormatError:
        findings.verdict(display, allow_unsafe=allow_unsafe)  # an unsafe file is reported as such first
        raise
    warnings[:0] = findings.verdict(display, allow_unsafe=allow_unsafe)
    if machine.stop_at != len(data):
        warnings.append(f"data.pkl has {len(data) - machine.stop_at:,} bytes after its end (ignored)")
    check_views(machine.tensors)
    return RawCheckpoint(root=value, files=[display], warnings=warnings)


def _archive_root(members) -> str:
    """The one top-level folder all members live in (`archive/`); torch reads only that one."""
    first = next(iter(members))
    root = first.split("/", 1)[0] + "/"
    strays = [name for name in members if not name.startswith(root) or name == root]
    if "/" not in first or strays:
        raise FormatError(
            "zip members are not all under one top-level folder "
            f"({first!r} and {strays[0]!r}); torch checkpoints keep everything under one"
            if strays else f"zip member {first!r} is not under a top-level folder, as torch checkpoints are"
        )
    return root

