"""`registry match`, `resolve` and `convert` on real tiny checkpoints: every status (issue 5)."""

from __future__ import annotations

import json
import shlex

import pytest
import torch
import yaml
from click.testing import CliRunner

from registry.catalog import get_builtin_variant
from registry.command.cli import main
from registry.families import get_family, make_config
from registry.schema import schema_of_state_dict
from registry.store import open_registry
from registry.store.variants import init_builtin_variants
from registry.tensors import save_checkpoint

VARIANTS = ["ctvit/tiny", "ctvit/tiny-swiglu", "ctvit/tiny-ctclip", "ldm-unet/tiny", "diffusers-unet/tiny"]


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('match') / 'registry.db'}"
    with open_registry(url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant(name) for name in VARIANTS])
    return url


def build(variant_name: str, seed: int = 0, **overrides):
    variant = get_builtin_variant(variant_name)
    family = get_family(variant.family)
    torch.manual_seed(seed)
    model = family.build(make_config(family, {**variant.config, **overrides}))
    for parameter in model.parameters():  # LDM zero-inits residual outputs: make outputs informative
        torch.nn.init.normal_(parameter, std=0.02)
    return model.eval()


def match(db: str, path, *args: str):
    result = CliRunner().invoke(main, ["--db", db, "match", str(path), "--json", *args])
    return result, json.loads(result.stdout) if result.stdout.startswith("{") else None


def test_exact_match_finds_the_ctvit_inside_a_ct_clip_file(db, tmp_path):
    state = {f"visual_transformer.{k}": v for k, v in build("ctvit/tiny-ctclip").state_dict().items()}
    state.update({"temperature": torch.tensor(1.0), "to_text_latent.weight": torch.zeros(8, 12),
                  "text_transformer.embeddings.word_embeddings.weight": torch.zeros(30, 12)})
    path = tmp_path / "ct_clip.pt"
    torch.save(state, path)
    result, answer = match(db, path)
    assert result.exit_code == 0, result.output
    assert (answer["status"], answer["variant"], answer["prefix"]) == ("exact", "ctvit/tiny-ctclip", "visual_transformer.")
    assert answer["evidence"] == "fingerprint"


def test_an_sd_style_file_matches_the_ldm_unet_and_converts_to_diffusers(db, tmp_path):
    state = {f"model.diffusion_model.{k}": v for k, v in build("ldm-unet/tiny").state_dict().items()}
    state["first_stage_model.decoder.conv_in.weight"] = torch.zeros(4, 4, 3, 3)
    state["cond_stage_model.transformer.final_layer_norm.weight"] = torch.zeros(32)
    path = tmp_path / "sd_style.ckpt"
    torch.save({"state_dict": state, "global_step": 15000}, path)

    result, answer = match(db, path)
    assert result.exit_code == 0, result.output
    assert (answer["status"], answer["variant"], answer["prefix"]) == ("exact", "ldm-unet/tiny", "model.diffusion_model.")

    result, answer = match(db, path, "--family", "diffusers-unet")
    assert result.exit_code == 0, result.output
    assert (answer["status"], answer["variant"], answer["converter"]) == (
        "convertible", "diffusers-unet/tiny", "ldm-unet->diffusers-unet")


