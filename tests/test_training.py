"""The trainer resumes into the right build and never silently starts over (issue 6).

Real tiny models, real SQLite registries, and real processes for kill -9 and SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from registry.catalog import get_builtin_variant
from registry.command.cli import main
from registry.families import get_family, make_config
from registry.store import open_registry
from registry.store.variants import init_builtin_variants
from registry.training import EXIT_PREEMPTED, ResumeRefused, TrainSpec, plan_resume, train
from registry.training.checkpoints import checkpoints_in, remove_interrupted_writes

VARIANTS = ["ctvit/tiny", "ctvit/tiny-swiglu", "ctvit/tiny-optimized", "ldm-unet/tiny", "diffusers-unet/tiny"]


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with open_registry(url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant(name) for name in VARIANTS])
    return url


def registry_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "registry.command.cli", *args]


def trained_state(path: Path) -> tuple[dict, dict]:
    payload = torch.load(path, weights_only=True)
    return payload["model"], payload["optimizer"]


def wait_for(predicate, timeout: float = 300.0, what: str = "condition"):
    # Generous: a fresh `registry train` imports torch (and diffusers) first, which takes a minute
    # on a loaded 2-core machine; the wait ends as soon as the condition holds.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def assert_same_state(expected: dict, actual: dict, atol: float = 1e-6) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.allclose(expected[name].float(), actual[name].float(), atol=atol), name


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["ctvit/tiny", "ldm-unet/tiny", "diffusers-unet/tiny"])
def test_train_kill_resume_latest_continues_at_the_same_step_with_the_same_optimizer(db, tmp_path, variant):
    out = tmp_path / "run"
    job = subprocess.Popen(
        registry_command("--db", db, "train", "--variant", variant, "--out", str(out), "--steps", "100000", "--every", "3"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: checkpoints_in(out), what="the first checkpoint")
    finally:
        job.kill()  # SIGKILL: no handler runs, like a node that dies
        job.wait()
    killed_at, last = checkpoints_in(out)[0]
    saved_model, saved_optimizer = trained_state(last)

    plan = None
    with open_registry(db) as reg:
        plan = plan_resume(reg, str(last))
        first_run = reg.list_runs()[0]
    assert (plan.variant, plan.step, plan.match.evidence) == (variant, killed_at, "embedded")
    assert plan.parent_run_id == first_run.id
    for index, state in saved_optimizer["state"].items():  # what resume restores is what was saved
        assert torch.equal(state["exp_avg"], plan.training.optimizer["state"][index]["exp_avg"])

    resumed = train(TrainSpec(out_dir=str(out), steps=killed_at + 3, every=3, resume="latest"), db=db, log=lambda _: None)
    assert (resumed.start_step, resumed.step, resumed.status) == (killed_at, killed_at + 3, "completed")

    # The same steps without the kill give the same weights: same data, same optimizer moments.
    straight = train(TrainSpec(out_dir=str(tmp_path / "straight"), steps=killed_at + 3, every=killed_at + 3,
                               variant=variant), db=db, log=lambda _: None)
    resumed_model, resumed_optimizer = trained_state(Path(resumed.checkpoints[-1]))
    straight_model, straight_optimizer = trained_state(Path(straight.checkpoints[-1]))
    assert_same_state(straight_model, resumed_model)
    for index, state in straight_optimizer["state"].items():
        assert torch.allclose(state["exp_avg_sq"], resumed_optimizer["state"][index]["exp_avg_sq"], atol=1e-9)
        assert int(state["step"]) == int(resumed_optimizer["state"][index]["step"]) == killed_at + 3

    with open_registry(db) as reg:
        run = reg.get_run(resumed.run_id)
        assert run.parent_run_id == first_run.id and run.status == "completed"
        assert reg.find_checkpoint(str(last.resolve()), last.stat().st_size, last.stat().st_mtime).id == run.resumed_from_checkpoint_id


def test_an_ldm_run_resumes_as_a_diffusers_run_at_its_step_converted_in_memory(db, tmp_path):
    ldm_run = train(TrainSpec(out_dir=str(tmp_path / "ldm"), steps=3, every=3, variant="ldm-unet/tiny"), db=db,
                    log=lambda _: None)
    source = Path(ldm_run.checkpoints[-1])
    before = source.read_bytes()

    with open_registry(db) as reg:
        plan = plan_resume(reg, str(source), family="diffusers-unet")
    assert (plan.variant, plan.step, plan.conversion["method"]) == ("diffusers-unet/tiny", 3, "ldm-unet->diffusers-unet")
    ldm_state, ldm_optimizer = trained_state(source)
    ldm = get_family("ldm-unet").build(make_config(get_family("ldm-unet"), get_builtin_variant("ldm-unet/tiny").config))
    ldm.load_state_dict(ldm_state, strict=True)
    unet = get_family("diffusers-unet").build(make_config(get_family("diffusers-unet"), plan.config))
    unet.load_state_dict(plan.state_dict, strict=True)
    torch.manual_seed(0)
    sample, context, timesteps = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32), torch.tensor([10, 500])
    with torch.no_grad():
        difference = (ldm.eval()(sample, timesteps, context) - unet.eval()(sample, timesteps, context).sample).abs().max()
    assert difference.item() <= 1e-5

    # AdamW's moments follow their parameters through the conversion.
    ldm_names = [n for n, _ in ldm.named_parameters()]
    unet_names = [n for n, _ in unet.named_parameters()]
    ldm_index = ldm_names.index("out.2.weight")
    unet_index = unet_names.index("conv_out.weight")
    assert torch.equal(ldm_optimizer["state"][ldm_index]["exp_avg"], plan.training.optimizer["state"][unet_index]["exp_avg"])

    resumed = train(TrainSpec(out_dir=str(tmp_path / "unet"), steps=5, every=5, family="diffusers-unet",
                              resume=str(source)), db=db, log=lambda _: None)
    assert (resumed.variant, resumed.start_step, resumed.step) == ("diffusers-unet/tiny", 3, 5)
    assert source.read_bytes() == before
    with open_registry(db) as reg:
        run = reg.get_run(resumed.run_id)
        assert run.parent_run_id == ldm_run.run_id
        conversions = [e for e in reg.events() if e.action == "checkpoint.convert"]
        assert [(e.details["run_id"], e.details["method"], e.details["in_memory"]) for e in conversions] == [
            (resumed.run_id, "ldm-unet->diffusers-unet", True)
        ]
        written = reg.list_checkpoints(run_id=resumed.run_id)
        assert [(c.step, c.variant) for c in written] == [(5, "diffusers-unet/tiny")]

    # `registry audit` shows the LDM run and the diffusers run as one resume chain, and the conversion.
    audit = json.loads(CliRunner().invoke(main, ["--db", db, "audit", "--json"]).stdout)
    [chain] = audit["chains"]
    assert chain["root"] == ldm_run.run_id
    assert [r["variant"] for r in chain["runs"]] == ["ldm-unet/tiny", "diffusers-unet/tiny"]
    assert [(c["run_id"], c["in_memory"], c["variant"]) for c in audit["conversions"]] == [
        (resumed.run_id, True, "diffusers-unet/tiny")
    ]


def renamed_ctvit_checkpoint(path: Path) -> tuple[dict, list[str], list[str]]:
    """A tiny CTViT whose spatial encoder was renamed in a refactor no variant knows about."""
    family = get_family("ctvit")
    torch.manual_seed(7)
    model = family.build(make_config(family, get_builtin_variant("ctvit/tiny").config))
    state = {}
    for name, tensor in model.state_dict().items():
        state[name.replace("enc_spatial_transformer.", "spatial_encoder.")] = tensor
    torch.save({"state_dict": state, "step": 40}, path)
    originals = sorted(n for n in model.state_dict() if n.startswith("enc_spatial_transformer."))
    return state, originals, sorted(n.replace("enc_spatial_transformer.", "spatial_encoder.") for n in originals)


def test_a_resume_never_proceeds_on_a_non_exact_match_and_writes_nothing(db, tmp_path):
    source = tmp_path / "refactored.pt"
    renamed_ctvit_checkpoint(source)
    out = tmp_path / "out"
    with pytest.raises(ResumeRefused) as refused:
        train(TrainSpec(out_dir=str(out), steps=50, resume=str(source)), db=db, log=lambda _: None)
    assert refused.value.exit_code == 1
    assert refused.value.message == (
        f"{source}: no registered build loads this checkpoint (nearest: ctvit/tiny); nothing was trained"
    )
    assert any("enc_spatial_transformer." in line and "spatial_encoder." in line for line in refused.value.details)
    assert not out.exists()
    with open_registry(db) as reg:
        assert reg.list_runs() == [] and reg.list_checkpoints() == []


def test_allow_partial_lists_exactly_the_tensors_it_did_not_load(db, tmp_path):
    source = tmp_path / "refactored.pt"
    state, originals, renamed = renamed_ctvit_checkpoint(source)
    with open_registry(db) as reg:
        plan = plan_resume(reg, str(source), variant="ctvit/tiny", allow_partial=True)
    assert plan.partial.not_loaded == originals
    assert plan.partial.ignored == renamed

    lines: list[str] = []
    # lr=0 and no weight decay step: the checkpoint written after one step holds the loaded weights.
    result = train(TrainSpec(out_dir=str(tmp_path / "out"), steps=1, lr=0.0, seed=11, variant="ctvit/tiny",
                             resume=str(source), allow_partial=True), db=db, log=lines.append)
    assert (result.start_step, result.partial.not_loaded) == (0, originals)
    assert [line.removeprefix("  not loaded: ") for line in lines if line.startswith("  not loaded: ")] == originals
    warm, _ = trained_state(Path(result.checkpoints[-1]))
    family = get_family("ctvit")
    torch.manual_seed(11)  # the trainer's own initialisation for seed 11
    fresh = family.build(make_config(family, get_builtin_variant("ctvit/tiny").config)).state_dict()
    for name, tensor in warm.items():
        expected = fresh[name] if name in originals else state[name]
        if tensor.is_floating_point() and "codebook" not in name:  # the VQ codebook is an EMA buffer training updates
            assert torch.equal(tensor, expected), name
    with open_registry(db) as reg:
        assert [e.details["not_loaded"] for e in reg.events() if e.action == "run.warm_start"] == [len(originals)]


def test_an_explicit_variant_that_does_not_match_is_refused_with_the_diff(db, tmp_path):
    first = train(TrainSpec(out_dir=str(tmp_path / "a"), steps=2, every=2, variant="ctvit/tiny"), db=db, log=lambda _: None)
    with pytest.raises(ResumeRefused) as refused:
        train(TrainSpec(out_dir=str(tmp_path / "b"), steps=4, variant="ctvit/tiny-optimized",
                        resume=first.checkpoints[-1]), db=db, log=lambda _: None)
    assert "nearest: ctvit/tiny-optimized" in refused.value.message
    assert any(".gamma" in line or "to_qkv" in line for line in refused.value.details)


def test_resume_latest_in_an_empty_folder_starts_at_step_0_and_needs_a_variant(db, tmp_path):
    from registry.errors import UsageError

    with pytest.raises(UsageError, match="nothing to resume and no --variant"):
        train(TrainSpec(out_dir=str(tmp_path / "empty"), steps=2, family="ctvit", resume="latest"), db=db, log=lambda _: None)
    lines: list[str] = []
    result = train(TrainSpec(out_dir=str(tmp_path / "empty"), steps=2, variant="ctvit/tiny", resume="latest"), db=db,
                   log=lines.append)
    assert (result.start_step, result.step) == (0, 2)
    assert lines[0] == f"no checkpoint in {tmp_path / 'empty'} yet: starting a new run"


KILLED_WRITER = """
import sys, time, torch
from pathlib import Path
from registry.training.checkpoints import write_training_checkpoint
import registry.atomic as atomic

