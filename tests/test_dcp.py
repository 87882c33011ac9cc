"""torch.distributed.checkpoint folders (issue 16): read from `.metadata` only, never run, never the shards.

The real folders are written once by two gloo processes (`dcp_writer.py`): FSDP2-sharded
`ctvit/tiny` and `ldm-unet/tiny` (`{"model": ..., "optim": ...}` from `get_state_dict`) and a plain
model in torchtitan's flat layout, each beside its single-file twin. Hostile `.metadata` files are
built from a small single-process save: a payload that would create a marker under torch's own
reader (a control proves it does), a huge chunk list and shape lies, each refused with exit 3 and
one line, in bounded memory.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from registry.catalog import get_builtin_variant
from registry.readers import read_checkpoint
from registry.store import open_registry
from registry.store.variants import init_builtin_variants

HERE = Path(__file__).parent
VARIANTS = ["ctvit/tiny", "ldm-unet/tiny", "diffusers-unet/tiny"]


def registry_cli(*args: str, db: str | None = None, memory: int | None = None) -> subprocess.CompletedProcess:
    def bound():
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = dict(os.environ)
    if db:
        env["REGISTRY_DB"] = db
    return subprocess.run([sys.executable, "-m", "registry.command.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300, preexec_fn=bound)


# --- real folders from two processes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dcp")
    done = subprocess.run([sys.executable, str(HERE / "dcp_writer.py"), str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def db(written) -> str:
    url = f"sqlite:///{written / 'registry.db'}"
    with open_registry(url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant(v) for v in VARIANTS])
    return url


FOLDERS = {"ctvit": "ctvit/step-1", "unet": "unet/step-1", "plain": "plain/checkpoint-1"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_a_dcp_folder_fingerprints_as_its_single_file_twin(written, name):
    result = registry_cli("fingerprint", str(written / FOLDERS[name]), str(written / f"{name}.pt"), "--json")
    assert result.returncode == 0, result.stderr
    folder, twin = json.loads(result.stdout)
    assert folder["fingerprint"] == twin["fingerprint"]
    assert folder["entries"] == twin["entries"] and folder["parameters"] == twin["parameters"]
    assert folder["format"] == "dcp-folder"
    assert folder["step"] == 1  # from the folder's name
    assert folder["files"] == [str(written / FOLDERS[name] / ".metadata")]  # the shards are never read
    assert folder["metadata"]["dcp"]["shards"] == 2
    if name == "plain":  # torchtitan: the model at the top level beside optimizer.* FQNs
        assert folder["container"] is None and folder["metadata"]["dcp"]["other_state"] == ["optimizer"]
    else:
        assert folder["container"] == "model" and folder["metadata"]["dcp"]["other_state"] == ["optim"]


@pytest.mark.slow
def test_match_finds_the_variant_of_each_folder(written, db):
    for folder, variant in [("ctvit/step-1", "ctvit/tiny"), ("unet/step-1", "ldm-unet/tiny")]:
        result = registry_cli("match", str(written / folder), "--json", db=db)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert (answer["status"], answer["variant"]) == ("exact", variant)
    # the .metadata file names its folder
    result = registry_cli("match", str(written / "ctvit/step-1/.metadata"), "--json", db=db)
    assert json.loads(result.stdout)["variant"] == "ctvit/tiny"


@pytest.mark.slow
def test_resuming_loads_the_global_tensors_through_torchs_dcp_loader(written, db):
    from registry.latest import latest_checkpoint
    from registry.training.resume import plan_resume

    found = latest_checkpoint(written / "ctvit")
    assert (found.path, found.step) == (written / "ctvit/step-1", 1)
    twin = torch.load(written / "ctvit.pt", weights_only=True)
    with open_registry(db) as reg:
        plan = plan_resume(reg, str(found.path))
    assert (plan.variant, plan.step) == ("ctvit/tiny", 1)
    assert plan.state_dict.keys() == twin.keys()
    assert all(torch.equal(plan.state_dict[k], twin[k]) for k in twin)
    from registry.families import get_family, make_config

    family = get_family("ctvit")
    model = family.build(make_config(family, plan.config))
    model.load_state_dict(plan.state_dict, strict=True)  # the strict load a trainer does


@pytest.mark.slow
def test_an_ldm_unet_dcp_folder_is_converted_on_load_as_single_files_are(written, db):
    from registry.training.resume import plan_resume

    with open_registry(db) as reg:
        from_folder = plan_resume(reg, str(written / "unet/step-1"), family="diffusers-unet")
        from_file = plan_resume(reg, str(written / "unet.pt"), family="diffusers-unet")
    assert from_folder.variant == "diffusers-unet/tiny" and from_folder.conversion is not None
    assert from_folder.state_dict.keys() == from_file.state_dict.keys()
    assert all(torch.equal(from_folder.state_dict[k], from_file.state_dict[k]) for k in from_file.state_dict)


@pytest.mark.slow
def test_convert_writes_one_safetensors_file_equal_to_the_model(written, db, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ctvit.safetensors"
    result = registry_cli("convert", str(written / "ctvit/step-1"), "--to", "ctvit/tiny", "-o", str(out), "--json",
                          db=db)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["streamed"] is True  # tensor by tensor through torch's DCP loader
    twin = torch.load(written / "ctvit.pt", weights_only=True)
    converted = load_file(out)
    assert converted.keys() == twin.keys() and all(torch.equal(converted[k], twin[k]) for k in twin)

    # LDM UNet -> diffusers, from the folder and from its single-file twin: the same tensors
    outputs = []
    for source in ("unet/step-1", "unet.pt"):
        outputs.append(tmp_path / f"{source.replace('/', '-')}.safetensors")
        result = registry_cli("convert", str(written / source), "--to", "diffusers-unet/tiny", "-o", str(outputs[-1]),
                              db=db)
        assert result.returncode == 0, result.stderr
    from_folder, from_file = (load_file(path) for path in outputs)
    assert from_folder.keys() == from_file.keys()
    assert all(torch.equal(from_folder[k], from_file[k]) for k in from_file)


@pytest.mark.slow
def test_scan_records_each_folder_as_one_checkpoint(written, db):
    result = registry_cli("scan", str(written), "--json", db=db)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    paths = sorted(c["path"] for c in report["checkpoints"])
    assert paths == sorted([str(written / f) for f in FOLDERS.values()] + [str(written / f"{n}.pt") for n in FOLDERS])
    assert report["skipped"] == []
    formats = {c["path"]: (c["format"], c["status"]) for c in report["checkpoints"]}
    assert formats[str(written / "ctvit/step-1")] == ("dcp-folder", "exact")


# --- hostile .metadata, from a small single-process save ------------------------------------------------


@pytest.fixture
def small(tmp_path) -> Path:
    """A DCP folder of a small model, written without a process group (one `.distcp`)."""
    import torch.distributed.checkpoint as dcp

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    folder = tmp_path / "step-5"
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(folder))
    return folder


def metadata_of(folder: Path):
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(folder)).read_metadata()


def write_metadata(folder: Path, metadata) -> None:
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


class Payload:
    """Unpickling it runs a shell command (as a hostile .metadata would)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def refused(folder: Path, *needles: str) -> str:
    result = registry_cli("fingerprint", str(folder), memory=1 << 30)
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_a_small_folder_reads_and_its_metadata_path_names_it(small):
    info = read_checkpoint(small)
    assert info == read_checkpoint(small / ".metadata")
    assert (info.format, info.container, info.step, len(info.schema)) == ("dcp-folder", "model", 5, 4)


