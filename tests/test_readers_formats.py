"""Every checkpoint format fingerprints exactly like the live model's state_dict() (issue 3).

Checkpoints are written by the real writers (torch.save in both formats and two pickle
protocols, safetensors, diffusers' save_pretrained) from tiny built-in family models and
hand-made state dicts, and by hand where no library is installed (accelerate folders, sharded
.bin checkpoints)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from hostile.corpus import build_variant, payloads, write_safetensors
from registry.readers import read_checkpoint
from registry.schema import schema_of_module, schema_of_state_dict


class WithExtraState(nn.Module):
    """A module whose state dict holds a non-tensor `_extra_state` value."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2)

    def get_extra_state(self):
        return {"calibrated": True, "version": 2}

    def set_extra_state(self, state):
        pass


class Tricky(nn.Module):
    """Parameters, persistent and non-persistent buffers, int64/fp16/bf16/bool, zero-size,
    scalar and non-tensor (`_extra_state`) entries."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm1d(4)  # running stats + num_batches_tracked (int64)
        self.half = nn.Linear(4, 4).half()
        self.bf16 = nn.Parameter(torch.zeros(2, 3, dtype=torch.bfloat16))
        self.empty = nn.Parameter(torch.zeros(0, 4))
        self.scalar = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("mask", torch.ones(4, dtype=torch.bool))
        self.register_buffer("cache", torch.zeros(8), persistent=False)
        self.extra = WithExtraState()


MODELS = ["ctvit/tiny", "ctvit/tiny-optimized", "ldm-unet/tiny", "tricky"]


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    built = {name: build_variant(name) for name in MODELS if name != "tricky"}
    built["tricky"] = Tricky()
    return built


def write_torch(path: Path, state: dict, **kwargs) -> Path:
    torch.save(state, path, **kwargs)
    return path


WRITERS = {
    "torch-zip": lambda p, sd: write_torch(p.with_suffix(".pt"), sd),
    "torch-zip-protocol-4": lambda p, sd: write_torch(p.with_suffix(".pth"), sd, pickle_protocol=4),
    "torch-legacy": lambda p, sd: write_torch(p.with_suffix(".ckpt"), sd, _use_new_zipfile_serialization=False),
    "safetensors": lambda p, sd: write_safetensors(p.with_suffix(".safetensors"), sd),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("model_name", MODELS)
def test_file_fingerprint_equals_the_live_model(tmp_path, models, model_name, writer):
    model = models[model_name]
    path = WRITERS[writer](tmp_path / "ckpt", model.state_dict())
    info = read_checkpoint(path)
    assert info.fingerprint == schema_of_module(model).fingerprint
    assert info.schema == schema_of_state_dict(model.state_dict())  # dtypes too
    assert info.format == writer.removesuffix("-protocol-4")
    assert (info.container, info.wrapper, info.warnings) == (None, None, [])
    assert info.files == [str(path)] and info.size_bytes == path.stat().st_size


def test_tricky_entries_are_reported_as_torch_names_them(tmp_path, models):
    info = read_checkpoint(write_torch(tmp_path / "t.pt", models["tricky"].state_dict()))
    rows = {name: (shape, dtype) for name, shape, dtype in info.schema.as_rows()}
    assert rows["norm.num_batches_tracked"] == ([], "int64")
    assert rows["half.weight"] == ([4, 4], "float16") and rows["bf16"] == ([2, 3], "bfloat16")
    assert rows["empty"] == ([0, 4], "float32") and rows["mask"] == ([4], "bool")
    assert "cache" not in rows and "extra._extra_state" not in rows
    assert info.schema.dtypes == {"bfloat16": 1, "bool": 1, "float16": 2, "float32": 11, "int64": 1}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Sparse invariant checks:UserWarning",
                            "ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.parametrize("legacy", [False, True])
def test_views_quantized_sparse_meta_and_new_dtypes(tmp_path, legacy):
    base = torch.arange(12.0).reshape(3, 4)
    state = {
        "base": base, "row": base[1], "tail": base.view(-1)[5:], "transposed": base.t(),  # views of one storage
        "q": torch.quantize_per_tensor(torch.rand(3, 4), 0.1, 10, torch.quint8),
        "qc": torch.quantize_per_channel(torch.rand(3, 4), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 2]),
                                         0, torch.qint8),
        "sparse": torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, 2.0]), (3, 3)),
        "meta": torch.empty(3, 2, device="meta"),
        "u16": torch.zeros(3, dtype=torch.uint16), "f8": torch.zeros(2, dtype=torch.float8_e4m3fn),
        "complex": torch.zeros(2, dtype=torch.complex64), "param": nn.Parameter(torch.ones(5)),
    }
    model = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 4)), {nn.Linear}, dtype=torch.qint8)
    state.update({f"dynamic.{k}": v for k, v in model.state_dict().items()})  # packed params: non-tensor values
    path = write_torch(tmp_path / "odd.pt", state, _use_new_zipfile_serialization=not legacy)
    info = read_checkpoint(path)
    assert info.schema == schema_of_state_dict(state)
    assert info.format == ("torch-legacy" if legacy else "torch-zip")


def test_a_parameter_saved_outside_a_state_dict_is_a_tensor(tmp_path):
    layer = nn.Linear(3, 2)
    path = write_torch(tmp_path / "p.pt", dict(layer.named_parameters()))
    assert read_checkpoint(path).fingerprint == schema_of_module(layer).fingerprint


# --- sharded, diffusers and accelerate folders ---------------------------------------------------


def shard(state: dict, count: int) -> list[dict]:
    names = sorted(state)
    return [{n: state[n] for n in names[i::count]} for i in range(count)]


def write_sharded(folder: Path, state: dict, kind: str, count: int = 3, base: str = "model") -> Path:
    folder.mkdir(exist_ok=True)
    weight_map, ext = {}, "safetensors" if kind == "safetensors" else "bin"
    stem = base if kind == "safetensors" else ("pytorch_model" if base == "model" else base)
    for i, part in enumerate(shard(state, count), start=1):
        name = f"{stem}-{i:05d}-of-{count:05d}.{ext}"
        if kind == "safetensors":
            write_safetensors(folder / name, part)
        else:
            torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    index = folder / f"{stem}.{ext}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 123}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_sharded_checkpoints_from_the_index_or_the_folder(tmp_path, models, kind):
    model = models["ldm-unet/tiny"]
    index = write_sharded(tmp_path / "sharded", model.state_dict(), kind)
    for target in (index, index.parent):
        info = read_checkpoint(target)
        assert info.fingerprint == schema_of_module(model).fingerprint
        assert info.format == f"sharded-{kind}"
        assert len(info.files) == 3 and info.metadata["total_size"] == 123
        assert info.size_bytes == sum(Path(f).stat().st_size for f in info.files)


def test_a_shard_holding_a_tensor_the_index_puts_elsewhere_is_an_error(tmp_path, models):
    index = write_sharded(tmp_path / "bad", models["ctvit/tiny"].state_dict(), "safetensors", count=2)
    data = json.loads(index.read_text())
    first = sorted(data["weight_map"])[0]
    data["weight_map"][first] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(Exception, match=f"holds tensor '{first}' but the index puts it in model-00002"):
        read_checkpoint(index)


@pytest.fixture(scope="module")
def diffusers_unet():
    return build_variant("diffusers-unet/tiny")


@pytest.mark.parametrize("sharded", [False, True])
def test_diffusers_model_folder(tmp_path, diffusers_unet, sharded):
    folder = tmp_path / "unet"
    diffusers_unet.save_pretrained(folder, max_shard_size="100KB" if sharded else "10GB")
    info = read_checkpoint(folder)
    assert info.format == "diffusers-folder"
    assert info.fingerprint == schema_of_module(diffusers_unet).fingerprint
    assert info.metadata["config"]["_class_name"] == "UNet2DConditionModel"
    assert all(Path(f).name.startswith("diffusion_pytorch_model") for f in info.files)
    assert (len(info.files) > 1) is sharded


def test_diffusers_folder_prefers_the_full_precision_file_and_names_the_variant(tmp_path, diffusers_unet):
    folder = tmp_path / "unet"
    diffusers_unet.save_pretrained(folder)
    diffusers_unet.half().save_pretrained(folder, variant="fp16")
    diffusers_unet.float()
    info = read_checkpoint(folder)
    assert info.files == [str(folder / "diffusion_pytorch_model.safetensors")]
    assert info.warnings == ["also holds diffusion_pytorch_model.fp16.safetensors; fingerprinted "
                             "diffusion_pytorch_model.safetensors (pass another file to read it)"]


def test_a_diffusers_pipeline_folder_names_a_component(tmp_path):
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    with pytest.raises(Exception, match="pipeline folder .* e.g. .*/sd/unet"):
        read_checkpoint(tmp_path / "sd")


@pytest.mark.parametrize("safe", [True, False])
def test_accelerate_folder_reads_only_the_model_file(tmp_path, models, safe):
    folder = tmp_path / "checkpoint-300"
    folder.mkdir()
    model, second = models["ctvit/tiny"], models["tricky"]
    if safe:
        write_safetensors(folder / "model.safetensors", model.state_dict())
        write_safetensors(folder / "model_1.safetensors", second.state_dict())
    else:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
        torch.save(second.state_dict(), folder / "pytorch_model_1.bin")
    # the rest of an accelerate folder is pickles; these would run code if anything opened them
    marker = tmp_path / "opened.marker"
    evil, _ = payloads(marker)["reduce-os-system"]
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "scaler.pt"):
        (folder / name).write_bytes(evil)
    info = read_checkpoint(folder)
    assert info.format == "accelerate-folder"
    model_file = "model.safetensors" if safe else "pytorch_model.bin"
    assert info.files == [str(folder / model_file)]
    assert info.fingerprint == schema_of_module(model).fingerprint
    assert info.warnings[0].startswith(f"also holds {'model_1.safetensors' if safe else 'pytorch_model_1.bin'}")
    assert not marker.exists()


def test_a_transformers_style_folder_reads_its_single_file(tmp_path, models):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_safetensors(folder / "model.safetensors", models["tricky"].state_dict())
    torch.save(models["tricky"].state_dict(), folder / "pytorch_model.bin")
    info = read_checkpoint(folder)
    assert info.format == "safetensors" and info.files == [str(folder / "model.safetensors")]
    assert info.path == str(folder)


def test_the_readers_never_import_torch_or_numpy():
    import subprocess
    import sys

    code = "import sys, registry.readers; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ))
    assert out.stdout.strip() == "[]"
