"""Behaviour digests (issue 12): a change to a `forward` alone fails `registry check`.

The user-side tests write a small model family into a temporary package (`toyfam`, loaded with
REGISTRY_PLUGINS from the working directory, as a user's CI would), register a variant, then change
the package's source the way a commit would and run the installed `registry check`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from registry.behaviour import BehaviourStatus, behaviour_digest, check_behaviour, run_probe
from registry.behaviour_digest import TOLERANCE, compare_digests, summarize_outputs
from registry.catalog import get_builtin_variant
from registry.families import build_schema, get_family, make_config
from registry.probe_weights import set_name_derived_weights

REGISTRY = str(Path(sys.executable).with_name("registry"))

# A small transformer block with each thing the issue plants: a LeakyReLU slope, keys and values
# from the raw input, a norm computing x * (1 + w), a GEGLU. Comments mark the planted lines.
TOY_FAMILY = '''
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from registry.families import extend_family, register_family


@dataclass(frozen=True)
class ToyConfig:
    dim: int = 16
    heads: int = 2


class OffsetNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        x = F.normalize(x, dim=-1) * x.shape[-1] ** 0.5
        return x * (1 + self.weight)  # NORM


class GEGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=-1)  # GATES
        return x * F.gelu(gate)


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm = OffsetNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.act = nn.LeakyReLU(0.1)  # SLOPE
        self.ff = nn.Sequential(OffsetNorm(dim), nn.Linear(dim, 4 * dim), GEGLU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        normed = self.norm(x)
        kv_input = x  # KV
        q = self.to_q(normed)
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        b, n, d = q.shape
        q, k, v = (t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.to_out(out)  # RESIDUAL
        return x + self.ff(self.act(x))


@register_family("toy", config=ToyConfig, description="a user's toy transformer block")
def build(config):
    return Block(config.dim, config.heads)


def probe(model, config, generator):
    return model(torch.randn(2, 8, config.dim, generator=generator))


extend_family("toy", probe=probe)


@register_family("toy-unprobed", config=ToyConfig, description="the same block, without a probe")
def build_unprobed(config):
    return Block(config.dim, config.heads)
'''

# The four forward-only changes: names, shapes and module classes stay as they are.
PLANTED = {
    "leaky-relu-slope": ("nn.LeakyReLU(0.1)  # SLOPE", "nn.LeakyReLU(0.2)  # SLOPE"),
    "keys-from-normalized-input": ("kv_input = x  # KV", "kv_input = normed  # KV"),
    "norm-x-times-w": ("return x * (1 + self.weight)  # NORM", "return x * self.weight  # NORM"),
    "geglu-gates-swapped": ("x, gate = x.chunk(2, dim=-1)  # GATES", "gate, x = x.chunk(2, dim=-1)  # GATES"),
}

# Refactors that keep the function: renamed locals, reordered but equivalent arithmetic.
REFACTORS = {
    "renamed-locals": [("kv_input", "keys_values_from"), ("gate", "gelu_input"), ("normed", "pre_normed")],
    "reordered-arithmetic": [
        ("return x * (1 + self.weight)  # NORM", "return (self.weight + 1) * x  # NORM"),
        ("x = x + self.to_out(out)  # RESIDUAL", "x = self.to_out(out) + x  # RESIDUAL"),
        ("return x * F.gelu(gate)", "return F.gelu(gate) * x"),
    ],
}


def write_toy_package(folder: Path, replacements: list[tuple[str, str]] = ()) -> Path:
    source = TOY_FAMILY
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    package = folder / "toyfam"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(source)
    return folder


def registry_cli(folder: Path, db: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REGISTRY_PLUGINS": "toyfam", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("REGISTRY_DB", None)
    return subprocess.run([REGISTRY, "--db", db, *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def toy_db(tmp_path_factory) -> str:
    """A database where `toy/base` and `toy-unprobed/base` were registered from the original code."""
    root = tmp_path_factory.mktemp("toy")
    db = f"sqlite:///{root / 'registry.db'}"
    original = write_toy_package(root / "original")
    for family in ("toy", "toy-unprobed"):
        added = registry_cli(original, db, "variants", "add", f"{family}/base", "--family", family)
        assert added.returncode == 0, added.stderr
    return db


def test_unchanged_code_passes_and_a_family_without_probe_says_so(toy_db, tmp_path):
    result = registry_cli(write_toy_package(tmp_path), toy_db, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "note: no behaviour probe for family toy-unprobed: its 1 variant is checked for layout only",
        "2 of 2 variants unchanged",
    ]
    report = json.loads(registry_cli(tmp_path, toy_db, "check", "--json").stdout)
    status = {v["variant"]: (v["status"], v["behaviour_status"], v["behaviour_max_diff"]) for v in report["variants"]}
    assert status == {"toy/base": ("ok", "ok", 0.0), "toy-unprobed/base": ("ok", "no_probe", None)}


@pytest.mark.parametrize("change", sorted(PLANTED))
def test_a_forward_only_change_fails_check_as_behaviour_drift(toy_db, tmp_path, change):
    folder = write_toy_package(tmp_path, [PLANTED[change]])
    result = registry_cli(folder, toy_db, "check", "toy/base", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    [report] = json.loads(result.stdout)["variants"]
    # the layout and the module classes are what they were: only the behaviour moved
    assert report["registered_fingerprint"] == report["built_fingerprint"]
    assert report["schema_diff"] is None and report["module_changes"] == []
    assert report["status"] == "drift" and report["behaviour_status"] == "drift"
    assert report["behaviour_max_diff"] > 100 * TOLERANCE
    assert report["bump"] == "registry variants bump toy/base"


def test_behaviour_drift_reads_as_one_line_and_no_behaviour_skips_it(toy_db, tmp_path):
    folder = write_toy_package(tmp_path, [PLANTED["geglu-gates-swapped"]])
    result = registry_cli(folder, toy_db, "check")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("behaviour drift: toy/base outputs differ by ")
    assert lines[0].endswith(" on the probe (schema and module classes unchanged)")
    assert lines[1].startswith("  output: differs by ")
    assert "  if the change is intended: registry variants bump toy/base" in lines
    assert lines[-1] == "1 of 2 variants unchanged, 1 drifted"

    skipped = registry_cli(folder, toy_db, "check", "--no-behaviour", "--json")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert {v["behaviour_status"] for v in json.loads(skipped.stdout)["variants"]} == {"skipped"}


@pytest.mark.parametrize("refactor", sorted(REFACTORS))
def test_a_refactor_that_keeps_the_function_passes(toy_db, tmp_path, refactor):
    result = registry_cli(write_toy_package(tmp_path, REFACTORS[refactor]), toy_db, "check", "toy/base")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "1 of 1 variants unchanged\n"


# --- determinism ------------------------------------------------------------------------------

DIGEST_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[1]))
from registry.behaviour import behaviour_digest
from registry.catalog import get_builtin_variant
from registry.families import get_family, make_config
out = {}
for name in sys.argv[2:]:
    variant = get_builtin_variant(name)
    family = get_family(variant.family)
    out[name] = behaviour_digest(family, make_config(family, variant.config))
print(json.dumps(out, sort_keys=True))
"""

