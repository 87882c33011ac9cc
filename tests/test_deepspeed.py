"""DeepSpeed checkpoint folders (issue 16): read from the model-states pickle only, loaded like DeepSpeed.

Real folders come from DeepSpeed itself (0.19, CPU accelerator, two gloo processes, ZeRO-2 and
ZeRO-3: `deepspeed_writer.py`), with DeepSpeed's own `zero_to_fp32` output as the reference. The
layouts DeepSpeed writes but this machine cannot produce cheaply (tensor and pipeline parallel)
and broken or hostile files are built to the same layout with torch.save.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from conftest import TinyMLPConfig
from deepspeed_writer import mlp
from registry.errors import CheckpointError, UnsafeCheckpointError
from registry.readers import read_checkpoint
from registry.schema import schema_of_state_dict
from registry.store import open_registry
from registry.tensors import load_state_dict

HERE = Path(__file__).parent


def registry_cli(*args: str, db: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **({"REGISTRY_DB": db} if db else {}))
    return subprocess.run([sys.executable, "-m", "registry.command.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deepspeed")
    done = subprocess.run([sys.executable, str(HERE / "deepspeed_writer.py"), str(out)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def reference(written: Path, stage: int) -> dict:
    return torch.load(written / f"zero{stage}.pt", weights_only=True)


MODEL_FINGERPRINT = schema_of_state_dict(mlp().state_dict()).fingerprint


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_every_way_to_name_the_checkpoint_fingerprints_as_the_model(written, stage):
    save_dir = written / f"zero{stage}"
    tag = save_dir / "global_step1"
    states = sorted(tag.glob("*model_states.pt"))[0]
    for path in (save_dir, tag, states):
        info = read_checkpoint(path)
        assert info.fingerprint == MODEL_FINGERPRINT, path
        assert (info.format, info.container, info.step) == ("deepspeed-folder", "module", 1)
        assert info.metadata["deepspeed"] == {"zero_stage": stage, "tag": "global_step1",
                                              "version": version("deepspeed"), "dp_world_size": 2}
        assert info.files == [str(states)]  # the optimizer partitions are never read


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_loading_gives_what_deepspeeds_own_zero_to_fp32_gives(written, stage):
    state = load_state_dict(read_checkpoint(written / f"zero{stage}"))
    expected = reference(written, stage)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k].float(), expected[k]) for k in expected)


@pytest.mark.slow
def test_the_optimizer_partitions_are_never_read_to_fingerprint(written, tmp_path):
    copy = tmp_path / "zero3"
    shutil.copytree(written / "zero3", copy)
    for optim in (copy / "global_step1").glob("*optim_states.pt"):
        optim.write_bytes(b"not a pickle")
    assert read_checkpoint(copy).fingerprint == MODEL_FINGERPRINT
    with pytest.raises(CheckpointError, match="optim_states.pt: cannot load it with torch.load"):
        load_state_dict(read_checkpoint(copy))  # ZeRO-3 weights live in those partitions


@pytest.mark.slow
def test_match_resume_latest_scan_and_convert(written, tmp_path, tiny_family):
    from registry.convert import convert_checkpoint
    from registry.latest import latest_checkpoint
    from registry.scan import scan
    from registry.store.variants import add_variant
    from registry.training.resume import plan_resume
    from safetensors.torch import load_file

    db = f"sqlite:///{tmp_path / 'registry.db'}"
    with open_registry(db, upgrade=True) as reg:
        add_variant(reg, "w5", tiny_family, TinyMLPConfig(width=5, depth=2))
        for stage in (2, 3):
            found = latest_checkpoint(written / f"zero{stage}")
            assert (found.path, found.style, found.step) == (written / f"zero{stage}/global_step1", "deepspeed", 1)
            plan = plan_resume(reg, str(written / f"zero{stage}"))
            assert (plan.variant, plan.step) == ("w5", 1)
            expected = reference(written, stage)
            assert all(torch.equal(plan.state_dict[k].float(), expected[k]) for k in expected)
            out = tmp_path / f"zero{stage}.safetensors"
            convert_checkpoint(reg, str(written / f"zero{stage}"), to="w5", output=str(out))
            converted = load_file(out)
            assert converted.keys() == expected.keys()
            assert all(torch.equal(converted[k].float(), expected[k]) for k in expected)
        summary = scan(reg, str(written))
    assert summary.skipped == []
    recorded = {c.path: (c.format, c.variant) for c in summary.checkpoints}
    assert recorded == {str(written / f"zero{s}/global_step1"): ("deepspeed-folder", "w5") for s in (2, 3)} | {
        str(written / f"zero{s}.pt"): ("torch-zip", "w5") for s in (2, 3)}


def test_deepspeeds_latest_names_the_newest_tag_whatever_its_name(tmp_path):
    from registry.latest import latest_checkpoint

    for tag in ("global_step9", "global_step1", "best"):
        write_states(tmp_path / tag / "mp_rank_00_model_states.pt")
    (tmp_path / "latest").write_text("best")
    found = latest_checkpoint(tmp_path)
    assert (found.path, found.style, found.step) == (tmp_path / "best", "deepspeed", None)
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path).path == tmp_path / "global_step9"


# --- the documented layout, built with torch.save -------------------------------------------------


def write_states(path: Path, *, placeholders: bool = False, shapes: dict | None = None, **extra) -> Path:
    """A model-states file as DeepSpeed writes it (`module`, `param_shapes`, `buffer_names`, ...)."""
    model = mlp()
    module = {k: (torch.empty(0) if placeholders else v) for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module": module, "buffer_names": [], "optimizer": None,
                "param_shapes": [shapes if shapes is not None else {k: v.shape for k, v in model.state_dict().items()}],
                "frozen_param_shapes": {}, "shared_params": {}, "global_steps": 7, "dp_world_size": 2,
                "mp_world_size": 1, "ds_version": "0.19.8", **extra}, path)
    return path


def refused(path: Path, needle: str) -> None:
    result = registry_cli("fingerprint", str(path))
    assert result.returncode == 3, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_a_hand_built_zero3_folder_reads_its_shapes_from_param_shapes(tmp_path):
    write_states(tmp_path / "global_step7" / "zero_pp_rank_0_mp_rank_00_model_states.pt", placeholders=True)
    write_states(tmp_path / "global_step7" / "zero_pp_rank_1_mp_rank_00_model_states.pt", placeholders=True)
    (tmp_path / "latest").write_text("global_step7\n")
    (tmp_path / "zero_to_fp32.py").write_text("")
    info = read_checkpoint(tmp_path)
    assert (info.fingerprint, info.step, info.metadata["deepspeed"]["zero_stage"]) == (MODEL_FINGERPRINT, 7, 3)


@pytest.mark.parametrize("layout, needle", [
    ("tensor-parallel", "it holds 2 tensor-parallel ranks"),
    ("pipeline", "pipeline-parallel checkpoint"),
    ("latest-missing-tag", "names tag 'global_step3', but there is no folder"),
    ("zero3-no-shape", "'0.weight' is a ZeRO-3 placeholder but param_shapes has no shape for it"),
    ("shapes-disagree", "param_shapes gives '0.weight' shape [7, 5] but `module` holds [5, 5]"),
])
def test_layouts_not_read_and_inconsistent_files_exit_3(tmp_path, layout, needle):
    tag = tmp_path / "global_step3"
    shapes = {k: v.shape for k, v in mlp().state_dict().items()}
    if layout == "tensor-parallel":
        write_states(tag / "mp_rank_00_model_states.pt")
        write_states(tag / "mp_rank_01_model_states.pt")
    elif layout == "pipeline":
        write_states(tag / "layer_01-model_states.pt")
        write_states(tag / "mp_rank_00_model_states.pt")
    elif layout == "latest-missing-tag":
        (tmp_path / "latest").write_text("global_step3")
        (tmp_path / "zero_to_fp32.py").write_text("")
        refused(tmp_path, needle)
        return
    elif layout == "zero3-no-shape":
        write_states(tag / "zero_pp_rank_0_mp_rank_00_model_states.pt", placeholders=True,
                     shapes={k: v for k, v in shapes.items() if k != "0.weight"})
    else:
        write_states(tag / "mp_rank_00_model_states.pt", shapes={**shapes, "0.weight": torch.Size([7, 5])})
    refused(tag, needle)


@pytest.mark.parametrize("partition, needle", [
    ([1, 2], "zero_pp_rank_0_mp_rank_00_optim_states.pt: not a ZeRO-3 partition of 2 ranks"),
    ({"optimizer_state_dict": {"fp32_flat_groups": [1, 2], "partition_count": 2}},
     "zero_pp_rank_0_mp_rank_00_optim_states.pt: not a ZeRO-3 partition of 2 ranks"),
    ({"optimizer_state_dict": {"fp32_flat_groups": [], "partition_count": 2}},
     "zero_pp_rank_0_mp_rank_00_optim_states.pt: not a ZeRO-3 partition of 2 ranks"),
    ("rank 1 smaller", "the ZeRO-3 partitions differ in size (44, 40 elements)"),
])
def test_malformed_zero3_partitions_are_a_checkpoint_error(tmp_path, partition, needle):
    tag = tmp_path / "global_step7"
    for rank in (0, 1):
        write_states(tag / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", placeholders=True,
                     ds_config={"zero_optimization": {"stage": 3}})
        if partition == "rank 1 smaller":  # 44 elements: each of the 8 parameters' ceil(numel / 2)
            groups = [torch.zeros(44 if rank == 0 else 40)]
            torch.save({"optimizer_state_dict": {"fp32_flat_groups": groups, "partition_count": 2}},
                       tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        else:
            torch.save(partition, tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    info = read_checkpoint(tag)
    assert info.fingerprint == MODEL_FINGERPRINT  # the model states read; only loading needs the partitions
    with pytest.raises(CheckpointError) as error:
        load_state_dict(info)
    assert needle in error.value.message


def test_frozen_parameters_left_out_of_the_save_are_named_when_loading(tmp_path):
    shapes = {k: v.shape for k, v in mlp().state_dict().items()}
    states = write_states(tmp_path / "global_step7" / "mp_rank_00_model_states.pt",
                          shapes={k: v for k, v in shapes.items() if k != "0.weight"},
                          frozen_param_shapes={"0.weight": shapes["0.weight"]})
    payload = torch.load(states, weights_only=True)
    del payload["module"]["0.weight"]  # save_checkpoint(exclude_frozen_parameters=True)
    torch.save(payload, states)
    info = read_checkpoint(tmp_path / "global_step7")
    assert info.fingerprint == MODEL_FINGERPRINT  # the model's layout, frozen parameter included
    with pytest.raises(CheckpointError) as error:
        load_state_dict(info)
    assert error.value.message == (f"{states}: the frozen parameters 0.weight were not saved "
                                   "(save_checkpoint(exclude_frozen_parameters=True)); load them from the base model")


class Payload:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_payload_in_the_model_states_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran.marker"
    write_states(tmp_path / "global_step1" / "mp_rank_00_model_states.pt", ds_config=Payload(f"touch {marker}"))
    with pytest.raises(UnsafeCheckpointError, match="calls posix.system"):
        read_checkpoint(tmp_path / "global_step1")
    refused(tmp_path / "global_step1", "calls posix.system")
    assert not marker.exists()


def test_a_save_dir_without_zero_to_fp32_is_found_by_its_latest_file(tmp_path):
    write_states(tmp_path / "global_step7" / "mp_rank_00_model_states.pt")  # ZeRO off: no recovery script
    (tmp_path / "latest").write_text("global_step7")
    info = read_checkpoint(tmp_path)
    assert (info.format, info.fingerprint, info.step) == ("deepspeed-folder", MODEL_FINGERPRINT, 7)
    assert info.metadata["deepspeed"]["zero_stage"] is None  # no ds_config: the stage is not guessed
