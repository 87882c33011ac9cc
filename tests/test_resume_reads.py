"""A resume reads each checkpoint once: real checkpoints on disk, the readers' entry points counted.

- `registry.resume` of a torch file unpickles it once (its weights and its other entries come
  from the same `torch.load`), in torch's zip format and in the legacy one;
- of a DCP folder, our interpreter runs over `.metadata` once (matching and loading share it) and
  torch's loader is handed those checked bytes once;
- Lightning's and Accelerate's resumes of an exact match read the weights file once: the
  framework's own load, none by the registry.

The counters wrap the real functions and call them (nothing is replaced): what is counted is what
ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import registry
from registry.catalog import get_builtin_variant
from registry.families import get_family, make_config
from registry.store import open_registry
from registry.store.variants import init_builtin_variants


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with open_registry(url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant(name) for name in ("ctvit/tiny", "ldm-unet/tiny")])
    return url


def build(seed: int):
    family = get_family("ctvit")
    torch.manual_seed(seed)
    return family.build(make_config(family, get_builtin_variant("ctvit/tiny").config))


def counted(monkeypatch, owner, name: str, key=lambda *args, **kwargs: "calls") -> Counter:
    """Count each call of `owner.name` (by `key(args)`), still calling the real one."""
    calls: Counter = Counter()
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        calls[key(*args, **kwargs)] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def _file_name(source, *args, **kwargs) -> str:
    return os.path.basename(str(getattr(source, "path", getattr(source, "name", source))))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_torch_file_is_unpickled_once_for_its_weights_and_its_other_entries(db, tmp_path, monkeypatch, legacy):
    model = build(seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = tmp_path / "step-9.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "epoch": 3},
               path, _use_new_zipfile_serialization=not legacy)
    loads = counted(monkeypatch, torch, "load", _file_name)

    resumed = registry.resume(tmp_path, db=db)

    assert loads == {"step-9.pt": 1}
    assert (resumed.variant, resumed.step, sorted(resumed.extra)) == ("ctvit/tiny", 9, ["epoch", "optimizer_state_dict"])
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in model.state_dict().items())
    assert resumed.plan.state_dict == {}  # the plan keeps no second copy of the weights


def test_a_dcp_folder_is_interpreted_once_and_read_into_the_model(db, tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    from registry import sharded_load
    from registry.readers.dcp import DcpUnpickler

    model = build(seed=5)
    folder = tmp_path / "runs" / "step-3"
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(folder))
    interpreted = counted(monkeypatch, DcpUnpickler, "load")
    unpickled_by_torch = counted(monkeypatch, sharded_load._MetadataOnly, "load")
    filled = counted(monkeypatch, dcp, "load", lambda state, **kwargs: frozenset(t.data_ptr() for t in state.values()))

    resumed = registry.resume(tmp_path / "runs", db=db)

    assert (resumed.variant, resumed.step, resumed.path) == ("ctvit/tiny", 3, str(folder))
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in model.state_dict().items())
    assert interpreted == {"calls": 1}  # matching and loading share one run of our interpreter
    assert unpickled_by_torch == {"calls": 1}  # and torch's loader gets those checked bytes once
    # one DCP load, straight into the model's own parameters and buffers
    assert filled == {frozenset(t.data_ptr() for t in resumed.model.state_dict().values()): 1}


def test_a_changed_metadata_is_interpreted_again(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    from registry.readers import read_checkpoint
    from registry.readers.dcp import DcpUnpickler

    folder = tmp_path / "step-1"
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model": torch.nn.Linear(4, 8).state_dict()}, checkpoint_id=str(folder))
    interpreted = counted(monkeypatch, DcpUnpickler, "load")
    first = read_checkpoint(folder)
    assert read_checkpoint(folder) == first and interpreted == {"calls": 1}
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model": torch.nn.Linear(4, 6).state_dict()}, checkpoint_id=str(folder))
    assert read_checkpoint(folder).schema != first.schema and interpreted == {"calls": 2}


COUNTING = '''
import collections, json, os, sys
import safetensors.torch
import torch

opened = collections.Counter()


def counting(owner, name):
    real = getattr(owner, name)

    def call(source, *args, **kwargs):
        opened[os.path.basename(str(getattr(source, "path", getattr(source, "name", source))))] += 1
        return real(source, *args, **kwargs)

    setattr(owner, name, call)


counting(torch, "load")
counting(safetensors.torch, "safe_open")
'''

LIGHTNING = COUNTING + '''
import lightning as L
from registry.catalog import get_builtin_variant
from registry.families import get_family, make_config
from registry.integrations.lightning import RegistryCallback

out, db = sys.argv[1], sys.argv[2]
family = get_family("ctvit")
config = make_config(family, get_builtin_variant("ctvit/tiny").config)


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = family.build(config)

    def training_step(self, batch, index):
        return family.compute_loss(self.model, family.make_batch(config, 1, torch.Generator().manual_seed(index)))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def fit(steps, ckpt_path=None):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[RegistryCallback(model_attr="model", family="ctvit", db=db)])
    module = Module()
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(list(range(8)), batch_size=1),
                ckpt_path=ckpt_path)
    return trainer, module


trainer, first = fit(1)
trainer.callbacks[0].on_fit_start(trainer, first)  # a live run labels the save
trainer.save_checkpoint(os.path.join(out, "last.ckpt"))
opened.clear()
trainer, second = fit(2, os.path.join(out, "last.ckpt"))
print(json.dumps({"opened": opened, "step": trainer.global_step}))
'''

ACCELERATE = COUNTING + '''
from accelerate import Accelerator
from registry.catalog import get_builtin_variant
from registry.families import get_family, make_config
from registry.integrations.accelerate import AccelerateCheckpoints

out, db = sys.argv[1], sys.argv[2]
family = get_family("ldm-unet")
config = make_config(family, get_builtin_variant("ldm-unet/tiny").config)
accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
model = family.build(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model, optimizer = accelerator.prepare(model, optimizer)
checkpoints = AccelerateCheckpoints(accelerator, family="ldm-unet", db=db)
checkpoints.load(model)
saved = {k: v.clone() for k, v in model.state_dict().items()}
checkpoints.save(os.path.join(out, "checkpoint-7"), step=7)
checkpoints.end()
with torch.no_grad():
    for parameter in model.parameters():
        parameter.zero_()
opened.clear()
resumer = AccelerateCheckpoints(accelerator, family="ldm-unet", db=db)
resolved = resumer.resolve(out)
step = resumer.load(model)
resumer.end()
same = all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
print(json.dumps({"opened": opened, "step": step, "variant": resolved.variant, "same": same}))
'''


def run_script(script: str, out: Path, db: str) -> dict:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", script, str(out), db], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_lightning_resume_of_an_exact_match_reads_the_checkpoint_once(db, tmp_path):
    answer = run_script(LIGHTNING, tmp_path / "lightning", db)
    assert answer == {"opened": {"last.ckpt": 1}, "step": 2}  # Lightning's own load; the registry read metadata only


@pytest.mark.slow
def test_an_accelerate_resume_of_an_exact_match_reads_the_weights_once(db, tmp_path):
    answer = run_script(ACCELERATE, tmp_path / "accelerate", db)
    assert answer["opened"]["model.safetensors"] == 1  # accelerator.load_state's; the registry read its header only
    assert (answer["step"], answer["variant"], answer["same"]) == (7, "ldm-unet/tiny", True)