def test_a_metadata_over_a_torch_files_pickle_bound_loads_what_was_checked(small, monkeypatch):
    """.metadata has 4x a data.pkl's bounds (one chunk record per tensor per rank); the load must
    hand torch those very bytes, not a second read cut at the smaller bound."""
    from registry.readers.limits import DEFAULT_LIMITS
    from registry.sharded_load import load_dcp

    expected = load_dcp(str(small))
    monkeypatch.setattr(DEFAULT_LIMITS, "max_pickle_bytes", (small / ".metadata").stat().st_size // 2)
    loaded = load_dcp(str(small))
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_a_payload_in_metadata_runs_under_torch_but_never_here(small, tmp_path):
    marker = tmp_path / "ran.marker"
    metadata = metadata_of(small)
    metadata.storage_meta.checkpoint_id = Payload(f"touch {marker}")
    write_metadata(small, metadata)
    control = subprocess.run([sys.executable, "-c", "import sys\nfrom torch.distributed.checkpoint import "
                              "FileSystemReader\nFileSystemReader(sys.argv[1]).read_metadata()", str(small)],
                             capture_output=True, timeout=120)
    assert control.returncode == 0 and marker.exists(), "the payload is dead, so this test tests nothing"
    marker.unlink()
    line = refused(small, f"refusing {small / '.metadata'}: .metadata calls posix.system")
    assert line == (f"error: refusing {small / '.metadata'}: .metadata calls posix.system, which would run code under "
                    "torch.distributed.checkpoint.load; do not load it unless you trust its source (--allow-unsafe "
                    "fingerprints it without running anything)")
    assert not marker.exists()


def test_a_bare_payload_pickle_named_metadata_is_refused(small, tmp_path):
    marker = tmp_path / "ran.marker"
    (small / ".metadata").write_bytes(pickle.dumps(Payload(f"touch {marker}")))
    refused(small, "calls posix.system")
    assert not marker.exists()


def test_a_huge_chunk_list_is_refused_in_bounded_memory(small):
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    metadata = metadata_of(small)
    entry = metadata.state_dict_metadata["model.0.weight"]
    chunk = ChunkStorageMetadata(offsets=torch.Size([0, 0]), sizes=torch.Size([8, 4]))
    entry.chunks = [chunk] * 3_000_000  # one memoized object, three million references
    write_metadata(small, metadata)
    refused(small, "'model.0.weight' is split into 3,000,000 chunks")


@pytest.mark.parametrize("lie, message", [
    ("gap", "do not tile"), ("overlap", "two chunks overlap"), ("outside", "lies outside its global shape"),
    ("negative", "has a negative size"), ("dimensions", "but a chunk of 1 dimensions"),
])
def test_a_shape_lie_is_refused(small, lie, message):
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    def chunk(offsets, sizes):
        return ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))

    metadata = metadata_of(small)
    entry = metadata.state_dict_metadata["model.0.weight"]  # global shape [8, 4]
    entry.chunks = {
        "gap": [chunk([0, 0], [4, 4])],
        "overlap": [chunk([0, 0], [4, 4]), chunk([2, 0], [4, 4])],  # rows 2-3 twice, rows 6-7 never
        "outside": [chunk([0, 0], [8, 4]), chunk([8, 0], [1, 4])],
        "negative": [chunk([0, 0], [8, 4]), chunk([4, 0], [-4, 4])],
        "dimensions": [chunk([0], [32])],
    }[lie]
    write_metadata(small, metadata)
    refused(small, message)


