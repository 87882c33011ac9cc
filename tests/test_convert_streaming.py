"""`registry convert` streams: tensor-for-tensor what diffusers' own conversion gives (issue 13).

The reference everywhere is diffusers' pipeline as a user would run it: load the whole file with
torch, `convert_ldm_unet_checkpoint`, save. The streamed output must hold the same names, shapes,
dtypes and bytes - including for the awkward storages torch can write (strided views, several
tensors in one storage, compressed zip members, half precision) - and the fallbacks (a legacy
torch file, a converter that computes) must still convert. The built-in converter only renames,
so it streams from its own name mapping; a converter that is a plain function (a user plugin's)
is traced on meta tensors once and its plan cached.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from registry.catalog import get_builtin_variant
from registry.command.cli import main
from registry.families import get_family, make_config
from registry.readers import read_checkpoint
from registry.store import open_registry
from registry.store.variants import init_builtin_variants
from registry.streaming import LazyTensor, NotStreamable, lazy_tensors, trace_conversion, write_safetensors

PREFIX = "model.diffusion_model."


@pytest.fixture(autouse=True)
def plan_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own plan cache (never the user's)."""
    monkeypatch.setenv("REGISTRY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('stream') / 'registry.db'}"
    with open_registry(url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant(name) for name in ("ldm-unet/tiny", "diffusers-unet/tiny")])
    return url


def ldm_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny LDM UNet's state dict with informative random weights (LDM zero-inits some)."""
    variant = get_builtin_variant("ldm-unet/tiny")
    family = get_family(variant.family)
    torch.manual_seed(seed)
    model = family.build(make_config(family, variant.config))
    return {name: torch.randn_like(tensor) for name, tensor in model.state_dict().items()}


