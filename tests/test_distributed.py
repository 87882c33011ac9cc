"""`registry train` under `torchrun --nproc_per_node 2` (CPU, gloo): two real processes (issue 7).

Every rank builds what rank 0 resolved; only rank 0 writes checkpoints and registry rows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from registry.catalog import get_builtin_variant
from registry.store import open_registry
from registry.store.variants import init_builtin_variants
from registry.training.checkpoints import checkpoints_in

pytestmark = pytest.mark.slow


def torchrun(db: str, *args: str) -> subprocess.CompletedProcess:
    torchrun_bin = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    registry_bin = str(Path(sys.executable).with_name("registry"))
    return subprocess.run(
        [torchrun_bin, "--standalone", "--nproc_per_node", "2", "--no-python", registry_bin, "--db", db, "train", *args],
        capture_output=True, text=True, timeout=300,
    )


def test_two_ranks_train_and_resume_with_one_writer(tmp_path):
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    with open_registry(db, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant("ctvit/tiny"), get_builtin_variant("ctvit/tiny-swiglu")])
    out = tmp_path / "run"

    first = torchrun(db, "--variant", "ctvit/tiny", "--out", str(out), "--steps", "4", "--every", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("done: ctvit/tiny at step 4") == 1  # rank 0 speaks for the job
    assert [step for step, _ in checkpoints_in(out)] == [4, 2]

    second = torchrun(db, "--family", "ctvit", "--out", str(out), "--steps", "6", "--every", "2", "--resume", "latest")
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count(f"resuming ctvit/tiny from {out / 'step-00000004.pt'} at step 4") == 1

    with open_registry(db) as reg:
        runs = reg.list_runs()
        assert [(r.variant, r.world_size, r.status) for r in runs] == [("ctvit/tiny", 2, "completed")] * 2
        assert runs[1].parent_run_id == runs[0].id
        written = reg.list_checkpoints()
        assert [(c.step, c.run_id) for c in written] == [(2, runs[0].id), (4, runs[0].id), (6, runs[1].id)]
    assert [step for step, _ in checkpoints_in(out)] == [6, 4, 2]
    final = torch.load(out / "step-00000006.pt", weights_only=True)
    assert final["registry"]["run_id"] == runs[1].id and final["step"] == 6
