"""`registry.resume` and the write side, as a user's own trainer calls them (issue 11, item 5).

Real tiny models, real SQLite registries, checkpoints written the way users write them
(`{"model_state_dict", "optimizer_state_dict", "epoch"}`, Lightning, accelerate folders).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import registry
from registry.catalog import get_builtin_variant
from registry.errors import UsageError
from registry.families import get_family, make_config
from registry.store import open_registry
from registry.store.variants import add_variant, init_builtin_variants

REGISTRY = str(Path(sys.executable).with_name("registry"))
VARIANTS = ["ctvit/tiny", "ctvit/tiny-optimized", "ldm-unet/tiny", "diffusers-unet/tiny"]


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    with open_registry(url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant(name) for name in VARIANTS])
    return url


def build(variant: str, seed: int = 0):
    spec = get_builtin_variant(variant)
    family = get_family(spec.family)
    torch.manual_seed(seed)
    return family.build(make_config(family, spec.config))


def trained(model, family_name: str, steps: int = 1, groups: int = 1):
    """`model` after `steps` AdamW steps (so the optimizer holds moments), and the optimizer."""
    family = get_family(family_name)
    params = list(model.parameters())
    if groups == 1:
        optimizer = torch.optim.AdamW(params, lr=1e-3)
    else:  # weights with decay, the rest without: a common recipe
        optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() > 1]},
                                       {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}], lr=1e-3)
    config = make_config(family, get_builtin_variant(f"{family_name}/tiny").config)
    for step in range(steps):
        loss = family.compute_loss(model, family.make_batch(config, 2, torch.Generator().manual_seed(step)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return optimizer


def test_importing_registry_loads_neither_torch_nor_sqlalchemy():
    code = ("import sys, registry; registry.resume, registry.start_run, registry.latest_checkpoint; "
            "print(sorted(m for m in ('torch', 'sqlalchemy', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- a user's own checkpoint --------------------------------------------------------------------


def test_a_users_checkpoint_resumes_with_its_own_entries_untouched(db, tmp_path):
    model = build("ctvit/tiny", seed=3)
    optimizer = trained(model, "ctvit")
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    path = tmp_path / "my_checkpoint.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": 3, "best_loss": 0.25}, path)

    resumed = registry.resume(path, db=db)

    assert (resumed.variant, resumed.family, resumed.path, resumed.step) == ("ctvit/tiny", "ctvit", str(path), None)
    assert resumed.match.status == "exact" and resumed.conversion is None and resumed.warnings == []
    assert type(resumed.config).__name__ == "CTViTConfig"
    assert resumed.config_dict == get_builtin_variant("ctvit/tiny").config | resumed.config_dict  # every default filled
    assert resumed.model.training  # the mode of a fresh build: the resume does not switch it
    for name, tensor in model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert sorted(resumed.extra) == ["best_loss", "epoch", "optimizer_state_dict", "scheduler"]
    assert (resumed.extra["epoch"], resumed.extra["best_loss"], resumed.extra["scheduler"]) == (3, 0.25, scheduler.state_dict())
    saved = optimizer.state_dict()
    again = torch.optim.AdamW(resumed.model.parameters(), lr=1e-3)
    again.load_state_dict(resumed.extra["optimizer_state_dict"])  # loads as the user's code would
    for index, state in saved["state"].items():
        assert torch.equal(state["exp_avg"], again.state_dict()["state"][index]["exp_avg"])


def test_a_checkpoint_in_torchs_legacy_format_resumes_with_its_entries(db, tmp_path):
    model = build("ctvit/tiny", seed=4)
    optimizer = trained(model, "ctvit")
    path = tmp_path / "old.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "epoch": 2},
               path, _use_new_zipfile_serialization=False)  # what torch < 1.6 wrote (no zip, no mmap)

    resumed = registry.resume(path, db=db)

    assert (resumed.variant, sorted(resumed.extra), resumed.extra["epoch"]) == (
        "ctvit/tiny", ["epoch", "optimizer_state_dict"], 2)
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in model.state_dict().items())


def test_the_step_comes_from_the_checkpoint_else_from_its_name(db, tmp_path):
    model = build("ctvit/tiny")
    (tmp_path / "a").mkdir()
    torch.save({"state_dict": model.state_dict(), "global_step": 1200, "epoch": 4}, tmp_path / "a" / "step-7.pt")
    assert registry.resume(tmp_path / "a", db=db).step == 1200
    (tmp_path / "b").mkdir()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "b" / "step-7.pt")
    assert registry.resume(tmp_path / "b", db=db).step == 7


def test_an_accelerate_folder_resumes_from_its_model_weights(db, tmp_path):
    from safetensors.torch import save_file

    model = build("ctvit/tiny", seed=1)
    for step in (500, 1000):
        folder = tmp_path / "out" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.bin")
    resumed = registry.resume(tmp_path / "out", db=db)
    assert (resumed.path, resumed.step, resumed.extra) == (str(tmp_path / "out" / "checkpoint-1000"), 1000, {})
    # the folder itself resumes too
    assert registry.resume(tmp_path / "out" / "checkpoint-500", db=db).step == 500


def test_a_lightning_checkpoint_resumes_the_model_under_its_prefix(db, tmp_path):
    model = build("ctvit/tiny", seed=2)
    optimizer = trained(model, "ctvit")
    runs = tmp_path / "lightning"
    runs.mkdir()
    for step in (10, 20):
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": step,
                    "epoch": step // 10, "optimizer_states": [optimizer.state_dict()], "lr_schedulers": []},
                   runs / f"epoch={step // 10}-step={step}.ckpt")
    (runs / "epoch=3-step=30.ckpt").write_bytes(b"PK\x03\x04 a writer was killed here")
    with pytest.warns(registry.ResumeWarning, match="skipping .*epoch=3-step=30.ckpt"):
        resumed = registry.resume(runs, family="ctvit", db=db)
    assert (resumed.variant, resumed.step, resumed.match.prefix) == ("ctvit/tiny", 20, "model.")
    assert sorted(resumed.extra) == ["epoch", "global_step", "lr_schedulers", "optimizer_states"]
    assert resumed.extra["optimizer_states"][0]["param_groups"] == optimizer.state_dict()["param_groups"]


# --- conversion and refusal ------------------------------------------------------------------------


def ldm_checkpoint(path: Path, groups: int = 1):
    ldm = build("ldm-unet/tiny", seed=5)
    optimizer = trained(ldm, "ldm-unet", groups=groups)
    torch.save({"model_state_dict": ldm.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "epoch": 2}, path)
    return ldm, optimizer


def test_an_ldm_checkpoint_resumes_as_diffusers_with_the_users_adamw_moments_converted(db, tmp_path):
    path = tmp_path / "ldm.pt"
    ldm, optimizer = ldm_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is dropped: no warning
        resumed = registry.resume(path, family="diffusers-unet", db=db)
    assert (resumed.variant, resumed.conversion["method"]) == ("diffusers-unet/tiny", "ldm-unet->diffusers-unet")
    assert type(resumed.model).__name__ == "UNet2DConditionModel"
    torch.manual_seed(0)
    sample, context, timesteps = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32), torch.tensor([10, 500])
    with torch.no_grad():
        difference = (ldm.eval()(sample, timesteps, context) - resumed.model.eval()(sample, timesteps, context).sample)
    assert difference.abs().max().item() <= 1e-5

    converted = resumed.extra["optimizer_state_dict"]
    adamw = torch.optim.AdamW(resumed.model.parameters(), lr=1e-3)
    adamw.load_state_dict(converted)  # loads into the diffusers model's optimizer as it is
    ldm_index = [n for n, _ in ldm.named_parameters()].index("out.2.weight")
    unet_index = [n for n, _ in resumed.model.named_parameters()].index("conv_out.weight")
    assert torch.equal(optimizer.state_dict()["state"][ldm_index]["exp_avg"], converted["state"][unet_index]["exp_avg"])
    assert resumed.extra["epoch"] == 2


def test_a_users_optimizer_that_cannot_be_carried_across_a_conversion_is_removed_with_a_warning(db, tmp_path):
    path = tmp_path / "ldm.pt"
    ldm_checkpoint(path, groups=2)
    with pytest.warns(registry.ResumeWarning, match="'optimizer_state_dict' .* was removed"):
        resumed = registry.resume(path, family="diffusers-unet", db=db)
    assert sorted(resumed.extra) == ["epoch"]  # never left in the LDM layout, where it would load silently wrong
    assert len(resumed.warnings) == 1


def test_a_checkpoint_no_build_loads_is_refused_with_the_grouped_diff(db, tmp_path):
    model = build("ctvit/tiny")
    renamed = {k.replace("enc_spatial_transformer.", "spatial_encoder."): v for k, v in model.state_dict().items()}
    path = tmp_path / "refactored.pt"
    torch.save({"model_state_dict": renamed, "epoch": 1}, path)
    with pytest.raises(registry.ResumeRefused) as refused:
        registry.resume(path, db=db)
    assert refused.value.exit_code == 1
    assert refused.value.message == f"{path}: no registered build loads this checkpoint (nearest: ctvit/tiny); nothing was trained"
    assert any("enc_spatial_transformer." in line and "spatial_encoder." in line for line in refused.value.details)


# --- the write side ---------------------------------------------------------------------------------


def registry_json(db: str, *args: str) -> dict:
    done = subprocess.run([REGISTRY, "--db", db, *args, "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_embedded_metadata_links_runs_and_is_what_match_and_audit_read(db, tmp_path):
    model = build("ctvit/tiny", seed=4)
    optimizer = trained(model, "ctvit")
    out = tmp_path / "runs"
    out.mkdir()
    with registry.start_run(model, db=db) as first:  # the variant is the one the model builds
        assert (first.variant, first.family) == ("ctvit/tiny", "ctvit")
        path = out / "step-5.pt"
        torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(), "epoch": 1,
                    "registry": first.checkpoint_metadata(model, step=5)}, path)
        logged = first.log_checkpoint(path)
    assert (logged.status, logged.variant, logged.step, logged.run_id) == ("exact", "ctvit/tiny", 5, first.id)

    match = registry_json(db, "match", str(path))
    assert (match["status"], match["evidence"], match["variant"]) == ("exact", "embedded", "ctvit/tiny")

    resumed = registry.resume(out, db=db)
    assert (resumed.step, resumed.run_id, resumed.match.evidence) == (5, first.id, "embedded")
    second = registry.start_run(resumed.model, resumed=resumed, db=db)
    second.end("preempted")

    audit = registry_json(db, "audit")
    [chain] = audit["chains"]
    assert chain["root"] == first.id
    assert [(r["id"], r["status"]) for r in chain["runs"]] == [(first.id, "completed"), (second.id, "preempted")]
    with open_registry(db) as reg:
        run = reg.get_run(second.id)
        assert run.parent_run_id == first.id
        assert reg.list_checkpoints()[0].id == run.resumed_from_checkpoint_id


def test_a_model_the_registry_does_not_know_is_refused_before_training(db, tmp_path):
    family = get_family("ctvit")
    other = family.build(make_config(family, {**get_builtin_variant("ctvit/tiny").config, "dim": 48}))
    with pytest.raises(registry.UnregisteredModelError, match="no registered variant builds this model") as error:
        registry.start_run(other, db=db)
    assert error.value.exit_code == 1
    with pytest.raises(registry.UnregisteredModelError, match="is not the registered build of ctvit/tiny-optimized"):
        registry.start_run(build("ctvit/tiny"), variant="ctvit/tiny-optimized", db=db)
    with open_registry(db) as reg:
        assert reg.list_runs() == []

    run = registry.start_run(build("ctvit/tiny"), db=db)
    with pytest.raises(registry.UnregisteredModelError, match="not the ctvit/tiny build run"):
        run.checkpoint_metadata(other, step=1)
    # Without a run: the record names the variant and no run.
    record = registry.checkpoint_metadata(build("ctvit/tiny"), step=3, db=db)
    assert (record["variant"], record["run_id"], record["step"]) == ("ctvit/tiny", None, 3)


def test_a_file_saved_by_another_run_is_not_logged_as_this_runs(db, tmp_path):
    model = build("ctvit/tiny")
    first, second = registry.start_run(model, db=db), registry.start_run(model, db=db)
    path = tmp_path / "a.pt"
    torch.save({"model": model.state_dict(), "registry": first.checkpoint_metadata(model, step=1)}, path)
    with pytest.raises(UsageError, match=f"saved by run {first.id}, not {second.id}"):
        second.log_checkpoint(path)
    bare = tmp_path / "b.pt"  # no embedded record: the run that logs it owns it
    torch.save({"model": model.state_dict(), "step": 2}, bare)
    assert second.log_checkpoint(bare).run_id == second.id


def test_a_checkpoint_whose_variant_the_code_no_longer_builds_is_refused_with_the_diff(db, tmp_path, tiny_family, monkeypatch):
    import dataclasses

    from torch import nn

    from registry.families import _FAMILIES

    family = get_family(tiny_family)
    with open_registry(db) as reg:
        add_variant(reg, "mlp/base", tiny_family, make_config(family, {"width": 8}))
    model = family.build(make_config(family, {"width": 8}))
    path = tmp_path / "mlp.pt"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 1}, path)

    def refactored(config):  # a commit that hard-codes RMSNorm, whatever the config says
        return nn.Sequential(*[layer for _ in range(config.depth)
                               for layer in (nn.Linear(config.width, config.width), nn.RMSNorm(config.width))])

    monkeypatch.setitem(_FAMILIES, tiny_family, dataclasses.replace(family, build=refactored))
    with pytest.raises(registry.ResumeRefused) as refused:
        registry.resume(path, db=db)
    assert refused.value.message == f"the current code builds mlp/base differently from {path}; nothing was trained"
    assert refused.value.details == ["2 unexpected in checkpoint: {1,3}.bias (2 entries)"]  # RMSNorm has no bias


USER_CLASSES = '''
from dataclasses import dataclass

from torch import nn


class MLP(nn.Module):
    def __init__(self, *, width: int = 8, depth: int = 2):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


@dataclass
class GPTConfig:
    n_embd: int = 8
    n_layer: int = 1


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(config.n_embd, config.n_embd) for _ in range(config.n_layer))


class PlainConfig:
    def __init__(self, width: int = 4):
        self.width = width


class Net(nn.Module):
    def __init__(self, config: PlainConfig):
        super().__init__()
        self.proj = nn.Linear(config.width, 2 * config.width)


class Fixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 3)
'''


@pytest.mark.parametrize("target, values, expected", [
    ("MLP", {"width": 6}, {"width": 6, "depth": 2}),  # keyword arguments: a dict, so MLP(**config) rebuilds it
    ("GPT", {"n_layer": 2}, "GPTConfig(n_embd=8, n_layer=2)"),  # the config object its constructor takes
    ("Net", {"width": 3}, "PlainConfig width=3"),  # a plain config class, built from its fields
    ("Fixed", {}, {}),  # no arguments at all: still the (empty) keyword arguments, Fixed(**{})
])
def test_a_class_familys_config_comes_back_in_the_form_its_constructor_takes(db, tmp_path, monkeypatch, target, values,
                                                                           expected):
    from registry.families import _FAMILIES

    module = f"resume_user_classes_{target.lower()}"
    (tmp_path / f"{module}.py").write_text(USER_CLASSES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    name = f"{module}:{target}"
    monkeypatch.setitem(_FAMILIES, name, None)  # removed again after the test
    family = get_family(name)
    config = make_config(family, values)
    with open_registry(db) as reg:
        add_variant(reg, f"user/{target.lower()}", name, config)
    path = tmp_path / "user.pt"
    torch.save({"model_state_dict": family.build(config).state_dict()}, path)

    resumed = registry.resume(path, db=db)
    assert resumed.variant == f"user/{target.lower()}"
    if isinstance(expected, dict):
        assert resumed.config == expected
        assert type(resumed.model).__name__ == target
    elif target == "GPT":
        assert repr(resumed.config) == expected
    else:
        assert f"{type(resumed.config).__name__} width={resumed.config.width}" == expected


def test_a_run_that_raises_is_recorded_as_failed_and_the_error_is_not_hidden(db):
    model = build("ctvit/tiny")
    with pytest.raises(ValueError, match="loss is nan"):
        with registry.start_run(model, db=db) as run:
            raise ValueError("loss is nan")
    with open_registry(db) as reg:
        assert reg.get_run(run.id).status == "failed"