def sd_file_state(unet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Stable-Diffusion-style single file: the UNet under model.diffusion_model. beside other models."""
    state = {PREFIX + name: tensor for name, tensor in unet.items()}
    state["first_stage_model.decoder.conv_out.weight"] = torch.randn(3, 8, 3, 3)
    state["cond_stage_model.transformer.embeddings.weight"] = torch.randn(10, 4)
    return state


def diffusers_reference(path) -> dict[str, torch.Tensor]:
    """What diffusers' own function makes of the file (the pipeline users run today)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from registry.models.ldm_unet import LDMUNetConfig, diffusers_config_for

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    loaded = loaded.get("state_dict", loaded)
    config = make_config(get_family("ldm-unet"), get_builtin_variant("ldm-unet/tiny").config)
    assert isinstance(config, LDMUNetConfig)
    return convert_ldm_unet_checkpoint(loaded, diffusers_config_for(config).diffusers_kwargs())


def convert(db: str, source, out, *extra: str):
    result = CliRunner().invoke(main, ["--db", db, "convert", str(source), "--to", "diffusers-unet/tiny",
                                       "-o", str(out), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_same_tensors(path, expected: dict[str, torch.Tensor]) -> None:
    with safe_open(str(path), "pt") as handle:
        assert sorted(handle.keys()) == sorted(expected)
        for name in handle.keys():
            got, want = handle.get_tensor(name), expected[name]
            assert (got.dtype, got.shape) == (want.dtype, want.shape), name
            assert torch.equal(got, want), name


def test_an_sd_single_file_streams_to_exactly_what_diffusers_converts(db, tmp_path):
    source = tmp_path / "sd15-style.ckpt"
    torch.save({"state_dict": sd_file_state(ldm_state()), "global_step": 42}, source)
    out = tmp_path / "unet.safetensors"
    report = convert(db, source, out)
    assert (report["streamed"], report["method"], report["step"]) == (True, "ldm-unet->diffusers-unet", 42)
    assert_same_tensors(out, diffusers_reference(source))
    with safe_open(str(out), "pt") as handle:
        embedded = json.loads(handle.metadata()["registry"])
    assert (embedded["variant"], embedded["step"]) == ("diffusers-unet/tiny", 42)


def test_strided_views_shared_storages_and_half_precision_stream_exactly(db, tmp_path):
    unet = {name: tensor.half() for name, tensor in ldm_state(seed=1).items()}
    names = sorted(name for name, tensor in unet.items() if tensor.dim() == 2)
    transposed, first, second = names[0], names[1], names[2]
    unet[transposed] = unet[transposed].t().contiguous().t()  # same values, column-major strides
    assert not unet[transposed].is_contiguous()
    # two tensors viewing one storage, the second at an offset
    storage = torch.cat([unet[first].reshape(-1), unet[second].reshape(-1)])
    unet[first] = storage[: unet[first].numel()].view(unet[first].shape)
    unet[second] = storage[unet[first].numel():].view(unet[second].shape)
    source = tmp_path / "awkward.pt"
    torch.save(sd_file_state(unet), source)
    out = tmp_path / "awkward.safetensors"
    assert convert(db, source, out)["streamed"] is True
    assert_same_tensors(out, diffusers_reference(source))


def test_compressed_zip_members_are_read_through_the_safe_path(tmp_path):
    state = {"a.weight": torch.randn(4, 6), "a.bias": torch.randn(6), "b.weight": torch.arange(12).view(3, 4)}
    plain, deflated = tmp_path / "plain.pt", tmp_path / "deflated.pt"
    torch.save(state, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    tensors = lazy_tensors(read_checkpoint(deflated))
    assert all(t.load is not None for t in tensors.values())  # nothing is a byte range of the file
    out = tmp_path / "out.safetensors"
    write_safetensors(out, list(tensors.values()))
    assert_same_tensors(out, state)


def test_a_safetensors_source_streams_too(db, tmp_path):
    source = tmp_path / "sd.safetensors"
    save_file(sd_file_state(ldm_state(seed=2)), str(source))
    out = tmp_path / "from-safetensors.safetensors"
    assert convert(db, source, out)["streamed"] is True
    pt = tmp_path / "same.pt"
    torch.save(load_file(source), pt)
    assert_same_tensors(out, diffusers_reference(pt))


def test_a_legacy_torch_file_and_a_torch_output_take_the_in_memory_path(db, tmp_path):
    source = tmp_path / "legacy.pt"
    torch.save(sd_file_state(ldm_state(seed=3)), source, _use_new_zipfile_serialization=False)
    out = tmp_path / "legacy.safetensors"
    assert convert(db, source, out)["streamed"] is False
    assert_same_tensors(out, diffusers_reference(source))
    torch_out = tmp_path / "unet.pt"
    assert convert(db, source, torch_out)["streamed"] is False
    expected = diffusers_reference(source)
    got = torch.load(torch_out, weights_only=True)["model"]
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_tracing_captures_reshapes_and_splits_and_refuses_computed_tensors(tmp_path):
    real = {"attn.proj.weight": torch.randn(6, 6, 1, 1), "attn.qkv.weight": torch.randn(9, 4), "norm.bias": torch.randn(6)}
    source = tmp_path / "real.pt"
    torch.save(real, source)
    tensors = lazy_tensors(read_checkpoint(source))

    def reshape_and_split(state, _config):
        q, k, v = state["attn.qkv.weight"].chunk(3)
        return {"proj.weight": state["attn.proj.weight"][:, :, 0, 0], "to_q.weight": q, "to_k.weight": k,
                "to_v.weight": v, "norm.bias": state["norm.bias"]}

    out = tmp_path / "traced.safetensors"
    write_safetensors(out, trace_conversion(reshape_and_split, tensors, None))
    assert_same_tensors(out, reshape_and_split(real, None))

    with pytest.raises(NotStreamable, match="computes proj.weight"):
        trace_conversion(lambda state, _: {"proj.weight": state["attn.proj.weight"] * 2}, tensors, None)
    with pytest.raises(NotStreamable, match="computes t.weight"):
        trace_conversion(lambda state, _: {"t.weight": state["attn.qkv.weight"].t()}, tensors, None)


def test_a_reader_can_supply_tensors_that_load_themselves(tmp_path):
    """The API for sharded readers (DCP, DeepSpeed): name, shape, dtype and a loader per tensor."""
    parts = {"w": torch.randn(3, 5), "b": torch.randn(5).to(torch.bfloat16)}
    tensors = [LazyTensor.of(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), load=lambda t=t: t)
               for name, t in parts.items()]
    out = tmp_path / "assembled.safetensors"
    write_safetensors(out, tensors, metadata={"note": "assembled"})
    assert_same_tensors(out, parts)
    with pytest.raises(ValueError, match="w: 8 bytes loaded, 60 expected"):
        write_safetensors(tmp_path / "bad.safetensors", [LazyTensor.of("w", (3, 5), "float32", load=lambda: b"12345678")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["assembled.safetensors"]  # no temporary file left


def test_the_builtin_conversion_imports_neither_torch_nor_diffusers(db, tmp_path):
    """A renaming converter streams from its own name mapping: the whole `registry convert` process,
    run as a user runs it, never imports torch or diffusers (nor needs a plan cache)."""
    source = tmp_path / "sd.ckpt"
    torch.save({"state_dict": sd_file_state(ldm_state(seed=6)), "global_step": 7}, source)
    out = tmp_path / "unet.safetensors"
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "registry", "--db", db, "convert", str(source),
                          "--to", "diffusers-unet/tiny", "-o", str(out), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    assert "registry.streaming" in imported  # the timing really lists the modules imported
    heavy = sorted(name for name in imported if name.split(".")[0] in ("torch", "diffusers", "numpy"))
    assert heavy == []
    report = json.loads(run.stdout)
    assert (report["streamed"], report["method"], report["step"]) == (True, "ldm-unet->diffusers-unet", 7)
    assert_same_tensors(out, diffusers_reference(source))
    assert not (tmp_path / "cache").exists()  # nothing traced, nothing cached


def test_a_renaming_converter_that_has_no_name_for_an_entry_is_one_clear_line(db, tmp_path, monkeypatch):
    """A (user's) renaming converter that does not know one of the source's names: exit 1, the
    entry named, no output - streamed or in memory."""
    from registry import converters as registry_converters
    from registry.models.ldm_names import diffusers_names
    from registry.models.ldm_unet import diffusers_config_for

    def forgetful(config):
        rename = diffusers_names(config)
        return lambda name: None if name == "out.2.bias" else rename(name)

    monkeypatch.setattr(registry_converters, "_CONVERTERS", dict(registry_converters._CONVERTERS))
    registry_converters.register_renaming_converter(
        "ldm-unet->diffusers-unet", source_family="ldm-unet", target_family="diffusers-unet", exact=True,
        target_config=diffusers_config_for, renames=forgetful)
    source = tmp_path / "sd.ckpt"
    torch.save(sd_file_state(ldm_state(seed=7)), source)
    for out in ("unet.safetensors", "unet.pt"):
        result = CliRunner().invoke(main, ["--db", db, "convert", str(source), "--to", "diffusers-unet/tiny",
                                           "-o", str(tmp_path / out)])
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().splitlines() == [
            "error: ldm-unet->diffusers-unet has no target name for the entry 'out.2.bias': "
            "not a tensor of a ldm-unet with this config"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd.ckpt"]


# --- converters that are not declared as renames: traced once, the plan cached -------------------


def diffusers_function(state, config):
    """A converter as a user plugin may write one: diffusers' own function, run as it is."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from registry.models.ldm_unet import diffusers_config_for

    checkpoint = {PREFIX + name: tensor for name, tensor in state.items()}
    return convert_ldm_unet_checkpoint(checkpoint, diffusers_config_for(config).diffusers_kwargs())


@pytest.fixture
def traced(monkeypatch):
    """The built-in converter's place taken by one that must be traced (a plain function)."""
    from registry import converters as registry_converters

    [builtin] = [c for c in registry_converters.converters() if c.name == "ldm-unet->diffusers-unet"]
    replacement = dataclasses.replace(builtin, convert_state_dict=diffusers_function, renames=None,
                                      plan_depends_on=("diffusers",))
    monkeypatch.setitem(registry_converters._CONVERTERS, builtin.name, replacement)
    return replacement


def test_a_second_convert_of_the_same_layout_reuses_the_traced_plan_without_diffusers(db, tmp_path, plan_cache,
                                                                                     traced, monkeypatch):
    source = tmp_path / "sd.ckpt"
    torch.save(sd_file_state(ldm_state(seed=4)), source)
    assert convert(db, source, tmp_path / "first.safetensors")["streamed"] is True
    assert len(list((plan_cache / "plans").iterdir())) == 1
    monkeypatch.setitem(sys.modules, "diffusers.loaders.single_file_utils", None)  # importing it now fails
    assert convert(db, source, tmp_path / "again.safetensors")["streamed"] is True
    assert (tmp_path / "again.safetensors").read_bytes() == (tmp_path / "first.safetensors").read_bytes()
    monkeypatch.setenv("REGISTRY_PLAN_CACHE", "0")  # the control: without the cache it needs diffusers
    result = CliRunner().invoke(main, ["--db", db, "convert", str(source), "--to", "diffusers-unet/tiny",
                                       "-o", str(tmp_path / "control.safetensors")])
    assert result.exit_code != 0 and not (tmp_path / "control.safetensors").exists()


def test_an_unreadable_cached_plan_is_traced_again(db, tmp_path, plan_cache, traced):
    source = tmp_path / "sd.ckpt"
    torch.save(sd_file_state(ldm_state(seed=5)), source)
    convert(db, source, tmp_path / "one.safetensors")
    [cached] = (plan_cache / "plans").iterdir()
    cached.write_text('{"format": 1, "rows": [["x", "nowhere", [1], 0, 4]]}')  # a plan for other tensors
    assert convert(db, source, tmp_path / "two.safetensors")["streamed"] is True
    cached.write_text("not json")
    assert convert(db, source, tmp_path / "three.safetensors")["streamed"] is True
    assert_same_tensors(tmp_path / "three.safetensors", diffusers_reference(source))


def test_a_plan_is_keyed_by_everything_that_decides_it(monkeypatch, traced):
    from registry.streaming.plan_cache import plan_key

    tensors = {"a.weight": LazyTensor.of("a.weight", (4, 4), "float32", load=bytes)}
    key = plan_key(traced, tensors, '{"model_channels":32}')
    assert key is not None and key == plan_key(traced, dict(tensors), '{"model_channels":32}')
    assert key != plan_key(traced, tensors, '{"model_channels":64}')
    assert key != plan_key(traced, {"a.weight": LazyTensor.of("a.weight", (4, 4), "float16", load=bytes)},
                           '{"model_channels":32}')
    assert plan_key(dataclasses.replace(traced, plan_depends_on=()), tensors, "{}") is None  # undeclared: never cached
    monkeypatch.setenv("REGISTRY_PLAN_CACHE", "0")
    assert plan_key(traced, tensors, '{"model_channels":32}') is None