DETERMINISM_VARIANTS = ["ctvit/tiny", "ctvit/optimized", "ldm-unet/sd15", "diffusers-unet/tiny"]


def builtin_digest(name: str) -> dict:
    variant = get_builtin_variant(name)
    family = get_family(variant.family)
    return behaviour_digest(family, make_config(family, variant.config))


@pytest.mark.slow  # two fresh processes importing torch and diffusers
def test_the_digest_is_identical_across_processes_and_thread_counts():
    here = {name: builtin_digest(name) for name in DETERMINISM_VARIANTS}
    for threads in (1, 2):
        done = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT, str(threads), *DETERMINISM_VARIANTS],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == json.loads(json.dumps(here)), f"{threads} thread(s)"


def test_name_derived_weights_ignore_the_rng_and_the_build_order():
    import torch

    family = get_family("ctvit")
    config = make_config(family, get_builtin_variant("ctvit/tiny").config)
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = family.build(config)
        set_name_derived_weights(model)
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

    class Forward(torch.nn.Module):
        def __init__(self, order):
            super().__init__()
            for name in order:
                setattr(self, name, torch.nn.Linear(4, 4))

    a, b = Forward(["first", "second"]), Forward(["second", "first"])
    set_name_derived_weights(a), set_name_derived_weights(b)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_the_probe_leaves_the_callers_rng_alone():
    import torch

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    run_probe(get_family("ldm-unet"), make_config(get_family("ldm-unet"), get_builtin_variant("ldm-unet/tiny").config))
    assert torch.equal(torch.rand(3), expected)