def test_shard_files_counted_in_the_folder_are_bounded_as_named_ones_are(small):
    from registry.errors import CheckpointError
    from registry.readers.limits import Limits

    metadata = metadata_of(small)
    metadata.storage_data = None  # a custom storage writer: the reader counts the *.distcp files instead
    write_metadata(small, metadata)
    (small / "__1_0.distcp").write_bytes(b"")
    assert read_checkpoint(small, limits=Limits(max_shards=2)).metadata["dcp"]["shards"] == 2
    with pytest.raises(CheckpointError, match="more than 1 shard files"):
        read_checkpoint(small, limits=Limits(max_shards=1))


def test_a_negative_global_shape_is_refused(small):
    metadata = metadata_of(small)
    metadata.state_dict_metadata["model.0.bias"].size = torch.Size([-8])
    write_metadata(small, metadata)
    refused(small, "'model.0.bias': the global shape [-8] has a negative size")


def test_a_missing_shard_and_an_optimizer_only_folder_are_refused(small, tmp_path):
    (small / "__0_0.distcp").rename(tmp_path / "moved.distcp")
    (small / "__1_0.distcp").write_bytes(b"")  # a folder is a DCP folder by its .distcp files
    refused(small, "shard __0_0.distcp named by .metadata is missing")

    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    folder = tmp_path / "optimizer_0"  # accelerate's FSDP optimizer folder
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"optimizer": optimizer.state_dict()}, checkpoint_id=str(folder))
    refused(folder, "it holds no model tensors (only optimizer)")


