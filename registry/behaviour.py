"""Behaviour digests (DESIGN §11): what a build computes, recorded with each schema version.

Names, shapes and module classes do not pin what a model computes: a LeakyReLU slope, the input a
key projection reads, `x * w` vs `x * (1 + w)`, swapped gates. So when a schema version is
recorded, the registry also runs the family's probe:
1. build the model on the CPU (at the family's `probe_config` when the variant is too big to run
   in a second or two; the digest records that config) with the global RNG forked and seeded;
2. overwrite every floating-point weight with values derived from its name (`probe_weights`);
3. run `family.probe(model, config, generator)` in eval mode, float32, without gradients, on an
   input drawn from a generator seeded with `PROBE_SEED` (or the next seeds, until no discrete
   output of the probe sits at a near tie: `behaviour_digest.Discrete`, `PROBE_MARGIN`);
4. keep a rounded summary of the outputs (`behaviour_digest`), never the outputs themselves.

`registry check` reruns the probe at the recorded config and seed and compares (`check_behaviour`).

The probe runs on one torch thread whatever the process uses. Measured: diffusers' UNets give
outputs that differ by ~1.4e-6 (relative) between 1 and 2 threads, which flips digits of a digest
rounded to 6 significant digits; on one thread every built-in probe is bit-identical across
processes and whatever `torch.set_num_threads` the caller chose (tests/test_behaviour.py). One
thread is also the fast choice for tensors this small: on a busy 2-core machine the CTViT probes
took ~2 s each with 2 threads and ~0.01 s with one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .behaviour_digest import (
    DIGEST_FORMAT,
    PROBE_MARGIN,
    TOLERANCE,
    BehaviourComparison,
    compare_digests,
    probe_has_near_ties,
    summarize_outputs,
)

PROBE_SEED = 0
SEED_TRIES = 8  # probe seeds tried for an input without near ties (each try is one more probe run)


class BehaviourStatus(str, enum.Enum):
    """`behaviour_status` of `registry check --json` (values are stable)."""

    OK = "ok"  # the probe's outputs are within the tolerance of the recorded digest
    DRIFT = "drift"  # they are not, or the probe no longer runs
    NO_PROBE = "no_probe"  # the family declares no probe: only its layout is checked
    NOT_RECORDED = "not_recorded"  # the schema version predates digests (`variants bump` records one)
    PROBE_FAILED = "probe_failed"  # the probe failed when the version was recorded
    NOT_COMPARED = "not_compared"  # the layout drifted or is unbuildable: weights cannot be compared
    SKIPPED = "skipped"  # --no-behaviour


def probe_target(family: Any, config: Any) -> tuple[Any, bool]:
    """The config to probe and whether it is the family's smaller probe config (not `config`)."""
    if family.probe_config is None:
        return config, False
    small = family.probe_config(config)
    if small is None or small == config:
        return config, False
    return small, True


def run_probe(family: Any, config: Any, seed: int = PROBE_SEED) -> Any:
    """The outputs of `family.probe` on a model built with `config` and name-derived weights, its
    input drawn from a generator seeded with `seed`.

    Runs on the CPU in float32 and eval mode without gradients; the caller's global RNG state is
    left as it was. Raises whatever the build or the probe raises.
    """
    import torch

    from .probe_weights import set_name_derived_weights

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the module docstring: bit-identical outputs, and faster on tiny tensors
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(PROBE_SEED)  # a forward that draws from the global RNG draws the same numbers
            model = family.build(config)
            # nn.Module.to itself: diffusers' override warns about dtype casts meant for loading
            torch.nn.Module.to(model, device="cpu", dtype=torch.float32)
            set_name_derived_weights(model)
            model.eval()
            return family.probe(model, config, torch.Generator().manual_seed(seed))
    finally:
        torch.set_num_threads(threads)


def behaviour_digest(family: Any, config: Any) -> dict[str, Any] | None:
    """The digest of `family` built with `config`, or None when the family has no probe.

    `{"format", "probe": {"seed", "config"}, "outputs": {name: summary}}`; `probe.config` is the
    full probe config when the family's smaller one was used, else None; `probe.seed` the first
    seed from `PROBE_SEED` whose input puts no discrete choice near a tie (see `tie_free_outputs`).
    A probe (or its `probe_config` hook) that raises gives `{"format", "probe", "failed":
    "<Exception>: message"}` instead of outputs, so recording a schema version never fails because
    of its probe.
    """
    from .families import config_dict

    if family.probe is None:
        return None
    probe: dict[str, Any] = {"seed": PROBE_SEED, "config": None}
    try:
        target, reduced = probe_target(family, config)
        if reduced:
            probe["config"] = config_dict(target)
        probe["seed"], outputs = tie_free_outputs(family, target)
    except Exception as exc:  # noqa: BLE001  (a user's forward can raise anything; recorded, shown by check)
        return {"format": DIGEST_FORMAT, "probe": probe, "failed": _error_text(exc)}
    return {"format": DIGEST_FORMAT, "probe": probe, "outputs": outputs}


