"""Building a variant's schema on the meta device vs constructing the model on the CPU (DESIGN §9).

For the Stable-Diffusion-1.5 UNets (`diffusers-unet/sd15`, `ldm-unet/sd15`) and two modes:
- meta: `build_schema` — build under `torch.device("meta")`, then schema, module signature and
  fingerprint (what `registry schema` and `registry check` do);
- cpu:  ordinary construction (allocates and randomly initializes 860M float32 parameters, 3.4 GB),
  then schema and fingerprint.

Every measurement runs in a fresh subprocess, so its peak RSS (the `ru_maxrss` high-water mark of
`resource.getrusage`) is its own. Imports (torch, diffusers, the model code) happen before the
clock starts and are reported apart: they are the same in both modes, and the RSS they leave is
reported as the baseline.

    python benchmarks/bench_meta_build.py            # a table and the cpu/meta ratios
    python benchmarks/bench_meta_build.py --json     # the same figures as JSON
    python benchmarks/bench_meta_build.py --repeats 3 --variants ldm-unet/sd15
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("diffusers-unet/sd15", "ldm-unet/sd15")
MODES = ("meta", "cpu")


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(variant: str, mode: str) -> dict:
    """One measurement in this process (meant to be a fresh one); returns its figures."""
    started = time.perf_counter()
    import torch  # noqa: F401
    import diffusers  # noqa: F401
    from diffusers import UNet2DConditionModel  # noqa: F401  (diffusers imports lazily)

    import registry.models.ldm_blocks  # noqa: F401
    from registry.configs import config_from_options
    from registry.families import build_schema
    from registry.schema import schema_of_module

    family_name, short_name = variant.split("/", 1)
    family, config = config_from_options(family_name, short_name)
    import_s = time.perf_counter() - started
    baseline_mb = _peak_rss_mb()

    started = time.perf_counter()
    if mode == "meta":
        fingerprint = build_schema(family, config).fingerprint
    else:
        fingerprint = schema_of_module(family.build(config)).fingerprint
    seconds = time.perf_counter() - started
    return {
        "variant": variant,
        "mode": mode,
        "seconds": seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline_mb,
        "import_s": import_s,
        "fingerprint": fingerprint,
    }


def measure_in_subprocess(variant: str, mode: str) -> dict:
    """`measure` in a fresh interpreter; raises RuntimeError with its stderr if it fails."""
    done = subprocess.run(
        [sys.executable, __file__, "--measure", variant, mode], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {variant} {mode} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    """Median time, highest peak over the repeats of one (variant, mode)."""
    first = runs[0]
    return {
        "variant": first["variant"],
        "mode": first["mode"],
        "repeats": len(runs),
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "baseline_rss_mb": max(r["baseline_rss_mb"] for r in runs),
        "import_s": statistics.median(r["import_s"] for r in runs),
        "fingerprint": first["fingerprint"],
    }


def _rss_growth(result: dict) -> float:
    # floored at 1 MB: a meta build may grow RSS by almost nothing, and the ratio must stay finite
    return max(result["peak_rss_mb"] - result["baseline_rss_mb"], 1.0)


def ratios(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per variant, cpu over meta: time, peak RSS, and RSS growth above the post-import baseline."""
    by_key = {(r["variant"], r["mode"]): r for r in results}
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in results):
        meta, cpu = by_key.get((variant, "meta")), by_key.get((variant, "cpu"))
        if not (meta and cpu):
            continue
        out[variant] = {
            "time": cpu["seconds"] / meta["seconds"],
            "peak_rss": cpu["peak_rss_mb"] / meta["peak_rss_mb"],
            "rss_growth": _rss_growth(cpu) / _rss_growth(meta),
        }
    return out


def render(results: list[dict], by_variant: dict[str, dict[str, float]]) -> str:
    header = f"{'variant':<22}{'mode':<6}{'build+schema s':>15}{'peak RSS MB':>13}"
    lines = [header + f"{'after imports MB':>18}{'imports s':>11}"]
    for r in results:
        lines.append(
            f"{r['variant']:<22}{r['mode']:<6}{r['seconds']:>15.3f}{r['peak_rss_mb']:>13.0f}"
            f"{r['baseline_rss_mb']:>18.0f}{r['import_s']:>11.2f}"
        )
    lines.append("")
    for variant, ratio in by_variant.items():
        lines.append(
            f"{variant}: cpu/meta time x{ratio['time']:.0f}, peak RSS x{ratio['peak_rss']:.1f}, "
            f"RSS growth over imports x{ratio['rss_growth']:.0f}"
        )
    fingerprints = {(r["variant"], r["fingerprint"]) for r in results}
    if len(fingerprints) != len({r["variant"] for r in results}):
        lines.append("WARNING: meta and cpu builds gave different fingerprints")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--repeats", type=int, default=1, help="subprocesses per (variant, mode); median time")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="VARIANT")
    parser.add_argument("--measure", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0

    results = [
        summarize([measure_in_subprocess(variant, mode) for _ in range(args.repeats)])
        for variant in args.variants
        for mode in MODES
    ]
    by_variant = ratios(results)
    if args.json:
        print(json.dumps({"results": results, "ratios": by_variant}, indent=2))
    else:
        print(render(results, by_variant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
