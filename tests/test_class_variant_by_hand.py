"""From the user's side: a class variant added by hand (`registry variants add --class ... --config-class
...`, nothing declared in pyproject.toml) is a variant like any other in a fresh process: `match`,
`resolve`, config inference and `registry.resume` build its class with the recorded config class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REGISTRY = str(Path(sys.executable).parent / "registry")

MODEL = '''
from dataclasses import dataclass

from torch import nn


@dataclass
class GPTConfig:
    n_layer: int = 2
    n_embd: int = 16
    vocab_size: int = 32


class GPT(nn.Module):
    """nanoGPT style: one config object, not annotated, so its class must be named."""

    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList(nn.Linear(config.n_embd, config.n_embd) for _ in range(config.n_layer))
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
'''

SAVE = '''
import sys
import torch
from nanolm.model import GPT, GPTConfig

torch.manual_seed(0)
n_layer, path = int(sys.argv[1]), sys.argv[2]
model = GPT(GPTConfig(n_layer=n_layer, n_embd=24))
optimizer = torch.optim.AdamW(model.parameters())
torch.save({"model": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "step": 7, "epoch": 2}, path)
'''

RESUME = '''
import json, sys
import registry

resumed = registry.resume(sys.argv[1])
print(json.dumps({"variant": resumed.variant, "family": resumed.family, "step": resumed.step,
                  "config_type": type(resumed.config).__qualname__, "n_layer": resumed.config.n_layer,
                  "model": type(resumed.model).__qualname__, "extra": sorted(resumed.extra)}))
'''

FAMILY, CONFIG_CLASS = "nanolm.model:GPT", "nanolm.model:GPTConfig"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("nanolm-repo")
    files = {"nanolm/__init__.py": "", "nanolm/model.py": MODEL, "save.py": SAVE, "resume.py": RESUME,
             "configs/small.yaml": "model:\n  n_layer: 2\n  n_embd: 24\n",
             "pyproject.toml": '[project]\nname = "nanolm"\nversion = "0.1"\n'}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    env = {**os.environ, "REGISTRY_DB": f"sqlite:///{root / 'registry.db'}"}
    env.pop("REGISTRY_PLUGINS", None)

    def run(*args: str, program: str = REGISTRY) -> subprocess.CompletedProcess:
        command = [program, *args] if program == REGISTRY else [sys.executable, program, *args]
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)

    added = run("variants", "add", "gpt/small", "--class", FAMILY, "--config-class", CONFIG_CLASS,
                "--config", "configs/small.yaml", "--config-key", "model")
    assert added.returncode == 0, added.stderr
    for n_layer, name in ((2, "small.pt"), (3, "deeper.pt")):
        saved = run(str(n_layer), name, program="save.py")
        assert saved.returncode == 0, saved.stderr
    return root, run


def test_match_and_resolve_a_hand_added_class_variant(project):
    _, run = project
    text = run("match", "small.pt")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("exact: gpt/small (schema version 1)")
    as_json = json.loads(run("match", "small.pt", "--json").stdout)
    assert (as_json["status"], as_json["variant"], as_json["family"]) == ("exact", "gpt/small", FAMILY)

    resolved = run("resolve", "small.pt")
    assert resolved.returncode == 0, resolved.stderr
    assert f"family: {FAMILY}" in resolved.stdout and "n_layer: 2" in resolved.stdout
    resolved = json.loads(run("resolve", "small.pt", "--json").stdout)
    assert resolved["config"] == {"n_layer": 2, "n_embd": 24, "vocab_size": 32}


def test_match_infers_an_unregistered_config_of_the_hand_added_class(project):
    _, run = project
    found = run("match", "deeper.pt", "--json")
    assert found.returncode == 0, found.stderr
    result = json.loads(found.stdout)
    assert (result["status"], result["family"], result["config"]["n_layer"]) == ("inferred", FAMILY, 3)
    # The suggested command registers it as it was registered: with its config class.
    assert any(f"--class {FAMILY} --config-class {CONFIG_CLASS}" in s for s in result["suggestions"])
    text = run("match", "deeper.pt")
    assert text.returncode == 0 and text.stdout.startswith(f"inferred: an unregistered {FAMILY} config")


def test_resume_api_builds_the_class_with_its_config_class(project):
    _, run = project
    resumed = run("small.pt", program="resume.py")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) == {
        "variant": "gpt/small", "family": FAMILY, "step": 7, "config_type": "GPTConfig", "n_layer": 2,
        "model": "GPT", "extra": ["epoch", "optimizer_state_dict", "step"]}


def test_train_says_a_class_family_has_no_synthetic_batches(project):
    root, run = project
    trained = run("train", "--variant", "gpt/small", "--out", "runs", "--steps", "2")
    assert trained.returncode == 2
    assert trained.stderr.splitlines()[0] == (
        f"error: registry train needs synthetic batches and a loss, and family {FAMILY} declares neither "
        "(make_batch, compute_loss hooks); nothing was trained")
    assert "Traceback" not in trained.stderr and not (root / "runs").exists()


@pytest.mark.parametrize("options, message", [
    (["--class", "nanolm.nope:GPT", "--config-class", CONFIG_CLASS], "module 'nanolm.nope' cannot be found"),
    (["--class", FAMILY, "--config-class", "nanolm.model:Nope"], "module 'nanolm.model' has no attribute 'Nope'"),
    (["--class", "nanolm..model"], "not an import path: 'nanolm..model'"),
])
def test_a_bad_class_path_is_one_line_and_exit_2(project, options, message):
    _, run = project
    added = run("variants", "add", "gpt/bad", *options, "--config", "configs/small.yaml", "--config-key", "model")
    assert added.returncode == 2
    assert message in added.stderr.splitlines()[0] and "Traceback" not in added.stderr
    assert len(added.stderr.splitlines()) <= 2
