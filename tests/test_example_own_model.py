"""examples/own-model, run as its user would: copied to a temporary folder, driven through the
installed `registry` command and the project's own `train.py` (issue 11, item 6).

The story: register the declared variants, train the baseline, resume it with a config that now
says RMSNorm (the registry builds the checkpoint's config), pass `registry check`; then replay the
first incident in the user's file (RMSNorm hard-coded in Attention): `registry check` fails naming
the change, a resume refuses with the diff instead of training, and reverting makes check pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own-model"
BIN = Path(sys.executable).parent
REGISTRY = str(BIN / "registry")
PLANTED_FROM = "        self.norm = norm_class(use_rms_norm)(dim)\n        self.to_qkv"
PLANTED_TO = "        self.norm = nn.RMSNorm(dim)\n        self.to_qkv"


def run(project: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_DB", "REGISTRY_PLUGINS")}
    done = subprocess.run(list(args), cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def registry_cmd(project: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    return run(project, REGISTRY, *args, expect=expect)


def train(project: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    return run(project, sys.executable, "train.py", *args, expect=expect)


@pytest.fixture
def project(tmp_path) -> Path:
    target = tmp_path / "own-model"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("runs", "registry.db*", "__pycache__"))
    git = ["git", "-c", "user.name=user", "-c", "user.email=user@example.com"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the project"]):
        subprocess.run([*git, *command], cwd=target, check=True, capture_output=True)
    return target


@pytest.mark.slow
def test_the_example_project_registers_trains_resumes_and_catches_the_first_incident(project):
    init = registry_cmd(project, "init")
    assert f"database sqlite:///{project / 'registry.db'}" in init.stdout  # pyproject.toml's db, next to it
    assert "videovit/baseline" in init.stdout and "videovit/optimized" in init.stdout

    first = train(project, "--config", "configs/base_config.yaml", "--out", "runs/vit", "--steps", "6", "--resume", "latest")
    assert first.stdout.splitlines()[0] == "new run of configs/base_config.yaml (no checkpoint in runs/vit yet)"
    assert sorted(p.name for p in (project / "runs" / "vit").iterdir()) == ["step-5.pt", "step-6.pt"]

    # The project's default moved to the optimized model; the requeued job resumes the baseline.
    second = train(project, "--config", "configs/optimized.yaml", "--out", "runs/vit", "--steps", "8", "--resume", "latest")
    lines = second.stdout.splitlines()
    assert lines[0] == f"resuming videovit/baseline from {project / 'runs' / 'vit' / 'step-6.pt'} at step 6"
    assert lines[1] == ("  configs/optimized.yaml differs from the checkpoint in ['use_rms_norm', 'use_swiglu']: "
                        "building the checkpoint's config")
    match = json.loads(registry_cmd(project, "match", "runs/vit/step-8.pt", "--json").stdout)
    assert (match["status"], match["evidence"], match["variant"]) == ("exact", "embedded", "videovit/baseline")
    audit = json.loads(registry_cmd(project, "audit", "--json").stdout)
    [chain] = audit["chains"]
    assert [(r["variant"], r["status"]) for r in chain["runs"]] == [("videovit/baseline", "completed")] * 2
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    runs = json.loads(registry_cmd(project, "runs", "list", "--json").stdout)
    assert [r["code_revision"] for r in runs] == [head, head]  # the project's revision, not the registry's

    # CI runs `registry check` (every registered variant); the project's own are named here so that
    # the test does not depend on the built-in families' probes.
    ours = ("videovit/baseline", "videovit/optimized")
    registry_cmd(project, "check", *ours)

    attention = project / "src" / "models" / "attention.py"
    original = attention.read_text()
    assert PLANTED_FROM in original
    attention.write_text(original.replace(PLANTED_FROM, PLANTED_TO))
    drift = registry_cmd(project, "check", *ours, expect=1)
    report = drift.stdout + drift.stderr
    assert "drift: videovit/baseline (schema version 1 → the current code)" in report
    assert "1 of 2 variants unchanged, 1 drifted" in report  # the optimized model always built RMSNorm
    assert "entries differ only by suffix `.beta/.gamma` → `.weight`" in report
    assert "LayerNorm → RMSNorm" in report
    refused = train(project, "--config", "configs/base_config.yaml", "--out", "runs/vit", "--steps", "10", "--resume", "latest",
                    expect=1)
    assert refused.stderr.splitlines()[0] == (
        f"error: the current code builds videovit/baseline differently from {project / 'runs' / 'vit' / 'step-8.pt'}; "
        "nothing was trained")
    assert not (project / "runs" / "vit" / "step-10.pt").exists()

    attention.write_text(original)
    registry_cmd(project, "check", *ours)
