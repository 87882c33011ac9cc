"""The examples end as a user's script should: the Accelerate example leaves no process group
alive when its ranks exit (one left alive aborted a rank with "terminate called without an active
exception" now and then), and both examples print a `RegistryError` as the command line does,
through `registry.errors.report`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.catalog import get_builtin_variant
from registry.store import open_registry
from registry.store.variants import init_builtin_variants

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "accelerate" / "train.py"

# Runs the example's main() as `python train.py` would, then says whether the process group is still up.
WRAPPER = """
import runpy, sys
import torch.distributed as dist
sys.argv = [{example!r}, *sys.argv[1:]]
code = runpy.run_path({example!r}, run_name="example")["main"]()
print(f"exit {{code}}; process group {{'alive' if dist.is_initialized() else 'destroyed'}}", flush=True)
"""


@pytest.mark.slow  # two ranks that import torch, accelerate and diffusers
def test_the_accelerate_example_destroys_its_process_group_before_exit(tmp_path):
    db = tmp_path / "registry.db"
    with open_registry(f"sqlite:///{db}") as reg:
        init_builtin_variants(reg, [get_builtin_variant("ldm-unet/tiny")])
    wrapper = tmp_path / "run_example.py"
    wrapper.write_text(WRAPPER.format(example=str(EXAMPLE)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("REGISTRY_DB", None)
    done = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(wrapper),
                           "--out", str(tmp_path / "runs"), "--steps", "2", "--every", "2", "--model", "ldm",
                           "--db", f"sqlite:///{db}"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("exit 0; process group destroyed") == 2, done.stdout[-3000:]


def test_the_accelerate_example_reports_a_registry_error_as_the_command_line_does(tmp_path):
    """`--resume latest` with no registry database yet: exit 4 and the command line's two lines
    (before, each example carried its own copy of the handler)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REGISTRY_DB": f"sqlite:///{tmp_path / 'missing.db'}"}
    (tmp_path / "runs" / "checkpoint-00000002").mkdir(parents=True)
    done = subprocess.run([sys.executable, str(EXAMPLE), "--out", "runs", "--steps", "4", "--resume", "latest"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert (done.returncode, done.stderr) == (
        4, f"error: no registry database at {tmp_path / 'missing.db'}\nhint: create it with: registry init\n")
    assert not (tmp_path / "missing.db").exists()


def test_the_lightning_example_reports_a_registry_error_as_the_command_line_does(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "lightning" / "train.py"), "--out", "runs",
                           "--steps", "4", "--default", "ctvit/nope"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert (done.returncode, done.stderr) == (
        2, "error: unknown variant 'ctvit/nope'\nhint: `registry variants list` shows the known variants\n")


def test_report_prints_what_the_command_line_prints_and_gives_the_exit_code():
    import io

    from registry.errors import DatabaseError, report

    exc = DatabaseError("database x is read-only", hint="reads still work")
    exc.details = ["first detail", "second detail"]
    out = io.StringIO()
    assert report(exc, out) == 4
    assert out.getvalue() == ("error: database x is read-only\n  first detail\n  second detail\n"
                              "hint: reads still work\n")
