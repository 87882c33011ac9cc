"""Generic config inference (`registry.inference`) against a naive grid search over the same space.

For each case a checkpoint schema is built (meta device) from a config the solver is not told, and
`infer_config` searches the family's config from its defaults, with no family-specific code (the
built-in families' hand-written hooks are not used). Reported per case: model builds, rejected
configs (refused by the config class before any build), wall seconds, and whether the fingerprint
is exact.

The grid: every searchable field over the values the solver may draw from — integers from the
checkpoint's dimensions, their divisors, small products and layer counts (`dimension_pool`), every
choice, sequence lengths from numbered-layer counts with one pool value per index. It is far too
large to run, so its cost is an ESTIMATE: configs in the grid x the mean meta-build time measured
by the solver in this run (a lower bound: grid points are on average larger models). The ratio is
grid configs / solver builds. Imports (torch, diffusers, the models) are timed apart.

Targets (2 cores): user-style classes and tiny built-in variants each in <= 200 builds and <= 10 s;
SD-1.5 size in <= 60 s. The built-in families' defaults are SD-1.5 / CT-CLIP's, so the `sd15` rows
start close; the "SD-2 layout" rows start from the same defaults towards another layout.

    python benchmarks/bench_infer.py              # the table
    python benchmarks/bench_infer.py --json
    python benchmarks/bench_infer.py --cases gpt,diffusers-unet/sd15
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
USER_MODELS = REPO / "tests" / "infer_user_models.py"

# (case, family: a built-in name or a class in the user project, config, size class)
CASES = [
    ("gpt (nanoGPT char)", "class:GPT", dict(n_layer=6, n_head=6, n_embd=384, vocab_size=65, block_size=256), "small"),
    ("ctvit-like user class", "class:MyViT",
     dict(dim=64, depth=4, heads=4, dim_head=16, use_rms_norm=True, use_swiglu=True), "small"),
    ("cnn channels: list[int]", "class:SmallCNN", dict(channels=[16, 32, 64, 64], in_channels=1, num_classes=10), "small"),
    ("mlp(config dataclass)", "class:MLP", dict(in_features=64, hidden=[128, 64, 32], activation="gelu", norm="layer",
                                                 head=dict(num_classes=5, bias=False)), "small"),
    ("ctvit/tiny", "ctvit", "tiny", "small"),
    ("ldm-unet/tiny", "ldm-unet", "tiny", "small"),
    ("diffusers-unet/tiny", "diffusers-unet", "tiny", "small"),
    ("ctvit/baseline-gan", "ctvit", "baseline-gan", "large"),
    ("ldm-unet/sd15", "ldm-unet", "sd15", "large"),
    ("ldm-unet SD-2 layout at SD size", "ldm-unet", dict(
        num_heads=-1, num_head_channels=64, use_linear_in_transformer=True, context_dim=1024), "large"),
    ("diffusers-unet/sd15", "diffusers-unet", "sd15", "large"),
    ("diffusers-unet SD-2 layout at SD size", "diffusers-unet", dict(
        cross_attention_dim=1024, use_linear_projection=True, layers_per_block=2, sample_size=96), "large"),
]
TARGETS = {"small": (200, 10.0), "large": (None, 60.0)}


def grid_size(space, target) -> int:
    """Configs in the naive grid over the solver's value space (see the module docstring)."""
    from registry.inference_space import CHOICE, CHOICE_SEQ, INT, INT_SEQ, dimension_pool, layer_counts

    pool = len(dimension_pool(target))
    lengths = sorted({n for n, _ in layer_counts(target).most_common(6) if n > 0})
    total = 1
    for knob in space.knobs:
        if knob.kind == INT:
            total *= pool + (1 if knob.optional else 0)
        elif knob.kind == CHOICE:
            total *= len(knob.choices)
        elif knob.kind == INT_SEQ:
            total *= sum(pool**n for n in lengths)
        elif knob.kind == CHOICE_SEQ:
            total *= sum(len(knob.choices) ** n for n in lengths)
    return total