def test_geglu_and_swiglu_checkpoints_are_ambiguous_never_a_silent_pick(db, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(build("ctvit/tiny").state_dict(), path)
    result, answer = match(db, path)
    assert result.exit_code == 1
    assert answer["status"] == "ambiguous"
    assert sorted(c["variant"] for c in answer["candidates"]) == ["ctvit/tiny", "ctvit/tiny-swiglu"]

    result, answer = match(db, path, "--variant", "ctvit/tiny-swiglu")
    assert (result.exit_code, answer["status"], answer["variant"]) == (0, "exact", "ctvit/tiny-swiglu")


def test_embedded_metadata_settles_the_ambiguity_and_a_mislabel_is_reported(db, tmp_path):
    state = build("ctvit/tiny").state_dict()
    fingerprint = schema_of_state_dict(state).fingerprint
    labelled = tmp_path / "labelled.pt"
    save_checkpoint(labelled, state, {"variant": "ctvit/tiny-swiglu", "fingerprint": fingerprint, "step": 7})
    result, answer = match(db, labelled)
    assert (result.exit_code, answer["status"], answer["variant"], answer["evidence"]) == (
        0, "exact", "ctvit/tiny-swiglu", "embedded")

    mislabeled = tmp_path / "mislabeled.safetensors"
    save_checkpoint(mislabeled, state, {"variant": "ctvit/tiny", "fingerprint": "sha256:" + "0" * 64})
    result, answer = match(db, mislabeled)
    assert answer["status"] == "ambiguous"
    assert answer["warnings"][0].startswith("mislabeled file: its embedded registry metadata says ctvit/tiny (000000000000)")


def test_the_registrys_record_of_a_file_is_evidence(db, tmp_path):
    import os

    path = tmp_path / "recorded.pt"
    torch.save(build("ctvit/tiny").state_dict(), path)
    stat = os.stat(path)
    with open_registry(db) as reg:
        version = reg.latest_schema_version("ctvit/tiny")
        reg.register_checkpoint(str(path), size=stat.st_size, mtime=stat.st_mtime, format="torch-zip", container=None,
                                wrapper=None, prefix="", fingerprint=version.fingerprint, schema_version_id=version.id)
    result, answer = match(db, path)
    assert (result.exit_code, answer["variant"], answer["evidence"]) == (0, "ctvit/tiny", "record")


def test_a_renamed_module_is_explained_by_one_rule_and_the_suggested_convert_fixes_it(db, tmp_path):
    original = build("ctvit/tiny").state_dict()
    old_names = {k.replace(".to_q.", ".query."): v for k, v in original.items()}
    path = tmp_path / "refactored.pt"
    torch.save({"model_state_dict": old_names, "epoch": 3}, path)

    result, answer = match(db, path)
    assert result.exit_code == 1
    assert answer["status"] == "none"
    assert answer["candidates"][0]["variant"] == "ctvit/tiny"
    assert answer["diff"]["rename_rules"] == [[".query.", ".to_q."]]
    assert answer["diff"]["groups"][0]["summary"].startswith("4 entries explained by renaming `.query.` → `.to_q.`")
    suggestion = answer["suggestions"][0]
    assert suggestion.startswith(f"registry convert {path} --to ctvit/tiny --rename '.query.=.to_q.' -o ")

    out = tmp_path / "fixed.safetensors"
    args = shlex.split(suggestion)[1:]
    args[args.index("-o") + 1] = str(out)
    converted = CliRunner().invoke(main, ["--db", db, *args])
    assert converted.exit_code == 0, converted.output
    from safetensors.torch import load_file

    model = build("ctvit/tiny", seed=1)
    model.load_state_dict(load_file(out), strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    result, answer = match(db, out, "--variant", "ctvit/tiny")
    assert (answer["status"], answer["evidence"]) == ("exact", "embedded")


def test_a_refactor_that_renamed_most_entries_still_ranks_its_source_first(db, tmp_path):
    # Every transformer entry renamed: the untouched entries alone look more like the smaller
    # CT-CLIP layout; the rename must count as closeness, or the source ranks below it.
    original = build("ctvit/tiny").state_dict()
    renamed = {k.replace("_transformer.layers.", "_transformer.blocks."): v for k, v in original.items()}
    assert sum(k not in original for k in renamed) > len(renamed) / 2
    path = tmp_path / "blocks.pt"
    torch.save(renamed, path)

    result, answer = match(db, path)
    assert answer["status"] == "none"
    assert [c["variant"] for c in answer["candidates"][:2]] == ["ctvit/tiny", "ctvit/tiny-swiglu"]
    assert answer["diff"]["rename_rules"] == [[".blocks.", ".layers."]]
    assert answer["suggestions"][0].startswith(f"registry convert {path} --to ctvit/tiny --rename ")


def test_an_unregistered_ctvit_config_is_inferred_and_can_be_registered(db, tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(build("ctvit/tiny", dim=48, heads=3).state_dict(), path)
    result, answer = match(db, path)
    assert result.exit_code == 0, result.output
    assert (answer["status"], answer["family"], answer["config"]["dim"], answer["config"]["heads"]) == (
        "inferred", "ctvit", 48, 3)
    command = answer["suggestions"][0].split("#")[0]
    assert command.startswith("registry variants add ctvit/NAME --family ctvit ")
    args = shlex.split(command.replace("ctvit/NAME", "ctvit/tiny-wide"))[1:]
    added = CliRunner().invoke(main, ["--db", db, *args])
    assert added.exit_code == 0, added.output
    result, answer = match(db, path)
    assert (answer["status"], answer["variant"]) == ("exact", "ctvit/tiny-wide")


def test_a_checkpoint_nothing_resembles_is_none_with_exit_1(db, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3), "head.bias": torch.zeros(3)}, path)
    result, answer = match(db, path)
    assert (result.exit_code, answer["status"]) == (1, "none")
    human = CliRunner().invoke(main, ["--db", db, "match", str(path)])
    assert human.exit_code == 1
    assert human.stdout.startswith(f"none: no registered build loads {path}")


def test_resolve_writes_the_config_the_trainer_builds(db, tmp_path):
    path = tmp_path / "ldm.pt"
    torch.save(build("ldm-unet/tiny").state_dict(), path)
    out = tmp_path / "config.yaml"
    result = CliRunner().invoke(main, ["--db", db, "resolve", str(path), "--family", "diffusers-unet", "-o", str(out)])
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(out.read_text())
    assert (document["family"], document["variant"], document["converter"]) == (
        "diffusers-unet", "diffusers-unet/tiny", "ldm-unet->diffusers-unet")
    assert document["config"]["block_out_channels"] == [32, 64]


def test_ldm_to_diffusers_conversion_gives_equal_outputs(db, tmp_path):
    ldm = build("ldm-unet/tiny", seed=3)
    source = tmp_path / "ldm_unet.pt"
    torch.save({"state_dict": ldm.state_dict(), "global_step": 1234}, source)
    before = source.read_bytes()
    out = tmp_path / "unet.safetensors"
    result = CliRunner().invoke(main, ["--db", db, "convert", str(source), "--to", "diffusers-unet/tiny", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["method"], report["exact"], report["step"]) == ("ldm-unet->diffusers-unet", True, 1234)
    assert source.read_bytes() == before  # the source is never modified

    from safetensors.torch import load_file

    diffusers_unet = build("diffusers-unet/tiny", seed=9)
    state = load_file(out)
    with open_registry(db) as reg:
        assert schema_of_state_dict(state).fingerprint == reg.latest_schema_version("diffusers-unet/tiny").fingerprint
        assert any(e.action == "checkpoint.convert" for e in reg.events())
    diffusers_unet.load_state_dict(state, strict=True)
    torch.manual_seed(0)
    sample, context = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    timesteps = torch.tensor([10, 500])
    with torch.no_grad():
        expected = ldm(sample, timesteps, context)
        actual = diffusers_unet(sample, timesteps, context).sample
    assert (expected - actual).abs().max().item() <= 1e-5


def test_convert_refuses_to_overwrite_and_names_a_missing_converter(db, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(build("ctvit/tiny").state_dict(), path)
    same = CliRunner().invoke(main, ["--db", db, "convert", str(path), "--to", "ctvit/tiny", "-o", str(path)])
    assert (same.exit_code, same.stderr) == (2, "error: the output must be a new file: the source checkpoint is never modified\n")
    nowhere = CliRunner().invoke(main, ["--db", db, "convert", str(path), "--to", "ldm-unet/tiny", "-o", str(tmp_path / "x.pt")])
    assert nowhere.exit_code == 1
    assert nowhere.stderr.startswith(f"error: no converter turns {path} into ldm-unet/tiny: ")
    assert not (tmp_path / "x.pt").exists()
