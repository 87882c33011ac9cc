"""A CTViT saved with Accelerate keeps its empty `null_kv` tensors, through registry.json.

accelerate's safetensors save keeps one of a model's empty tensors and drops the others (they all
have storage pointer 0 and size 0, so it takes them for shared storage), and its own load forgives
that. `AccelerateCheckpoints.save` records the dropped ones in registry.json and the folder reader
puts them back, so the folder matches the build, resumes strictly with equal outputs, and a
registry.json that would add data is ignored with one clear warning.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

import registry
from registry.behaviour_digest import Discrete
from registry.catalog import get_builtin_variant
from registry.families import get_family, make_config
from registry.integrations.accelerate import AccelerateCheckpoints
from registry.readers import read_checkpoint
from registry.schema import schema_of_module
from registry.store import open_registry
from registry.store.variants import init_builtin_variants
from registry.streaming import NotStreamable, lazy_tensors
from registry.tensors import load_state_dict

BIN = Path(sys.executable).parent
NULL_KV = [f"{side}_{kind}_transformer.layers.0.1.null_kv" for side in ("enc", "dec") for kind in ("spatial", "temporal")]
FAMILY = get_family("ctvit")
CONFIG = make_config(FAMILY, get_builtin_variant("ctvit/tiny").config)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'registry.db'}"
    with open_registry(url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant("ctvit/tiny")])
    return url


def outputs(model) -> dict[str, torch.Tensor]:
    """The family's probe outputs on a fixed input (codebook ids as their values)."""
    model.eval()
    with torch.no_grad():
        probed = FAMILY.probe(model, CONFIG, torch.Generator().manual_seed(0))
    return {name: value.values if isinstance(value, Discrete) else value for name, value in probed.items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_one_step(seed: int):
    """A fresh Accelerator (CPU), a ctvit/tiny trained one AdamW step, prepared."""
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(seed)
    model = FAMILY.build(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


@pytest.fixture(scope="module")
def saved(db, tmp_path_factory) -> tuple[Path, dict, list]:
    """A checkpoint-00000001/ saved through AccelerateCheckpoints, the model's state and outputs."""
    runs = tmp_path_factory.mktemp("runs")
    accelerator, model, optimizer = train_one_step(0)
    checkpoints = AccelerateCheckpoints(accelerator, family="ctvit", variant="ctvit/tiny", db=db)
    assert checkpoints.load(model) == 0
    loss = FAMILY.compute_loss(model, FAMILY.make_batch(CONFIG, 2, torch.Generator().manual_seed(1)))
    accelerator.backward(loss)
    optimizer.step()
    folder = Path(checkpoints.save(runs / "checkpoint-00000001", step=1))
    checkpoints.end()
    state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    return folder, state, outputs(accelerator.unwrap_model(model))


def registry_cli(db: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "registry"), "--db", db, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_record_names_exactly_the_empty_tensors_accelerate_dropped(saved):
    from safetensors import safe_open

    folder, state, _ = saved
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        in_file = set(handle.keys())
    dropped = sorted(set(NULL_KV) - in_file)
    assert dropped, "accelerate kept every empty tensor: this test no longer shows the problem"
    record = json.loads((folder / "registry.json").read_text())
    assert record["empty_tensors"] == {name: {"shape": [2, 0, 8], "dtype": "float32"} for name in dropped}
    info = read_checkpoint(folder)
    assert info.metadata["restored_empty_tensors"] == dropped
    assert {e.name: e.shape for e in info.schema if e.numel == 0} == {name: (2, 0, 8) for name in NULL_KV}
    assert "empty_tensors" not in info.metadata["registry"]  # checked apart, never copied as metadata
    assert info.warnings == []
    made = load_state_dict(info)  # the weights, and the restored empty tensors made in memory
    assert {name: tuple(made[name].shape) for name in NULL_KV} == {name: (2, 0, 8) for name in NULL_KV}
    with pytest.raises(NotStreamable):  # a streaming convert reads file bytes: these are in no file
        lazy_tensors(info)


def test_registry_match_on_the_folder_is_exact(saved, db):
    folder = saved[0]
    done = registry_cli(db, "match", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    matched = json.loads(done.stdout)
    assert (matched["status"], matched["variant"]) == ("exact", "ctvit/tiny")
    assert "warning" not in done.stderr  # the record's fingerprint is the restored schema's: not "mislabeled"


def test_resume_through_the_integration_and_the_api_loads_strictly_with_equal_outputs(saved, db):
    folder, state, before = saved
    accelerator = Accelerator(cpu=True)
    checkpoints = AccelerateCheckpoints(accelerator, family="ctvit", db=db)
    resolved = checkpoints.resolve(folder.parent)
    assert (resolved.variant, resolved.step, resolved.converted) == ("ctvit/tiny", 1, False)
    torch.manual_seed(7)  # other weights: the load must replace them all
    model = FAMILY.build(make_config(FAMILY, resolved.config_dict))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    assert checkpoints.load(model) == 1
    loaded = accelerator.unwrap_model(model).state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert optimizer.state_dict()["state"], "AdamW's moments were not restored"
    assert same(outputs(accelerator.unwrap_model(model)), before)
    checkpoints.end()

    resumed = registry.resume(folder, family="ctvit", db=db)  # load_state_dict(strict=True) on the restored schema
    assert (resumed.variant, resumed.step, resumed.warnings) == ("ctvit/tiny", 1, [])
    assert same(outputs(resumed.model), before)


def _kept(record: dict) -> str:
    """The one empty tensor accelerate kept in the weights file."""
    (kept,) = [name for name in NULL_KV if name not in record["empty_tensors"]]
    return kept


def _with_record(saved_folder: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "checkpoint-00000001"
    shutil.copytree(saved_folder, folder)
    record = json.loads((folder / "registry.json").read_text())
    edit(record)
    (folder / "registry.json").write_text(json.dumps(record))
    return folder


def test_a_declared_tensor_with_elements_is_ignored_with_a_warning(saved, db, tmp_path):
    name = sorted(json.loads((saved[0] / "registry.json").read_text())["empty_tensors"])[0]
    folder = _with_record(saved[0], tmp_path,
                          lambda r: r["empty_tensors"][name].update(shape=[2, 1_000_000, 8]))
    done = registry_cli(db, "match", str(folder))
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("none: no registered build loads")
    assert "warning: mislabeled file: its embedded registry metadata says ctvit/tiny" in done.stderr
    assert "missing: *_transformer.layers.0.1.null_kv" in done.stdout  # as saved by plain accelerate
    ignored = (f"registry.json: ignored its empty_tensors ('{name}' has shape [2, 1000000, 8], which "
               "holds elements: only empty tensors are restored); the schema is the weights' own")
    assert f"warning: {ignored}" in done.stderr  # match says why, not only that the label is wrong
    as_json = json.loads(registry_cli(db, "match", str(folder), "--json").stdout)
    assert as_json["checkpoint_warnings"] == [ignored]
    read = registry_cli(db, "fingerprint", str(folder))
    assert read.returncode == 0, read.stderr
    assert (f"registry.json: ignored its empty_tensors ('{name}' has shape [2, 1000000, 8], which "
            "holds elements: only empty tensors are restored); the schema is the weights' own") in read.stdout + read.stderr
    with pytest.raises(registry.ResumeRefused):
        registry.resume(folder, family="ctvit", db=db)


@pytest.mark.parametrize("edit, problem", [
    (lambda r: r["empty_tensors"].update({_kept(r): {"shape": [2, 0, 8], "dtype": "float32"}}),
     "the weights already hold {kept!r}"),
    (lambda r: r.update(empty_tensors=[["x", [0]]]), "it is not a mapping of tensor names to {shape, dtype}"),
    (lambda r: r.update(empty_tensors={f"x{i}": {"shape": [0], "dtype": "float32"} for i in range(10_001)}),
     "it declares 10,001 tensors, more than 10,000"),
    (lambda r: r.update(empty_tensors={"x": {"shape": [0], "dtype": "float32", "data": [1.0]}}),
     "'x' is not {\"shape\": [...], \"dtype\": ...}"),
    (lambda r: r.update(empty_tensors={"x": {"shape": [0, True], "dtype": "float32"}}), "'x' has no valid shape"),
    (lambda r: r.update(empty_tensors={"x": {"shape": [0, -1], "dtype": "float32"}}), "'x' has no valid shape"),
    (lambda r: r.update(empty_tensors={"x": {"shape": [0], "dtype": "object"}}), "'x' has no known dtype"),
    (lambda r: r.update(empty_tensors={"x": {"shape": [0], "dtype": "qint8"}}), "'x' has no known dtype"),
    (lambda r: r.update(empty_tensors={"a\nb": {"shape": [0], "dtype": "float32"}}), "'a\\nb' is not a tensor name"),
])
def test_a_malformed_declaration_is_ignored_whole(saved, tmp_path, edit, problem):
    problem = problem.replace("{kept!r}", repr(_kept(json.loads((saved[0] / "registry.json").read_text()))))
    info = read_checkpoint(_with_record(saved[0], tmp_path, edit))
    assert info.warnings == [f"registry.json: ignored its empty_tensors ({problem}); the schema is the weights' own"]
    assert "restored_empty_tensors" not in info.metadata
    assert sum(e.numel == 0 for e in info.schema) == 1  # the one accelerate kept


def test_the_weights_own_metadata_cannot_claim_restored_tensors(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _with_record(saved[0], tmp_path, lambda r: r.pop("empty_tensors"))
    weights = folder / "model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"restored_empty_tensors": json.dumps(NULL_KV)})
    info = read_checkpoint(folder)
    assert "restored_empty_tensors" not in info.metadata
    assert sum(e.numel == 0 for e in info.schema) == 1


def test_a_plain_accelerate_save_says_which_empty_tensors_are_missing(saved, db, tmp_path):
    folder = tmp_path / "checkpoint-00000001"
    shutil.copytree(saved[0], folder)
    (folder / "registry.json").unlink()  # as `accelerator.save_state` alone writes it
    done = registry_cli(db, "match", str(folder))
    assert done.returncode == 1
    assert "    3 missing: *_transformer.layers.0.1.null_kv (3 entries)" in done.stdout.splitlines()


def test_a_plain_accelerate_folder_matches_once_its_empty_tensors_are_declared(saved, tmp_path):
    """The remedy for folders saved before: a registry.json that declares only the missing empty
    tensors (what `registry match` lists) makes the folder the model's build again."""
    folder = tmp_path / "checkpoint-00000001"
    shutil.copytree(saved[0], folder)
    declared = json.loads((folder / "registry.json").read_text())["empty_tensors"]
    (folder / "registry.json").write_text(json.dumps({"empty_tensors": declared}))
    info = read_checkpoint(folder)
    assert info.fingerprint == schema_of_module(FAMILY.build(CONFIG)).fingerprint
    assert "fingerprint" not in info.metadata["registry"] and info.warnings == []
