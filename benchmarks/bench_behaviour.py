"""The behaviour step (DESIGN §11, issue 12): what recording and checking digests cost, and the
measurements behind the digest's tolerance.

1. Per built-in variant: the probe's cost (build on the CPU at the probed config, name-derived
   weights, the forward, the digest), after imports and one warm-up; the config it probes at and
   how many parameters that has. The budget: the whole step for every built-in variant ≤ 30 s on
   2 cores.
2. `registry check` in-process on a database with every built-in variant: with behaviour vs
   `--no-behaviour` (the difference is what the behaviour step adds to CI).
3. `registry init` as a whole process on a fresh SQLite file, with digests vs without (digests
   switched off in that process): what recording costs a user.
4. Noise vs signal: the digest difference between 1 and 2 torch threads when the probe is NOT
   pinned to one thread, and between equivalent and regressed CTViT forwards (`TOLERANCE` is 1e-4).

    python benchmarks/bench_behaviour.py            # tables
    python benchmarks/bench_behaviour.py --json     # the same figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_SECONDS = 30.0
REGISTRY = str(Path(sys.executable).with_name("registry"))
NO_DIGESTS = "import registry.behaviour as b; b.behaviour_digest = lambda family, config: None; "


def _variants():
    from registry.catalog import builtin_variants
    from registry.families import get_family, make_config

    for variant in builtin_variants():
        family = get_family(variant.family)
        yield variant.name, family, make_config(family, variant.config)


def probe_costs(repeats: int) -> list[dict]:
    from registry.behaviour import behaviour_digest, probe_target
    from registry.families import build_schema

    rows = []
    for name, family, config in _variants():
        behaviour_digest(family, config)  # warm-up: imports (diffusers), first-call caches
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            behaviour_digest(family, config)
            times.append(time.perf_counter() - started)
        target, reduced = probe_target(family, config)
        rows.append({"variant": name, "seconds": statistics.median(times), "probe_config": reduced,
                     "probed_parameters": build_schema(family, target).parameters,
                     "variant_parameters": build_schema(family, config).parameters})
    return rows


def check_costs(repeats: int) -> dict:
    from registry.drift import check_all
    from registry.store import open_registry
    from registry.store.variants import init_builtin_variants

    with tempfile.TemporaryDirectory() as folder:
        with open_registry(f"sqlite:///{folder}/registry.db", upgrade=True) as reg:
            init_builtin_variants(reg)
            check_all(reg)  # warm-up
            out = {}
            for label, behaviour in (("with_behaviour", True), ("no_behaviour", False)):
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    reports = check_all(reg, behaviour=behaviour)
                    times.append(time.perf_counter() - started)
                assert all(r.status == "ok" for r in reports), [r.variant for r in reports if r.status != "ok"]
                out[label] = statistics.median(times)
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def init_costs(repeats: int) -> dict:
    """Wall and CPU seconds (medians) of `registry init` with and without digests. CPU time is the
    steadier figure on a machine shared with other jobs."""
    out = {}
    for label, prelude in (("with_digests", ""), ("without_digests", NO_DIGESTS)):
        wall, cpu = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as folder:
                env = {**os.environ, "REGISTRY_DB": f"sqlite:///{folder}/registry.db"}
                code = prelude + "from registry.command.cli import main; main(['init'], prog_name='registry')"
                started, cpu_before = time.perf_counter(), _children_cpu()
                done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
                wall.append(time.perf_counter() - started)
                cpu.append(_children_cpu() - cpu_before)
                if done.returncode != 0:
                    raise SystemExit(f"registry init failed: {done.stderr}")
        out[label] = statistics.median(wall)
        out[label + "_cpu"] = statistics.median(cpu)
    return out


def _unpinned_digest(family, config, threads: int) -> dict:
    """The digest with the probe left on `threads` threads (what `run_probe` avoids)."""
    import torch

    import registry.behaviour as behaviour

    pin, before = torch.set_num_threads, torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.set_num_threads = lambda n: None  # run_probe's pinning becomes a no-op
    try:
        return behaviour.behaviour_digest(family, config)
    finally:
        torch.set_num_threads = pin
        torch.set_num_threads(before)


def noise_and_signal() -> dict:
    import torch.nn.functional as F

    import registry.models.ctvit_attention as attention
    from registry.behaviour import behaviour_digest
    from registry.behaviour_digest import compare_digests

    out: dict = {"threads_unpinned": {}}
    variants = {name: (family, config) for name, family, config in _variants()}
    for name, (family, config) in variants.items():
        one, two = (_unpinned_digest(family, config, n) for n in (1, 2))
        out["threads_unpinned"][name] = compare_digests(one, two).max_difference

    family, config = variants["ctvit/tiny"]
    base = behaviour_digest(family, config)
    layer_norm, geglu, slope = attention.LayerNorm.forward, attention.GEGLU.forward, attention.LEAKY_SLOPE

    def by_hand(self, x):  # LayerNorm, mean and variance summed in another order
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / (var + 1e-5).sqrt() * self.gamma + self.beta

    changes = {
        "equivalent: LayerNorm written out by hand": ("LayerNorm", "forward", by_hand, layer_norm),
        "regression: GEGLU gates swapped": ("GEGLU", "forward",
                                            lambda s, x: (lambda a, g: F.gelu(a) * g)(*x.chunk(2, -1)), geglu),
        "regression: LayerNorm x * (1 + gamma)": ("LayerNorm", "forward", lambda s, x: F.layer_norm(
            x, x.shape[-1:]) * (1 + s.gamma) + s.beta, layer_norm),
        "regression: LeakyReLU slope 0.1 -> 0.11": (None, "LEAKY_SLOPE", slope * 1.1, slope),
    }
    out["ctvit/tiny"] = {}
    for label, (owner, attribute, changed, original) in changes.items():
        target = getattr(attention, owner) if owner else attention
        setattr(target, attribute, changed)
        try:
            out["ctvit/tiny"][label] = compare_digests(base, behaviour_digest(family, config)).max_difference
        finally:
            setattr(target, attribute, original)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    probes = probe_costs(args.repeats)
    total = sum(row["seconds"] for row in probes)
    figures = {"probes": probes, "probe_total_seconds": total, "check": check_costs(args.repeats),
               "init": init_costs(args.repeats), "noise_and_signal": noise_and_signal()}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0 if total <= BUDGET_SECONDS else 1
    print(f"{'variant':28s} {'probe s':>8s}  {'probed at':14s} {'params probed':>14s} {'params':>14s}")
    for row in probes:
        where = "probe config" if row["probe_config"] else "its config"
        print(f"{row['variant']:28s} {row['seconds']:8.3f}  {where:14s} {row['probed_parameters']:14,d} "
              f"{row['variant_parameters']:14,d}")
    verdict = "within" if total <= BUDGET_SECONDS else "OVER"
    print(f"behaviour step for all {len(probes)} built-in variants: {total:.2f} s ({verdict} the {BUDGET_SECONDS:.0f} s budget)")
    check = figures["check"]
    print(f"check_all, every built-in variant: {check['with_behaviour']:.2f} s with behaviour, "
          f"{check['no_behaviour']:.2f} s with --no-behaviour (+{check['with_behaviour'] - check['no_behaviour']:.2f} s)")
    init = figures["init"]
    print(f"`registry init` (whole process, fresh SQLite): {init['with_digests']:.2f} s with digests, "
          f"{init['without_digests']:.2f} s without ({init['with_digests'] / init['without_digests']:.2f}x); "
          f"CPU {init['with_digests_cpu']:.2f} s vs {init['without_digests_cpu']:.2f} s "
          f"(+{init['with_digests_cpu'] - init['without_digests_cpu']:.2f} s)")
    noise = figures["noise_and_signal"]
    worst = max(noise["threads_unpinned"].items(), key=lambda kv: kv[1] or 0)
    print(f"1 vs 2 threads, probe not pinned: largest digest difference {worst[1]:.1e} ({worst[0]}); "
          f"{sum(1 for v in noise['threads_unpinned'].values() if v == 0)} of {len(noise['threads_unpinned'])} "
          "variants bit-identical")
    for label, difference in noise["ctvit/tiny"].items():
        print(f"ctvit/tiny, {label}: {difference:.1e}")
    return 0 if total <= BUDGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
