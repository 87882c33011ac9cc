"""`registry scan DIR`: which files and folders are checkpoints, and recording a folder of real
tiny checkpoints (issue 6, "Audit"): a corrupt file is named and skipped, never fatal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from registry.catalog import get_builtin_variant
from registry.command.cli import main
from registry.errors import CheckpointError, UsageError
from registry.families import get_family, make_config
from registry.readers import read_checkpoint
from registry.scan import find_checkpoints
from registry.schema import schema_of_state_dict
from registry.store import open_registry
from registry.store.variants import init_builtin_variants
from registry.tensors import save_checkpoint


def touch(root: Path, *names: str, text: str = "") -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_what_counts_as_one_checkpoint(tmp_path):
    root = tmp_path / "runs"
    touch(root, "a.pt", "B.PTH", "notes.txt", "optimizer.pt", "training_args.bin", "sub/deeper/x.ckpt",
          "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
          "unet/ema.pt", "pipeline/model_index.json", "pipeline/vae/config.json",
          "pipeline/vae/diffusion_pytorch_model.bin", "checkpoint-500/model.safetensors", "checkpoint-500/optimizer.bin",
          "checkpoint-500/scheduler.bin", "checkpoint-500/random_states_0.pkl", "sharded/model-00001-of-00002.safetensors",
          "sharded/model-00002-of-00002.safetensors", "sharded/other.bin", "outputs/model_1000.safetensors",
          "outputs/model_2000.safetensors")
    (root / "sharded/model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (root / "latest.pt").symlink_to(root / "a.pt")  # the same file twice: recorded once, under its own name
    (root / "loop").symlink_to(root, target_is_directory=True)  # never followed

    units, problems = find_checkpoints(str(root))
    assert problems == []
    assert [os.path.relpath(u, root) for u in units] == [
        "B.PTH", "a.pt", "checkpoint-500", "outputs/model_1000.safetensors", "outputs/model_2000.safetensors",
        "pipeline/vae", "sharded/model.safetensors.index.json", "sharded/other.bin", "sub/deeper/x.ckpt", "unet",
        "unet/ema.pt",
    ]


@pytest.mark.parametrize(("make", "message"), [(None, "does not exist"), ("file", "is not a directory")])
def test_scan_takes_a_folder(tmp_path, make, message):
    target = tmp_path / "target"
    if make:
        target.write_text("")
    with pytest.raises(UsageError, match=f"^{target} {message}$"):
        find_checkpoints(str(target))
    result = CliRunner().invoke(main, ["--db", f"sqlite:///{tmp_path / 'r.db'}", "scan", str(target)])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == (f"error: {target} {message}\n"
                             "hint: `registry scan` takes a folder; `registry match FILE` reads one checkpoint\n")


# --- a folder of real checkpoints ---------------------------------------------------------------


def state_of(variant_name: str) -> dict:
    variant = get_builtin_variant(variant_name)
    family = get_family(variant.family)
    return family.build(make_config(family, variant.config)).state_dict()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(db url, folder, a run id, the corrupt file's one-line error) with the folder scanned once."""
    tmp = tmp_path_factory.mktemp("scan")
    db = f"sqlite:///{tmp / 'registry.db'}"
    with open_registry(db, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant("ctvit/tiny"), get_builtin_variant("ctvit/tiny-rmsnorm")])
        run_id = reg.start_run("ctvit/tiny", schema_version_id=None, config={}, host="h", user="u").id
    root = tmp / "mixed"
    (root / "sub").mkdir(parents=True)
    (root / "unet").mkdir()
    torch.save(state_of("ctvit/tiny-rmsnorm"), root / "a.pt")
    tiny = state_of("ctvit/tiny")
    embedded = {"variant": "ctvit/tiny", "fingerprint": schema_of_state_dict(tiny).fingerprint, "run_id": run_id, "step": 7}
    save_checkpoint(root / "b.safetensors", tiny, embedded)
    torch.save({"model": torch.nn.Linear(3, 2).state_dict(), "step": 3}, root / "sub" / "c.pth")
    (root / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    (root / "notes.txt").write_text("not a checkpoint\n")
    whole = (root / "a.pt").read_bytes()
    (root / "broken.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(root / "broken.pt")
    return db, root, run_id, caught.value.message


def test_scan_records_a_folder_of_mixed_checkpoints_and_skips_a_corrupt_one(folder):
    db, root, run_id, broken = folder
    result = CliRunner().invoke(main, ["--db", db, "scan", str(root), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"skipped: {broken}\n"
    summary = json.loads(result.stdout)  # valid JSON although a file was skipped
    assert (summary["root"], summary["scanned"], summary["recorded"], summary["new"]) == (str(root), 5, 4, 4)
    assert summary["skipped"] == [{"path": str(root / "broken.pt"), "error": broken}]
    assert [(os.path.relpath(c["path"], root), c["format"], c["status"], c["variant"], c["step"])
            for c in summary["checkpoints"]] == [
        ("a.pt", "torch-zip", "exact", "ctvit/tiny-rmsnorm", None),
        ("b.safetensors", "safetensors", "exact", "ctvit/tiny", 7),
        ("sub/c.pth", "torch-zip", "none", None, 3),
        ("unet", "diffusers-folder", "none", None, None),
    ]
    assert set(summary["checkpoints"][0]) == {"path", "fingerprint", "format", "variant", "status", "step", "run_id",
                                              "new", "warnings"}

    with open_registry(db) as reg:
        records = {os.path.relpath(c.path, root): c for c in reg.list_checkpoints()}
        tiny = reg.latest_schema_version("ctvit/tiny")
    assert sorted(records) == ["a.pt", "b.safetensors", "sub/c.pth", "unet"]
    assert (records["b.safetensors"].run_id, records["b.safetensors"].schema_version_id) == (run_id, tiny.id)
    assert (records["a.pt"].variant, records["a.pt"].run_id) == ("ctvit/tiny-rmsnorm", None)
    assert records["sub/c.pth"].schema_version_id is None


def test_scanning_again_adds_no_rows_and_the_record_is_evidence_for_match(folder):
    db, root, _, broken = folder
    with open_registry(db) as reg:
        before = reg.counts()["checkpoints"]
    result = CliRunner().invoke(main, ["--db", db, "scan", str(root)])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"skipped: {broken}\n"
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["path", "format", "status", "variant", "step", "fingerprint"]
    assert [line.split()[:4] for line in lines[1:-1]] == [
        ["a.pt", "torch-zip", "exact", "ctvit/tiny-rmsnorm"], ["b.safetensors", "safetensors", "exact", "ctvit/tiny"],
        ["sub/c.pth", "torch-zip", "none", "-"], ["unet", "diffusers-folder", "none", "-"]]
    assert lines[-1] == f"scanned 5 checkpoints below {root}: recorded 4 (0 new), skipped 1"
    with open_registry(db) as reg:
        assert reg.counts()["checkpoints"] == before == 4

    matched = CliRunner().invoke(main, ["--db", db, "match", str(root / "a.pt"), "--json"])
    answer = json.loads(matched.stdout)
    assert (answer["variant"], answer["evidence"]) == ("ctvit/tiny-rmsnorm", "record")