out = Path(sys.argv[1])
state = {"weight": torch.ones(4, 4)}
write_training_checkpoint(out, 1, state, {"step": 1}, {"state": {}, "param_groups": []}, ["weight"], None)
print("first written", flush=True)

real_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    with open(f, "wb") as handle:
        handle.write(b"PK\\x03\\x04 half of a zip")
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
torch.save = slow_save
write_training_checkpoint(out, 2, {"weight": torch.zeros(4, 4)}, {"step": 2}, {"state": {}, "param_groups": []}, ["weight"], None)
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    out = tmp_path / "run"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "first written"
        assert writer.stdout.readline().strip() == "writing"
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    debris = [p.name for p in out.iterdir() if p.name.startswith(".step-00000002.pt.tmp-")]
    assert len(debris) == 1  # the interrupted write, never under the checkpoint's own name
    assert [step for step, _ in checkpoints_in(out)] == [1]
    model, _ = trained_state(out / "step-00000001.pt")
    assert torch.equal(model["weight"], torch.ones(4, 4))

    # The next job clears the dead writer's leftover (it could be gigabytes on a shared disk).
    assert [p.name for p in remove_interrupted_writes(out)] == debris
    assert sorted(p.name for p in out.iterdir()) == ["step-00000001.pt"]


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_with_the_requeue_code(db, tmp_path):
    out = tmp_path / "run"
    job = subprocess.Popen(
        registry_command("--db", db, "train", "--variant", "ctvit/tiny", "--out", str(out), "--steps", "100000",
                         "--every", "100000"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert job.stdout.readline().startswith("training ctvit/tiny from step 0 to 100000")
        time.sleep(0.5)
        job.send_signal(signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == EXIT_PREEMPTED == 75, stderr
    [(step, path)] = checkpoints_in(out)
    assert step > 0 and f"pre-empted by SIGTERM at step {step}" in stdout
    with open_registry(db) as reg:
        [run] = reg.list_runs()
        assert run.status == "preempted"
    resumed = train(TrainSpec(out_dir=str(out), steps=step + 1, resume="latest"), db=db, log=lambda _: None)
    assert (resumed.start_step, resumed.variant) == (step, "ctvit/tiny")
    with open_registry(db) as reg:
        assert reg.get_run(resumed.run_id).parent_run_id == run.id


def test_cli_refusal_is_one_error_line_plus_the_diff_and_exit_1(db, tmp_path):
    source = tmp_path / "refactored.pt"
    renamed_ctvit_checkpoint(source)
    done = subprocess.run(
        registry_command("--db", db, "train", "--out", str(tmp_path / "out"), "--steps", "5", "--resume", str(source)),
        capture_output=True, text=True,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == f"error: {source}: no registered build loads this checkpoint (nearest: ctvit/tiny); nothing was trained"
    assert lines[-1].startswith("hint: convert it")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