def _smallest_margin(outputs: dict[str, Any]) -> float:
    margins = [s["margin_min"] for s in outputs.values() if s.get("margin_min") is not None]
    return min((abs(m) for m in margins), default=float("inf"))


def tie_free_outputs(family: Any, config: Any) -> tuple[int, dict[str, Any]]:
    """`(seed, output summaries)` for the first seed from `PROBE_SEED` (of `SEED_TRIES`) whose
    discrete outputs (`Discrete`) all have a margin of at least `PROBE_MARGIN`, so float noise on
    another CPU cannot flip a choice; a probe without discrete outputs keeps `PROBE_SEED`. When no
    seed is tie-free, the one with the widest smallest margin (its near ties recorded). Raises what
    the probe raises."""
    best: tuple[float, int, dict[str, Any]] | None = None
    for seed in range(PROBE_SEED, PROBE_SEED + SEED_TRIES):
        outputs = summarize_outputs(run_probe(family, config, seed))
        margin = _smallest_margin(outputs)
        if margin >= PROBE_MARGIN:
            return seed, outputs
        if best is None or margin > best[0]:
            best = (margin, seed, outputs)
    return best[1], best[2]


def digest_label(digest: dict[str, Any] | None) -> str:
    """A short label for a recorded digest, for tables: `probed`, `probed small` (at the family's
    probe config), `probe failed`, or `-` (none: no probe, or recorded before digests)."""
    if digest is None:
        return "-"
    if "failed" in digest:
        return "probe failed"
    return "probed small" if digest.get("probe", {}).get("config") is not None else "probed"


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text[:300]


@dataclass
class BehaviourCheck:
    """The behaviour half of one variant's `registry check`."""

    status: BehaviourStatus
    comparison: BehaviourComparison | None = None
    probe_config: dict[str, Any] | None = None  # the config probed when it is not the variant's
    error: str | None = None
    note: str | None = None  # e.g. a format-1 digest whose probe input has near ties

    @property
    def max_difference(self) -> float | None:
        return self.comparison.max_difference if self.comparison else None


def check_behaviour(family: Any, config: Any, recorded: dict[str, Any] | None) -> BehaviourCheck:
    """Rerun the probe at the recorded probe config and seed and compare with the recorded digest.

    Returns NO_PROBE, NOT_RECORDED, PROBE_FAILED (nothing to compare), OK or DRIFT. A probe that
    raises now, where it ran when recorded, is DRIFT with `error` set. `note` says when a digest of
    format 1 (recorded before margins) was probed at an input with near ties: a near-tie choice
    that flips on another CPU moves the outputs computed from it, so it wants re-recording.
    """
    from .families import make_config

    if family.probe is None:
        return BehaviourCheck(BehaviourStatus.NO_PROBE)
    if recorded is None:
        return BehaviourCheck(BehaviourStatus.NOT_RECORDED)
    probed = recorded.get("probe", {}).get("config")
    if "failed" in recorded:
        return BehaviourCheck(BehaviourStatus.PROBE_FAILED, probe_config=probed, error=recorded["failed"])
    seed = recorded.get("probe", {}).get("seed", PROBE_SEED)
    try:
        target = make_config(family, probed) if probed is not None else config
        outputs = summarize_outputs(run_probe(family, target, seed), recorded.get("format", 1))
    except Exception as exc:  # noqa: BLE001  (the forward that ran when recorded now raises: drift)
        return BehaviourCheck(BehaviourStatus.DRIFT, probe_config=probed, error=_error_text(exc))
    comparison = compare_digests(recorded, {"outputs": outputs}, TOLERANCE)
    status = BehaviourStatus.OK if comparison.within_tolerance else BehaviourStatus.DRIFT
    note = None
    if recorded.get("format", 1) < 2 and probe_has_near_ties({"outputs": outputs}):
        note = ("its behaviour digest (format 1) was probed at an input where a discrete choice is a near tie, "
                "which another CPU may break the other way")
    return BehaviourCheck(status, comparison, probed, note=note)