def _user_project() -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    (root / "mymodels").mkdir()
    (root / "mymodels" / "__init__.py").write_text("")
    shutil.copy(USER_MODELS, root / "mymodels" / "nets.py")
    sys.path.insert(0, str(root))
    return root


def run(selected: list[str] | None) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    from diffusers import UNet2DConditionModel  # noqa: F401  (diffusers imports lazily)

    import registry.models.ldm_blocks  # noqa: F401
    from registry.catalog import get_builtin_variant
    from registry.class_family import class_family
    from registry.families import build_schema, families, get_family, make_config
    from registry.inference import infer_config
    from registry.inference_space import search_space

    families()
    root = _user_project()
    for _, family_name, _, _ in CASES:
        if family_name.startswith("class:"):
            class_family(f"mymodels.nets:{family_name[6:]}")
    import_seconds = time.perf_counter() - started

    rows = []
    try:
        for case, family_name, values, size in CASES:
            if selected and case not in selected:
                continue
            if family_name.startswith("class:"):
                family = class_family(f"mymodels.nets:{family_name[6:]}")
            else:
                family = get_family(family_name)
            if isinstance(values, str):
                values = get_builtin_variant(f"{family_name}/{values}").config
            target = build_schema(family, make_config(family, values)).schema
            result = infer_config(family, target)
            space = search_space(family.config_class, family.default_config(), family.config_choices or {})
            grid = grid_size(space, target)
            per_build = result.build_seconds / max(result.builds, 1)
            max_builds, max_seconds = TARGETS[size]
            met = result.exact and result.seconds <= max_seconds and (max_builds is None or result.builds <= max_builds)
            rows.append(dict(
                case=case, family=family.name, entries=len(target), exact=result.exact, builds=result.builds,
                rejected=result.rejected, seconds=round(result.seconds, 3), mean_build_s=round(per_build, 4),
                undetermined=[u.field for u in result.undetermined], grid_configs=grid,
                grid_seconds_estimate=grid * per_build, ratio_builds=grid / max(result.builds, 1),
                target=f"<= {max_builds} builds, <= {max_seconds:g} s" if max_builds else f"<= {max_seconds:g} s",
                met=met,
            ))
            print(f"  {case}: {result.builds} builds, {result.seconds:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return import_seconds, rows


def _sci(value: float) -> str:
    return f"{value:.3g}" if value < 1e6 else f"{value:.1e}"


def _duration(seconds: float) -> str:
    days = seconds / (24 * 3600)
    if days < 1:
        return f"{seconds:.0f} s"
    return f"{days:.0f} days" if days < 365.25 else f"{_sci(days / 365.25)} years"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="figures as JSON")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    args = parser.parse_args()
    import_seconds, rows = run(args.cases.split(",") if args.cases else None)
    if args.json:
        print(json.dumps({"import_seconds": round(import_seconds, 2), "cases": rows}, indent=2, default=str))
        return 0 if all(r["met"] for r in rows) else 1
    print(f"imports (torch, diffusers, the models), not counted below: {import_seconds:.1f} s")
    headers = ["case", "entries", "exact", "builds", "rejected", "seconds", "grid configs", "grid time (est.)",
               "grid/solver", "target", "met"]
    table = [[r["case"], r["entries"], "yes" if r["exact"] else "NO", r["builds"], r["rejected"], f"{r['seconds']:.2f}",
              _sci(r["grid_configs"]), _duration(r["grid_seconds_estimate"]), f"{_sci(r['ratio_builds'])}x",
              r["target"], "yes" if r["met"] else "NO"] for r in rows]
    widths = [max(len(str(row[i])) for row in [headers, *table]) for i in range(len(headers))]
    for row in [headers, *table]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    print("grid: not run (too large); its time is configs x the solver's mean meta-build time in this run, "
          "a lower bound")
    for r in rows:
        if r["undetermined"]:
            print(f"undetermined in {r['case']}: {', '.join(r['undetermined'])}")
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
