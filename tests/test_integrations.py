"""Accelerate and Lightning, for real: the examples run twice (train, then resume) through the
installed frameworks on CPU, and the registry resolves, converts, refuses and records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def initialised_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("db") / "registry.db"
    done = subprocess.run([str(BIN / "registry"), "--db", f"sqlite:///{path}", "init"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def env(initialised_db, tmp_path) -> dict[str, str]:
    db = tmp_path / "registry.db"
    shutil.copy(initialised_db, db)
    return {**os.environ, "REGISTRY_DB": f"sqlite:///{db}", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "OMP_NUM_THREADS": "1"}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _registry(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run([str(BIN / "registry"), *args, "--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _launch(*args: str) -> list[str]:
    # Two gloo processes on CPU: `--multi_gpu` picks torchrun's launcher and the script's
    # Accelerator(cpu=True) keeps them on the CPU (`--cpu --num_processes 2` starts one process).
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "examples" / "accelerate" / "train.py"),
            *args]


def test_accelerate_ldm_to_diffusers_resumes_at_the_saved_step(env, tmp_path):
    import torch

    runs = tmp_path / "runs"
    first = _run(_launch("--out", str(runs), "--steps", "4", "--model", "ldm", "--dump-at-end",
                         str(tmp_path / "ldm.pt")), env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = runs / "checkpoint-00000004"
    record = json.loads((saved / "registry.json").read_text())
    assert record["variant"] == "ldm-unet/tiny" and record["step"] == 4
    matched = _registry(env, "match", str(saved))
    assert matched["status"] == "exact" and matched["variant"] == "ldm-unet/tiny"

    # The incident: the code now builds diffusers' UNet. The registry converts instead of starting over.
    second = _run(_launch("--out", str(runs), "--steps", "6", "--model", "diffusers", "--resume", "latest",
                          "--dump-on-resume", str(tmp_path / "diffusers.pt")), env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed diffusers-unet/tiny at step 4 from {saved} (converted: ldm-unet->diffusers-unet)" in second.stdout
    before, after = torch.load(tmp_path / "ldm.pt"), torch.load(tmp_path / "diffusers.pt")
    assert (before - after).abs().max().item() <= 1e-5
    assert (runs / "checkpoint-00000006" / "registry.json").exists()

    audit = _registry(env, "audit")
    assert len(audit["chains"]) == 1
    chain = audit["chains"][0]["runs"]
    assert [r["variant"] for r in chain] == ["ldm-unet/tiny", "diffusers-unet/tiny"]
    assert chain[1]["resumed_from_step"] == 4 and chain[1]["conversion"]["method"] == "ldm-unet->diffusers-unet"
    assert chain[0]["world_size"] == 2  # recorded once, by the main process, for a 2-process job
    checkpoints = _registry(env, "checkpoints", "list")
    assert sorted(c["step"] for c in checkpoints) == [2, 4, 6]

    # Back to the LDM code: no converter goes that way, so the job stops with the diff.
    refused = _run([sys.executable, str(REPO / "examples" / "accelerate" / "train.py"), "--out", str(runs),
                    "--steps", "8", "--model", "ldm", "--resume", "latest"], env, tmp_path)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert lines[0] == (f"error: {runs / 'checkpoint-00000006'}: no registered build loads this checkpoint "
                        "(nearest: ldm-unet/tiny); nothing was trained")
    assert "Traceback" not in refused.stderr
    assert len(_registry(env, "runs", "list")) == 2  # nothing recorded
    assert sorted(p.name for p in runs.iterdir()) == ["checkpoint-00000002", "checkpoint-00000004",
                                                      "checkpoint-00000006"]


def test_lightning_resume_picks_the_checkpoints_config(env, tmp_path):
    script = str(REPO / "examples" / "lightning" / "train.py")
    out = tmp_path / "ckpts"
    first = _run([sys.executable, script, "--out", str(out), "--steps", "4"], env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "the network was built as LayerNorm" in first.stdout
    matched = _registry(env, "match", str(out / "last.ckpt"))
    assert (matched["status"], matched["variant"], matched["prefix"]) == ("exact", "ctvit/tiny", "model.")

    # The code's default moved to RMSNorm (the first incident); the checkpoint was LayerNorm.
    second = _run([sys.executable, script, "--out", str(out), "--steps", "6", "--resume", "latest", "--default",
                   "ctvit/tiny-rmsnorm"], env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"registry: {out / 'last.ckpt'} was trained as ctvit/tiny; rebuilt `model` from its config" in \
        second.stdout + second.stderr
    assert "stopped at step 6; the network was built as LayerNorm" in second.stdout
    chain = _registry(env, "audit")["chains"][0]["runs"]
    assert [(r["variant"], r["resumed_from_step"]) for r in chain] == [("ctvit/tiny", None), ("ctvit/tiny", 4)]
    assert sorted(c["step"] for c in _registry(env, "checkpoints", "list", "--run", chain[1]["id"])) == [6, 6]

    # A checkpoint no registered build loads stops the fit before Lightning loads anything.
    import torch

    broken = tmp_path / "broken"
    broken.mkdir()
    checkpoint = torch.load(out / "last.ckpt", weights_only=False)
    checkpoint.pop("registry")
    checkpoint["state_dict"] = {k.replace("norm.gamma", "norm.weight"): v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, broken / "last.ckpt")
    refused = _run([sys.executable, script, "--out", str(broken), "--steps", "8", "--resume", "latest"], env, tmp_path)
    assert refused.returncode == 1, refused.stderr[-2000:]
    lines = refused.stderr.strip().splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    assert error == (f"error: {broken / 'last.ckpt'}: no registered build loads this checkpoint "
                     "(nearest: ctvit/tiny); nothing was trained")
    assert any("differ only by suffix `.weight` → `.gamma`" in line for line in lines)  # inside `model.`
    assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in broken.iterdir()) == ["last.ckpt"]
    assert len(_registry(env, "runs", "list")) == 2
