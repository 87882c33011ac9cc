"""Behaviour digests survive another CPU: a discrete choice (an argmax over codebook scores) whose
two best scores are closer than float noise may go the other way elsewhere; that is not drift,
while a real change to the forward still is.

"Another CPU" is emulated by the model's `NOISE` knob: it scales a near copy of code 0 by
1 ± 1e-6 (relative noise of the size float32 reorderings give), which flips every choice between
code 0 and its copy and moves nothing else by more than ~1e-6.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from registry.behaviour import BehaviourStatus, behaviour_digest, check_behaviour, run_probe
from registry.behaviour_digest import (
    PROBE_MARGIN,
    TIE_TOLERANCE,
    TOLERANCE,
    Discrete,
    compare_digests,
    digests_match,
    summarize_outputs,
)
from registry.families import Family

KNOBS = {"noise": 1.0, "slope": 0.1}  # the "CPU" (sign of the tie) and the code (a LeakyReLU slope)


@dataclass(frozen=True)
class QuantizerConfig:
    dim: int = 8
    codes: int = 4
    positions: int = 16


class Quantizer(nn.Module):
    """Encodes, then picks the code with the highest score; code 0 has a near copy (the tie)."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.proj = nn.Linear(config.dim, config.dim)
        self.codes = nn.Parameter(torch.empty(config.codes, config.dim))

    def forward(self, x):
        z = F.leaky_relu(self.proj(x), KNOBS["slope"])
        codes = torch.cat([self.codes, self.codes[:1] * (1 + KNOBS["noise"] * 1e-6)])
        ids = Discrete.from_scores(z @ codes.t())
        return {"encoded": z, "ids": ids, "decoded": codes[ids.values]}


def probe(model, config, generator):
    return model(torch.randn(config.positions, config.dim, generator=generator))


FAMILY = Family(name="quantizer", config_class=QuantizerConfig, build=Quantizer, probe=probe)


@pytest.fixture(autouse=True)
def knobs():
    KNOBS.update(noise=1.0, slope=0.1)
    yield
    KNOBS.update(noise=1.0, slope=0.1)


def near_ties(config: QuantizerConfig, seed: int) -> list[int]:
    return summarize_outputs(run_probe(FAMILY, config, seed))["ids"]["near_ties"]


def test_margins_say_how_clearly_each_id_was_chosen():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.50, 0.49999, 0.0]], dtype=torch.float64)
    chosen = Discrete.from_scores(scores)
    assert chosen.values.tolist() == [0, 0]
    scale = (0.5 * (0.9**2 + 0.5**2)) ** 0.5
    assert torch.allclose(chosen.margins, torch.tensor([0.7, 0.00001], dtype=torch.float64) / scale)
    summary = summarize_outputs({"ids": chosen})["ids"]
    assert summary["values"] == [0, 0] and summary["near_ties"] == [1]
    # the model's own choice, scored by another rule: a choice that is not the best has a negative margin
    assert Discrete.chosen(torch.tensor([1, 0]), scores).margins[0] < 0
    # an argmin (distances)
    assert Discrete.from_scores(-scores, largest=False).values.tolist() == [0, 0]


def test_a_flip_at_a_near_tie_is_not_drift_and_a_real_change_still_is():
    # every position near code 0 is a near tie, at every seed: the digest records them
    config = QuantizerConfig()
    recorded = behaviour_digest(FAMILY, config)
    ties = recorded["outputs"]["ids"]["near_ties"]
    assert ties and recorded["probe"]["seed"] in range(8)

    KNOBS["noise"] = -1.0  # another CPU: the copy of code 0 now loses each of those ties
    flipped = run_probe(FAMILY, config, recorded["probe"]["seed"])["ids"].values.tolist()
    differing = [i for i, (a, b) in enumerate(zip(recorded["outputs"]["ids"]["values"], flipped)) if a != b]
    assert differing and set(differing) <= set(ties)
    check = check_behaviour(FAMILY, config, recorded)
    assert check.status is BehaviourStatus.OK, [d.to_json() for d in check.comparison.changed]
    [ids] = [d for d in check.comparison.differences if d.name == "ids"]
    assert (ids.difference, ids.detail) == (0.0, f"0 of 16 values differ ({len(differing)} more at a near tie, "
                                                  f"margin < {TIE_TOLERANCE:g}: not counted)")
    # compared exactly (as digest format 1 did), the same run was drift
    exact = [{"outputs": {k: {f: v for f, v in s.items() if f != "near_ties"} for k, s in d["outputs"].items()}}
             for d in (recorded, {"outputs": summarize_outputs(run_probe(FAMILY, config, recorded["probe"]["seed"]))})]
    assert compare_digests(*exact).max_difference > TOLERANCE

    KNOBS["slope"] = 0.2  # a real change to the forward, on the other CPU
    check = check_behaviour(FAMILY, config, recorded)
    assert check.status is BehaviourStatus.DRIFT and check.max_difference > 100 * TOLERANCE