def test_lightning_sharded_folders_and_fsdp_wrapper_names(tmp_path):
    """Lightning's FSDP strategy (`state_dict_type="sharded"`) saves `{"model": ..., "optimizer_0": ...}`
    into `epoch=E-step=S.ckpt/` with the trainer state in `meta.pt`; FSDP1 and torch.compile leave
    `_fsdp_wrapped_module.` / `_orig_mod.` in names when a state dict is taken from the wrapped module."""
    import torch.distributed.checkpoint as dcp

    from registry.latest import latest_checkpoint
    from registry.tensors import load_state_dict

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    wrapped = {f"_orig_mod.{name.replace('.', '._fsdp_wrapped_module.', 1)}": tensor
               for name, tensor in model.state_dict().items()}
    assert "_orig_mod.0._fsdp_wrapped_module.weight" in wrapped
    folder = tmp_path / "epoch=2-step=30.ckpt"
    optimizer = {"state": {"0.weight": {"exp_avg": torch.zeros(8, 4)}}, "param_groups": [{"lr": 0.1}]}
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model": wrapped, "optimizer_0": optimizer}, checkpoint_id=str(folder))
    torch.save({"global_step": 30, "epoch": 2, "hyper_parameters": {"width": 8}}, folder / "meta.pt")

    info = read_checkpoint(folder)
    assert info.fingerprint == read_checkpoint(_saved(tmp_path, model)).fingerprint
    assert (info.container, info.wrapper, info.step, info.metadata["epoch"]) == (
        "model", "_orig_mod._fsdp_wrapped_module.", 30, 2)
    assert info.metadata["dcp"]["other_state"] == ["optimizer_0"]
    state = load_state_dict(info)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    found = latest_checkpoint(tmp_path)
    assert (found.path, found.style, found.step) == (folder, "lightning", 30)


def _saved(tmp_path: Path, model) -> Path:
    path = tmp_path / "single.pt"
    torch.save(model.state_dict(), path)
    return path


def test_an_accelerate_fsdp_checkpoint_is_its_checkpoint_folder(tmp_path):
    """Accelerate with SHARDED_STATE_DICT: `checkpoint-N/pytorch_model_fsdp_0/` holds `{"model": ...}`,
    `checkpoint-N/optimizer_0/` holds `{"optimizer": ...}`, both DCP folders, beside RNG states."""
    import torch.distributed.checkpoint as dcp

    from registry.latest import latest_checkpoint
    from registry.scan import find_checkpoints
    from registry.tensors import load_state_dict

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    root = tmp_path / "checkpoint-3"
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(root / "pytorch_model_fsdp_0"))
        dcp.save({"optimizer": optimizer.state_dict()}, checkpoint_id=str(root / "optimizer_0"))
    torch.save({"step": 3}, root / "random_states_0.pkl")

    info = read_checkpoint(root)
    assert (info.path, info.format, info.step) == (str(root), "dcp-folder", 3)
    assert info.fingerprint == read_checkpoint(_saved(tmp_path, model)).fingerprint
    assert all(torch.equal(load_state_dict(info)[k], v) for k, v in model.state_dict().items())
    assert latest_checkpoint(tmp_path).path == root
    assert (latest_checkpoint(root).path, latest_checkpoint(root).step) == (root, 3)  # --resume checkpoint-3
    assert find_checkpoints(str(tmp_path)) == ([str(root), str(tmp_path / "single.pt")], [])


@pytest.mark.slow
def test_the_metadata_of_a_256_rank_job_reads(tmp_path):
    """300 tensors sharded over 256 ranks: 76,800 chunk records, ~10 MB of .metadata."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    ranks, entries, storage = 256, {}, {}
    for index in range(300):
        fqn = f"model.layers.{index}.weight"
        chunks = [ChunkStorageMetadata(offsets=torch.Size([r * 2, 0]), sizes=torch.Size([2, 8])) for r in range(ranks)]
        for rank, chunk in enumerate(chunks):
            storage[MetadataIndex(fqn, chunk.offsets, rank)] = _StorageInfo(f"__{rank}_0.distcp", index * 64, 64)
        entries[fqn] = TensorStorageMetadata(TensorProperties(dtype=torch.bfloat16), torch.Size([ranks * 2, 8]), chunks)
    planner = {fqn: ("model", fqn[len("model."):]) for fqn in entries}
    folder = tmp_path / "step-9"
    folder.mkdir()
    write_metadata(folder, Metadata(entries, planner_data=planner, storage_data=storage, version="1.0.0"))
    for rank in range(ranks):
        (folder / f"__{rank}_0.distcp").write_bytes(b"")
    info = read_checkpoint(folder)
    assert (len(info.schema), info.parameters, info.metadata["dcp"]["shards"]) == (300, 300 * 512 * 8, 256)


def test_shards_without_metadata_are_an_interrupted_save(small, tmp_path):
    from registry.scan import find_checkpoints

    (small / ".metadata").unlink()  # torch renames .metadata into place last
    refused(small, ".metadata is missing, so it is not a complete DCP checkpoint")
    assert find_checkpoints(str(small.parent))[0] == [str(small)]  # scan names it (and skips it with that line)