def test_the_ctvit_probe_watches_the_quantizer_input_without_replacing_it():
    """The probe runs the forward once per CT-CLIP keyword; each run's quantizer must see that run's
    encoder output, so a forward whose keyword paths encode differently shows in the digest."""
    import itertools

    import torch

    from registry.models.probes import ctvit_probe

    family = get_family("ctvit")
    config = make_config(family, get_builtin_variant("ctvit/tiny").config)
    torch.manual_seed(0)
    model = family.build(config).eval()
    encode, offsets = model.encode, itertools.count()
    model.encode = lambda tokens: encode(tokens) + next(offsets)  # each forward pass encodes differently
    with torch.no_grad():
        probed = ctvit_probe(model, config, torch.Generator().manual_seed(0))
        video = torch.randn(1, config.channels, 2 * config.temporal_patch_size, config.image_size, config.image_size,
                            generator=torch.Generator().manual_seed(0))
        offsets = itertools.count()
        assert torch.equal(probed["pre_quant"], encode(model.patch_embed(video)[0]).flatten(1, 3))  # b (t h w) d
        assert torch.equal(probed["tokens"], model(video, return_encoded_tokens=True))
        ids = model(video, return_only_codebook_ids=True)
        assert torch.equal(probed["ids"].values, ids)
        # each id's margin, from its own pass's quantizer input (the second pass encodes with offset 1):
        # its cosine score minus the best other code's, over the rms best score
        ids_input = (encode(model.patch_embed(video)[0]) + 1).flatten(1, 3)
        scores = torch.nn.functional.normalize(ids_input, dim=-1) @ torch.nn.functional.normalize(
            model.vq.codebook, dim=-1).t()
        top = scores.flatten(0, 1).topk(2).values
        margins = (top[:, 0] - top[:, 1]) / top[:, 0].square().mean().sqrt()
        assert torch.allclose(probed["ids"].margins.flatten(), margins.double())
        assert torch.equal(probed["recons"], model(video, return_recons_only=True))


def test_big_variants_are_probed_at_a_small_probe_config_recorded_in_the_digest():
    for name in ("ldm-unet/sd15", "diffusers-unet/sd15", "ctvit/baseline"):
        digest = builtin_digest(name)
        family = get_family(get_builtin_variant(name).family)
        probed = make_config(family, digest["probe"]["config"])
        assert build_schema(family, probed).parameters < 10_000_000, name
        full = make_config(family, get_builtin_variant(name).config)
        flags = [f for f in ("use_rms_norm", "use_swiglu", "use_flash_attention", "with_decoder",
                             "down_block_types", "up_block_types", "attention_resolutions", "channel_mult")
                 if hasattr(full, f)]
        assert flags and all(getattr(probed, f) == getattr(full, f) for f in flags), name
    assert builtin_digest("ctvit/tiny")["probe"]["config"] is None


def test_a_probe_config_hook_that_raises_is_a_failed_probe_not_a_failed_recording():
    import dataclasses

    def no_small_config(config):
        raise RuntimeError("no small config for this one")

    family = dataclasses.replace(get_family("ctvit"), probe_config=no_small_config)
    config = make_config(family, get_builtin_variant("ctvit/baseline").config)
    digest = behaviour_digest(family, config)
    assert digest["failed"] == "RuntimeError: no small config for this one"
    assert digest["probe"]["config"] is None and "outputs" not in digest
    check = check_behaviour(family, config, digest)
    assert (check.status, check.error) == (BehaviourStatus.PROBE_FAILED, "RuntimeError: no small config for this one")


def test_comparison_sees_shape_changes_and_counts_differing_ids():
    import torch

    before = {"outputs": summarize_outputs({"x": torch.ones(2, 3), "ids": torch.arange(4)})}
    reshaped = {"outputs": summarize_outputs({"x": torch.ones(3, 2), "ids": torch.arange(4)})}
    comparison = compare_digests(before, reshaped)
    assert comparison.max_difference is None and not comparison.within_tolerance
    assert [d.detail for d in comparison.changed] == ["float32[2, 3] → float32[3, 2]"]

    ids = {"outputs": summarize_outputs({"x": torch.ones(2, 3), "ids": torch.tensor([0, 1, 3, 2])})}
    comparison = compare_digests(before, ids)
    assert comparison.max_difference == 0.5 and [d.detail for d in comparison.changed] == ["2 of 4 values differ"]


# --- recorded with schema versions --------------------------------------------------------------


