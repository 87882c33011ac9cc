"""What `read_checkpoint` returns: a checkpoint's schema, layout and metadata, and its sub-models."""

from __future__ import annotations

from typing import Any

from registry.schema import FINGERPRINT_PREFIX, FrozenValue, Schema, sha256, short_form

# Plain classes rather than dataclasses: `registry fingerprint` imports this module, and generating
# dataclass methods at import time is a measurable part of that command's budget (see FrozenValue).


class SubModel(FrozenValue):
    """The entries beneath one module prefix (`model.diffusion_model.`), prefix stripped. Immutable."""

    __match_args__ = ("prefix", "fingerprint", "entries")
    prefix: str
    fingerprint: str
    entries: int

    def __init__(self, prefix: str, fingerprint: str, entries: int):
        object.__setattr__(self, "prefix", prefix)
        object.__setattr__(self, "fingerprint", fingerprint)
        object.__setattr__(self, "entries", entries)

    def _key(self) -> tuple[str, str, int]:
        return (self.prefix, self.fingerprint, self.entries)

    @property
    def short(self) -> str:
        return short_form(self.fingerprint)


class CheckpointInfo:
    """A checkpoint read without running its code or reading its tensor data.

    `format`: torch-zip | torch-legacy | safetensors | sharded-safetensors | sharded-bin |
    diffusers-folder | accelerate-folder | dcp-folder (torch.distributed.checkpoint) |
    deepspeed-folder. `container`: the key holding the state dict (None: top level; `outer/inner`
    when nested). `wrapper`: the prefix stripped from every key (`module.`,
    `_orig_mod.`, `module._orig_mod.`) or None. `schema`: the entries after both. `metadata`:
    JSON-ready top-level values besides the state dict (`step`, `epoch`, `registry`, ...).
    `files`: the files read. `size_bytes`: bytes on disk of the model files.
    """

    __match_args__ = ("path", "format", "container", "wrapper", "schema", "metadata", "warnings", "files",
                      "size_bytes")
    __hash__ = None  # mutable, compared by value

    def __init__(self, path: str, format: str, container: str | None, wrapper: str | None, schema: Schema,
                 metadata: dict[str, Any], warnings: list[str], files: list[str], size_bytes: int):
        self.path = path
        self.format = format
        self.container = container
        self.wrapper = wrapper
        self.schema = schema
        self.metadata = metadata
        self.warnings = warnings
        self.files = files
        self.size_bytes = size_bytes
        self._submodels: list[SubModel] | None = None

    def _key(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"CheckpointInfo({fields})"

    @property
    def fingerprint(self) -> str:
        return self.schema.fingerprint

    @property
    def short(self) -> str:
        return self.schema.short

    @property
    def parameters(self) -> int:
        """Elements over all entries: a checkpoint cannot tell parameters from buffers."""
        return self.schema.numel

    @property
    def embedded(self) -> dict[str, Any]:
        """The registry record our trainer or `registry convert` embedded ({} when there is none)."""
        record = self.metadata.get("registry")
        return record if isinstance(record, dict) else {}

    @property
    def embedded_run_id(self) -> str | None:
        """The run id the embedded record names (not checked against any registry)."""
        run_id = self.embedded.get("run_id")
        return run_id if isinstance(run_id, str) else None

    @property
    def step(self) -> int | None:
        """The training step the checkpoint records (`step`, `global_step`, or the registry record's)."""
        for value in (self.metadata.get("step"), self.metadata.get("global_step"), self.embedded.get("step")):
            if type(value) is int:
                return value
            if type(value) is str and value.isdigit():
                return int(value)
        return None

    def submodels(self) -> list[SubModel]:
        """Every module prefix (`a.`, `a.b.`, ...) with the fingerprint and entry count of the
        entries beneath it, prefix stripped; sorted by prefix. Computed once, in one pass."""
        if self._submodels is None:
            self._submodels = submodels_of(self.schema)
        return self._submodels


def submodels_of(schema: Schema) -> list[SubModel]:
    """One pass over the sorted entries. Names sharing a prefix are contiguous in sorted order and
    keep their order once it is stripped, so each prefix's canonical text (DESIGN §3) is the
    stripped lines of one run of entries, hashed as they stream past."""
    done: list[SubModel] = []
    open_: list[list[Any]] = []  # [prefix, hasher, count], outermost first

    def close(upto: int) -> None:
        while len(open_) > upto:
            prefix, hasher, count = open_.pop()
            done.append(SubModel(prefix, FINGERPRINT_PREFIX + hasher.hexdigest(), count))

    for entry in schema.entries:
        prefixes = []
        end = entry.name.find(".")
        while end >= 0:
            prefixes.append(entry.name[:end + 1])
            end = entry.name.find(".", end + 1)
        keep = 0
        while keep < len(open_) and keep < len(prefixes) and open_[keep][0] == prefixes[keep]:
            keep += 1
        close(keep)
        open_.extend([prefix, sha256(), 0] for prefix in prefixes[keep:])
        line = entry.canonical_line()
        for item in open_:
            item[1].update(line[len(item[0]):].encode("utf-8"))
            item[2] += 1
    close(0)
    done.sort(key=lambda sub: sub.prefix)
    return done
