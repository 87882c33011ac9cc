"""From the user's side: a training repository with its own `models/` package, a pyproject.toml
with `[tool.registry]`, YAML configs, git; the installed `registry` command run in it.

The first incident replayed in the user's own file (Attention builds RMSNorm whatever
`use_rms_norm` says) fails `registry check`, as it would have failed the user's CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REGISTRY = str(Path(sys.executable).parent / "registry")

NORMS = '''
import torch
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm with a learned gain `gamma` and a fixed zero `beta` buffer (as CT-CLIP writes it)."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x):
        return nn.functional.layer_norm(x, x.shape[-1:], self.gamma, self.beta)
'''

ATTENTION = '''
from torch import nn

from .norms import LayerNorm


class Attention(nn.Module):
    def __init__(self, dim, *, heads=8, dim_head=64, use_rms_norm=False):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.RMSNorm(dim) if use_rms_norm else LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))
'''

VIT = '''
from torch import nn

from .attention import Attention


class ViT(nn.Module):
    """A CTViT-like transformer: the team's image encoder."""

    def __init__(self, *, dim: int, depth: int, heads: int = 8, dim_head: int = 64, use_rms_norm: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(Attention(dim, heads=heads, dim_head=dim_head, use_rms_norm=use_rms_norm)
                                    for _ in range(depth))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x
'''

FAMILIES = '''
from dataclasses import dataclass

from registry.families import register_family

from .vit import ViT


@dataclass(frozen=True)
class MyViTConfig:
    dim: int = 64
    depth: int = 2
    heads: int = 4
    dim_head: int = 16
    use_rms_norm: bool = False


@register_family("myvit", config=MyViTConfig, description="the team's video transformer")
def build_myvit(config):
    return ViT(dim=config.dim, depth=config.depth, heads=config.heads, dim_head=config.dim_head,
               use_rms_norm=config.use_rms_norm)
'''

CONFIG = '''
model:
  image_encoder:
    dim: 32
    depth: 2
    heads: 2
    dim_head: 16
    use_rms_norm: {rms}
  text_encoder: bert-base
training:
  lr: 1.0e-4
'''

PYPROJECT = '''
[project]
name = "ct-team"
version = "0.0.1"

[tool.registry]
plugins = ["models.families"]
db = "sqlite:///registry.db"

[tool.registry.variants."myvit/baseline"]
family = "myvit"
config = "configs/base_config.yaml"
config_key = "model.image_encoder"
description = "LayerNorm attention, as trained since March"
example_inputs = [{ shape = [1, 4, 32], dtype = "float32" }]

[tool.registry.variants."myvit/rms"]
family = "myvit"
config = "configs/rms_config.yaml"
config_key = "model.image_encoder"

[tool.registry.variants."vit/small"]
class = "models.vit:ViT"
config = { dim = 32, depth = 1, heads = 2, dim_head = 16 }
example_inputs = [{ shape = [1, 3, 32], dtype = "float32" }]
'''


def write_project(root: Path, pyproject: str = PYPROJECT) -> Path:
    files = {
        "models/__init__.py": "", "models/norms.py": NORMS, "models/attention.py": ATTENTION, "models/vit.py": VIT,
        "models/families.py": FAMILIES, "configs/base_config.yaml": CONFIG.format(rms="false"),
        "configs/rms_config.yaml": CONFIG.format(rms="true"), "pyproject.toml": pyproject,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip())
    return root


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout.strip()


def registry(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed `registry` command, as a user's shell or CI runs it (no REGISTRY_* set)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    return subprocess.run([REGISTRY, *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def project(tmp_path) -> Path:
    root = write_project(tmp_path / "ct-team")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "baseline")
    return root


@pytest.mark.slow
def test_registry_check_in_the_users_ci_catches_the_first_incident(project):
    declared = ["myvit/baseline", "myvit/rms", "vit/small"]
    first = registry(project, "init")
    assert first.returncode == 0, first.stderr
    assert f"database sqlite:///{project}/registry.db" in first.stdout  # the pyproject's db, relative to it
    assert [line.split()[:2] for line in first.stdout.splitlines() if line.split()[0] in declared] == [
        [name, "registered"] for name in declared]
    again = registry(project, "init", "--json")  # idempotent
    assert again.returncode == 0, again.stderr
    assert {o["variant"]: o["status"] for o in json.loads(again.stdout) if o["variant"] in declared} == {
        name: "unchanged" for name in declared}

    shown = json.loads(registry(project, "variants", "show", "myvit/baseline", "--json").stdout)
    revision = git(project, "rev-parse", "HEAD")
    assert shown["variant"]["family_source"] == f"pyproject.toml {project}/pyproject.toml: models.families"
    assert shown["versions"][0]["code_revision"] == revision  # the user's repository, not the registry's
    assert json.loads(shown["variant"]["config_json"]) == {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16,
                                                         "use_rms_norm": False}
    small = json.loads(registry(project, "variants", "show", "vit/small", "--json").stdout)
    assert (small["variant"]["family"], small["variant"]["family_source"]) == ("models.vit:ViT", "class: models.vit:ViT")
    assert small["versions"][0]["behaviour"]["outputs"]  # example_inputs became the probe

    passed = registry(project, "check")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.splitlines()[-1].endswith("variants unchanged")

    # The incident, in the user's own file: the flag is ignored, RMSNorm is built always.
    attention = project / "models" / "attention.py"
    attention.write_text(ATTENTION.replace("nn.RMSNorm(dim) if use_rms_norm else LayerNorm(dim)", "nn.RMSNorm(dim)"))
    failed = registry(project, "check", *declared)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    out = failed.stdout
    assert "drift: myvit/baseline (schema version 1 → the current code)" in out
    assert "  6 entries differ only by suffix `.beta/.gamma` → `.weight` in 2 modules: layers.{0..1}.norm" in out
    assert ("  modules: 2 modules changed class LayerNorm → RMSNorm (models.norms.LayerNorm → "
            "torch.nn.modules.normalization.RMSNorm): layers.{0..1}.norm") in out
    assert "drift: vit/small" in out and "drift: myvit/rms" not in out  # rms always built RMSNorm
    assert out.splitlines()[-1] == "1 of 3 variants unchanged, 2 drifted"

    attention.write_text(ATTENTION)  # reverted
    assert registry(project, "check", *declared).returncode == 0

    # A declaration whose config changed is refused: a registered variant keeps its config.
    config = project / "configs" / "base_config.yaml"
    config.write_text(config.read_text().replace("depth: 2", "depth: 3"))
    changed = registry(project, "init")
    assert changed.returncode == 2
    assert changed.stderr.splitlines() == [
        "error: pyproject.toml declares myvit/baseline with another config than the registered one: "
        "depth: registered 2, given 3",
        "hint: a registered variant keeps its config: declare the new config under a new name; to record a code "
        "change of the same config: registry variants bump myvit/baseline",
    ]


def test_a_project_provenance_is_dirty_with_uncommitted_changes(project):
    (project / "models" / "vit.py").write_text(VIT + "\n# work in progress\n")
    assert registry(project, "--db", "user.db", "variants", "add", "vit/tiny", "--class", "models.vit:ViT",
                    "--set", "dim=8", "--set", "depth=1").returncode == 0
    shown = json.loads(registry(project, "--db", "user.db", "variants", "show", "vit/tiny", "--json").stdout)
    assert shown["versions"][0]["code_revision"] == git(project, "rev-parse", "HEAD") + "+dirty"