def test_versions_record_digests_and_bump_backfills_one_recorded_before_digests(db_url):
    # on both backends: the digest comes back from its JSON column exactly as computed
    from click.testing import CliRunner

    from registry.command.cli import main
    from registry.store import open_registry
    from registry.store.variants import bump_variant, init_builtin_variants

    with open_registry(db_url, upgrade=True) as reg:
        [outcome] = init_builtin_variants(reg, [get_builtin_variant("ldm-unet/tiny")])
        assert outcome.version.behaviour == builtin_digest("ldm-unet/tiny")
        # a version recorded before digests existed: same layout, no digest
        family = get_family("diffusers-unet")
        config = make_config(family, get_builtin_variant("diffusers-unet/tiny").config)
        built = build_schema(family, config)
        reg.register_variant("diffusers-unet/old", "diffusers-unet", get_builtin_variant("diffusers-unet/tiny").config)
        reg.record_schema_version("diffusers-unet/old", built.schema, built.signature, code_revision=None,
                                  package_versions={})
        assert check_behaviour(family, config, None).status is BehaviourStatus.NOT_RECORDED

    result = CliRunner().invoke(main, ["--db", db_url, "check"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "note: no behaviour digest for diffusers-unet/old schema version 1 (recorded before digests existed): "
        "`registry variants bump diffusers-unet/old` records one",
        "2 of 2 variants unchanged",
    ]
    with open_registry(db_url) as reg:
        bumped = bump_variant(reg, "diffusers-unet/old")
        assert (bumped.status, bumped.version.version) == ("recorded", 2)
        assert bumped.version.fingerprint == built.fingerprint and bumped.version.behaviour is not None
        assert bump_variant(reg, "diffusers-unet/old").status == "unchanged"
    assert CliRunner().invoke(main, ["--db", db_url, "check"]).stdout == "2 of 2 variants unchanged\n"


def test_an_intended_behaviour_change_is_bumped_and_then_passes(sqlite_url, monkeypatch):
    import torch

    from registry.drift import check_all
    from registry.store import open_registry
    from registry.store.variants import bump_variant, init_builtin_variants

    with open_registry(sqlite_url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant("ctvit/tiny")])
        # an intended change to a forward: the GEGLU gates with SiLU (a function, so no class changes)
        monkeypatch.setattr(torch.nn.functional, "gelu", torch.nn.functional.silu)
        [report] = check_all(reg)
        assert (report.status, report.behaviour.status) == ("drift", BehaviourStatus.DRIFT)
        assert report.registered_fingerprint == report.built_fingerprint
        assert bump_variant(reg, "ctvit/tiny").version.version == 2
        [report] = check_all(reg)
        assert (report.status, report.behaviour.status) == ("ok", BehaviourStatus.OK)


def test_a_dependency_that_changed_behaviour_is_named(sqlite_url, monkeypatch):
    import torch

    from registry.drift import check_all
    from registry.store import open_registry
    from registry.store.provenance import package_versions

    family = get_family("ctvit")
    config = make_config(family, get_builtin_variant("ctvit/tiny").config)
    built = build_schema(family, config)
    exact_gelu = torch.nn.functional.gelu
    # recorded under an "older torch" whose GELU was the tanh approximation
    monkeypatch.setattr(torch.nn.functional, "gelu", lambda x, approximate="none": exact_gelu(x, approximate="tanh"))
    older = behaviour_digest(family, config)
    monkeypatch.undo()
    with open_registry(sqlite_url, upgrade=True) as reg:
        reg.register_variant("ctvit/tiny", "ctvit", get_builtin_variant("ctvit/tiny").config)
        reg.record_schema_version("ctvit/tiny", built.schema, built.signature, code_revision=None,
                                  package_versions={**package_versions(), "torch": "2.0.0"}, behaviour=older)
        [report] = check_all(reg)
    assert report.behaviour.status is BehaviourStatus.DRIFT
    assert report.package_changes == {"torch": ["2.0.0", package_versions()["torch"]]}
    lines = report.lines()
    assert lines[0].startswith("behaviour drift: ctvit/tiny outputs differ by ")
    assert any(line.startswith("  package torch: 2.0.0 → ") and line.endswith("(a dependency can change what a model "
                                                                             "computes)") for line in lines)


def test_behaviour_is_not_compared_when_the_layout_drifted(sqlite_url, monkeypatch):
    import registry.models.ctvit_attention as attention
    from registry.drift import check_all
    from registry.store import open_registry
    from registry.store.variants import init_builtin_variants

    with open_registry(sqlite_url, upgrade=True) as reg:
        init_builtin_variants(reg, [get_builtin_variant("ctvit/tiny")])
        monkeypatch.setattr(attention, "GEGLU", attention.SwiGLU)  # a module class changed: layout drift
        [report] = check_all(reg)
    assert report.status == "drift" and report.module_changes
    assert report.to_json()["behaviour_status"] == "not_compared"
    assert report.lines()[0] == "drift: ctvit/tiny (schema version 1 → the current code)"