def test_the_probe_input_is_chosen_without_near_ties_so_ids_cannot_flip():
    # three positions: at seeds 0 and 1 one of them sits at the tie; seed 2 has none
    config = QuantizerConfig(dim=6, positions=3)
    assert near_ties(config, 0)
    recorded = behaviour_digest(FAMILY, config)
    seed = recorded["probe"]["seed"]
    assert seed > 0 and not near_ties(config, seed) and all(near_ties(config, s) for s in range(seed))
    assert recorded["outputs"]["ids"]["near_ties"] == [] and recorded["outputs"]["ids"]["margin_min"] >= PROBE_MARGIN

    KNOBS["noise"] = -1.0  # another CPU: nothing at this input is close enough to a tie to move
    check = check_behaviour(FAMILY, config, recorded)
    assert check.status is BehaviourStatus.OK and check.max_difference < TOLERANCE
    KNOBS["slope"] = 0.2
    assert check_behaviour(FAMILY, config, recorded).status is BehaviourStatus.DRIFT


def format_1_digest(config: QuantizerConfig) -> dict:
    """What digest format 1 stored: seed 0, integer ids without margins."""
    outputs = run_probe(FAMILY, config, 0)
    return {"format": 1, "probe": {"seed": 0, "config": None},
            "outputs": summarize_outputs({**outputs, "ids": outputs["ids"].values})}


def test_a_format_1_digest_keeps_working_and_says_when_it_wants_re_recording():
    tied = QuantizerConfig(dim=6, positions=3)  # seed 0 has a near tie
    old = format_1_digest(tied)
    check = check_behaviour(FAMILY, tied, old)
    assert check.status is BehaviourStatus.OK
    assert check.note == ("its behaviour digest (format 1) was probed at an input where a discrete choice is a near "
                          "tie, which another CPU may break the other way")
    # its re-recording is at another seed, so it does not match: `registry variants bump` records it
    assert not digests_match(old, behaviour_digest(FAMILY, tied))
    KNOBS["slope"] = 0.2
    assert check_behaviour(FAMILY, tied, old).status is BehaviourStatus.DRIFT

    KNOBS["slope"] = 0.1
    free = QuantizerConfig(dim=8, positions=2)  # seed 0 has none: the old digest is as good as a new one
    old = format_1_digest(free)
    assert check_behaviour(FAMILY, free, old).note is None
    assert behaviour_digest(FAMILY, free)["probe"]["seed"] == 0 and digests_match(old, behaviour_digest(FAMILY, free))


def test_a_small_output_is_sampled_at_every_value_and_format_1_samples_still_compare():
    logits = torch.tensor([0.5, -1.0, 2.0, 0.25])
    assert summarize_outputs({"logits": logits})["logits"]["sample"] == [0.5, -1.0, 2.0, 0.25]
    assert summarize_outputs({"logits": logits}, digest_format=1)["logits"]["sample"] == [0.5] * 4
    # a format-1 digest of the quantizer's outputs, plus a small one, compared where nothing moved
    config = QuantizerConfig(dim=8, positions=2)
    small_probe = dataclasses.replace(FAMILY, probe=lambda model, config, generator: {
        **probe(model, config, generator), "first": probe(model, config, generator)["encoded"][0, :4]})
    outputs = run_probe(small_probe, config, 0)
    old = {"format": 1, "probe": {"seed": 0, "config": None},
           "outputs": summarize_outputs({**outputs, "ids": outputs["ids"].values}, digest_format=1)}
    check = check_behaviour(small_probe, config, old)
    assert check.status is BehaviourStatus.OK and check.max_difference == 0.0


def test_check_notes_a_format_1_digest_at_a_near_tie_until_bump_records_format_2(sqlite_url, monkeypatch):
    from registry import families
    from registry.drift import behaviour_notes, check_all
    from registry.families import build_schema, config_dict
    from registry.store import open_registry
    from registry.store.variants import bump_variant

    monkeypatch.setitem(families._FAMILIES, FAMILY.name, FAMILY)
    tied = QuantizerConfig(dim=6, positions=3)
    built = build_schema(FAMILY, tied)
    with open_registry(sqlite_url, upgrade=True) as reg:
        reg.register_variant("quantizer/tied", FAMILY.name, config_dict(tied))
        reg.record_schema_version("quantizer/tied", built.schema, built.signature, code_revision=None,
                                  package_versions={}, behaviour=format_1_digest(tied))
        [report] = check_all(reg)
        assert (report.status, report.behaviour.status) == ("ok", BehaviourStatus.OK)
        assert behaviour_notes([report]) == [
            "quantizer/tied: its behaviour digest (format 1) was probed at an input where a discrete choice is a "
            "near tie, which another CPU may break the other way: `registry variants bump quantizer/tied` records "
            "a digest at an input without near ties"]
        assert report.to_json()["behaviour_note"].startswith("its behaviour digest (format 1)")
        bumped = bump_variant(reg, "quantizer/tied")
        assert (bumped.status, bumped.version.behaviour["format"], bumped.version.behaviour["probe"]["seed"]) == (
            "recorded", 2, 2)
        [report] = check_all(reg)
        assert report.behaviour.status is BehaviourStatus.OK and behaviour_notes([report]) == []
