"""Benchmark: whole-process `registry match` at 100,000 schema versions, and nearest-match ranking.

Issue 5, DESIGN §9. Three sections:

1. exact   - `registry --db URL match FILE --json` as a whole process (spawn to exit, peak RSS)
             against an SQLite registry of 100,000 synthetic schema versions (built with
             `bench_store.build_registry`) plus the built-in variants (`init_builtin_variants`),
             on two Stable-Diffusion-1.5-size files written with `torch.empty` data:
               sd15-unet.pt   the diffusers UNet state dict (3.44 GB; diffusers-unet/sd15, top level)
               sd15-full.ckpt an SD-1.5 single file (4.27 GB): `state_dict` holding the LDM UNet under
                              `model.diffusion_model.` (ldm-unet/sd15), a VAE under `first_stage_model.`
                              (diffusers names), the CLIP ViT-L text encoder under `cond_stage_model.`
                              and the DDPM schedule buffers; plus `global_step`.
             Warm page cache (interleaved runs, medians) and cold (`drop_caches` before each run, when
             this process may write /proc/sys/vm/drop_caches). Then where the time goes: phases timed
             inside a fresh process, the database queries one match makes, and the heaviest imports.
2. nearest - `match_checkpoint` on CTViT checkpoints that match nothing exactly (renamed modules, a
             dependency that added a buffer, a partial LayerNorm -> RMSNorm change) among 10,000 schema
             versions: it falls through converters and config inference to nearest ranking with diffs.
             Median/p99 in one warm process, the whole `registry match` process, and whether the top
             candidate is the CTViT the query came from.
3. naive   - what a user does without the registry: `torch.load(weights_only=True)` and comparing the
             key set with each known variant's, measured on a subset of the stored schemas and
             extrapolated (the figure says so).

The databases and checkpoint files (~8.5 GB) are cached under --cache (default: a directory in the
temp dir) so reruns are quick; --clean deletes them at the end.

    python benchmarks/bench_match.py [--runs 11] [--cold-runs 3] [--repeats 30] [--json] [--clean]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from contextlib import closing
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fingerprint import CHILD_ENV, GB, SNIPPETS, empty_state, measure, registry_command, run_once, unet_shapes  # noqa: E402
from bench_store import build_registry, percentile  # noqa: E402

TARGET_S = 1.0
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "model-registry-bench"
SD_SCHEDULE_BUFFERS = [  # LDM's DDPM keeps its noise schedule as [1000] buffers in the state dict
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
]


# --- inputs (cached) ----------------------------------------------------------------------------


def variant_schema(name: str):
    """The schema a built-in variant builds (meta device)."""
    from registry.catalog import get_builtin_variant
    from registry.families import build_schema, get_family, make_config

    variant = get_builtin_variant(name)
    family = get_family(variant.family)
    return build_schema(family, make_config(family, variant.config)).schema


def clip_text_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """CLIP ViT-L/14 text encoder (SD-1.5's `cond_stage_model.transformer.`): 12 layers of width 768."""
    width, mlp = 768, 3072
    shapes = [("embeddings.token_embedding.weight", (49408, width)), ("embeddings.position_embedding.weight", (77, width)),
              ("final_layer_norm.weight", (width,)), ("final_layer_norm.bias", (width,))]
    for i in range(12):
        layer = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes += [(f"{layer}self_attn.{proj}.weight", (width, width)), (f"{layer}self_attn.{proj}.bias", (width,))]
        for norm in ("layer_norm1", "layer_norm2"):
            shapes += [(f"{layer}{norm}.weight", (width,)), (f"{layer}{norm}.bias", (width,))]
        shapes += [(f"{layer}mlp.fc1.weight", (mlp, width)), (f"{layer}mlp.fc1.bias", (mlp,)),
                   (f"{layer}mlp.fc2.weight", (width, mlp)), (f"{layer}mlp.fc2.bias", (width,))]
    return [("text_model." + name, shape) for name, shape in shapes]


def vae_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """SD-1.5's VAE (AutoencoderKL, 83.7M parameters) on the meta device; diffusers' names, not LDM's."""
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
    return [(k, tuple(v.shape)) for k, v in vae.state_dict().items()]


def _save(state: dict, path: Path) -> None:
    import torch

    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def sd15_files(cache: Path, log) -> dict[str, dict]:
    """The two SD-1.5-size checkpoints (written once into `cache`) and what each must match."""
    import torch

    unet_diffusers, source = unet_shapes()
    unet_ldm = variant_schema("ldm-unet/sd15")
    plain, full = cache / "sd15-unet.pt", cache / "sd15-full.ckpt"
    if not plain.exists():
        print(f"writing {plain} ...", file=log, flush=True)
        _save(empty_state(unet_diffusers), plain)
    if not full.exists():
        print(f"writing {full} ...", file=log, flush=True)
        state = empty_state([(e.name, e.shape) for e in unet_ldm], prefix="model.diffusion_model.")
        state.update(empty_state(vae_shapes(), prefix="first_stage_model."))
        state.update(empty_state(clip_text_shapes(), prefix="cond_stage_model.transformer."))
        state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
        state.update(empty_state([(name, (1000,)) for name in SD_SCHEDULE_BUFFERS]))
        _save({"state_dict": state, "global_step": 840000}, full)
    os.sync()
    return {
        "sd15-unet.pt": {"path": plain, "variant": "diffusers-unet/sd15", "prefix": "", "source": source},
        "sd15-full.ckpt": {"path": full, "variant": "ldm-unet/sd15", "prefix": "model.diffusion_model.",
                           "source": "ldm-unet/sd15 + diffusers AutoencoderKL + CLIP ViT-L text encoder"},
    }


def registry_db(cache: Path, count: int, workers: int, expect: dict[str, str], log) -> tuple[str, float | None]:
    """(URL, build seconds or None if cached) of an SQLite registry: `count` synthetic schema versions
    plus the built-in variants. A cached file is reused when it still holds `expect` (variant ->
    fingerprint the current code builds)."""
    from registry.store import open_registry
    from registry.store.migrate import HEAD_REVISION
    from registry.store.variants import init_builtin_variants

    path = cache / f"registry-{count}-{HEAD_REVISION}.db"
    if path.exists():
        with open_registry(f"sqlite:///{path}", readonly=True) as reg:
            if all(name in {sv.variant for sv in reg.find_by_fingerprint(fp)} for name, fp in expect.items()):
                return f"sqlite:///{path}", None
        print(f"{path} is stale (the built-in variants changed); rebuilding", file=log)
        path.unlink()
    print(f"building {path} ({count:,} synthetic schema versions + built-in variants) ...", file=log, flush=True)
    partial = path.with_name(path.name + ".partial")
    for stale in partial.parent.glob(partial.name + "*"):
        stale.unlink()
    start = time.perf_counter()
    build_registry(f"sqlite:///{partial}", count, workers)
    with open_registry(f"sqlite:///{partial}") as reg:
        init_builtin_variants(reg)
    with closing(sqlite3.connect(partial)) as db:  # the last connection to close removes -wal and -shm
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.replace(partial, path)
    return f"sqlite:///{path}", time.perf_counter() - start


# --- 1. exact match, whole process --------------------------------------------------------------


def drop_caches() -> str | None:
    """Empty the page cache; None when done, else why it cannot be."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return None
    except OSError as exc:
        return f"cannot drop the page cache ({exc.strerror or exc}); cold runs not measured"


def measure_cold(commands: dict[str, list[str]], runs: int) -> dict | str:
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            why = drop_caches()
            if why:
                return why
            samples[name].append(run_once(command))
    return {name: {"median_s": statistics.median(w for w, _ in got), "min_s": min(w for w, _ in got),
                   "peak_mb": statistics.median(p for _, p in got), "runs": runs} for name, got in samples.items()}


PHASES = r"""
import time
t = [time.perf_counter()]
import json, sys
import registry.command.cli                          # click and the command line
t.append(time.perf_counter())
import sqlalchemy, sqlalchemy.orm                    # the database layer itself
t.append(time.perf_counter())
import registry.store.api, registry.store.migrate    # our ORM classes and store on top of it
t.append(time.perf_counter())
from registry.matching import match_checkpoint
from registry.readers import read_checkpoint
from registry.store import open_registry
t.append(time.perf_counter())
info = read_checkpoint(sys.argv[2])
t.append(time.perf_counter())
reg = open_registry(sys.argv[1], readonly=True)
t.append(time.perf_counter())
queries = []
sqlalchemy.event.listen(reg.engine, "before_cursor_execute", lambda *a: queries.append(1))
result = match_checkpoint(reg, info)
t.append(time.perf_counter())
text = json.dumps({"path": sys.argv[2], **result.to_json()}, indent=2)
reg.close()
t.append(time.perf_counter())
print(json.dumps({"phases": [b - a for a, b in zip(t, t[1:])], "queries": len(queries),
                  "prefixes": len(info.submodels()), "status": result.status, "variant": result.variant}))
"""
PHASE_NAMES = ["import click + cli", "import sqlalchemy (+orm)", "import registry.store (ORM classes)",
               "import matching, readers", "read checkpoint", "open registry", "match_checkpoint", "JSON + close"]


def phase_breakdown(url: str, path: Path, runs: int) -> dict:
    """Median seconds of each phase of a match, each run in a fresh process (warm page cache)."""
    runs_out = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", PHASES, url, str(path)], capture_output=True, text=True,
                             env=CHILD_ENV, cwd=tempfile.gettempdir())
        if out.returncode != 0:
            raise SystemExit(f"phase breakdown failed:\n{out.stderr}")
        runs_out.append(json.loads(out.stdout.strip().splitlines()[-1]))
    phases = {name: statistics.median(r["phases"][i] for r in runs_out) for i, name in enumerate(PHASE_NAMES)}
    last = runs_out[-1]
    return {"phases_s": phases, "in_process_total_s": sum(phases.values()), "queries": last["queries"],
            "prefixes": last["prefixes"], "status": last["status"], "variant": last["variant"]}


def heaviest_imports(command: list[str], top: int) -> list[tuple[str, float]]:
    """(module, cumulative ms) of the heaviest imports of one run under -X importtime, outermost
    imports only (importtime's own overhead inflates every figure)."""
    env = dict(CHILD_ENV, PYTHONPROFILEIMPORTTIME="1")
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        if depth <= 1:
            rows.append((name.strip(), int(cumulative) / 1e3))
    return sorted(rows, key=lambda row: -row[1])[:top]


def exact_section(url: str, files: dict, runs: int, cold_runs: int, log) -> dict:
    registry, how = registry_command()
    python = [sys.executable, "-c"]
    commands = {"python -c pass": python + ["pass"]}
    for label, spec in files.items():
        commands[f"registry fingerprint {label}"] = registry + ["fingerprint", str(spec["path"]), "--json"]
        commands[f"registry match {label}"] = registry + ["--db", url, "match", str(spec["path"]), "--json"]
    for label, spec in files.items():  # the answer must be the right one before it is timed
        out = subprocess.run(commands[f"registry match {label}"], capture_output=True, text=True, env=CHILD_ENV)
        answer = json.loads(out.stdout) if out.stdout else {}
        if out.returncode != 0 or answer.get("variant") != spec["variant"] or answer.get("prefix") != spec["prefix"]:
            raise SystemExit(f"registry match {spec['path']} answered {out.returncode} {answer.get('status')} "
                             f"{answer.get('variant')} {answer.get('prefix')!r}; expected {spec['variant']}\n{out.stderr}")
        spec["answer"] = f"{answer['status']} {answer['variant']} prefix={answer['prefix']!r}"
    print("measuring whole processes (warm page cache) ...", file=log, flush=True)
    warm = measure(commands, runs)
    print("measuring whole processes (cold page cache) ...", file=log, flush=True)
    cold = measure_cold({k: v for k, v in commands.items() if k.startswith(("registry match", "python"))}, cold_runs)
    print("breaking down where the time goes ...", file=log, flush=True)
    breakdown = {label: phase_breakdown(url, spec["path"], runs) for label, spec in files.items()}
    imports = heaviest_imports(commands[f"registry match {list(files)[-1]}"], 10)
    return {"registry_command": f"{' '.join(registry)}  [{how}]", "warm": warm, "cold": cold,
            "breakdown": breakdown, "heaviest_imports_ms": imports,
            "answers": {label: spec["answer"] for label, spec in files.items()}}


# --- 2. nearest-match ranking -------------------------------------------------------------------


def nearest_queries() -> dict[str, tuple[Any, str]]:
    """CTViT schemas that match nothing registered exactly: (schema, what changed)."""
    from registry.schema import Schema, TensorEntry

    base = variant_schema("ctvit/baseline")
    entries = list(base.entries)
    renamed = Schema(TensorEntry(e.name.replace("_transformer.layers.", "_transformer.blocks."), e.shape, e.dtype)
                     for e in entries)
    embed = base.by_name["vq._codebook.embed"]
    upgraded = Schema(entries + [TensorEntry("vq._codebook.embed_avg", embed.shape, embed.dtype)])
    def encoder_out_norm(entry) -> bool:
        return entry.name.startswith("enc_") and ".norm_out." in entry.name

    norms = Schema(  # LayerNorm(gamma, beta) -> RMSNorm(weight) in the encoders' output norms only
        TensorEntry(e.name.removesuffix("gamma") + "weight", e.shape, e.dtype) if encoder_out_norm(e) else e
        for e in entries
        if not (encoder_out_norm(e) and e.name.endswith(".beta"))
    )
    dsconv = Schema(TensorEntry(e.name.replace(".dsconv.", ".depthwise_conv."), e.shape, e.dtype) for e in entries)
    return {
        "renamed module (broad)": (renamed, "`_transformer.layers.` -> `_transformer.blocks.` (264 of 289 entries)"),
        "renamed module (narrow)": (dsconv, "`.dsconv.` -> `.depthwise_conv.` (16 of 289 entries)"),
        "dependency added a buffer": (upgraded, "+ `vq._codebook.embed_avg` (the vector-quantize upgrade)"),
        "partial RMSNorm": (norms, "encoder `norm_out.gamma/.beta` -> `.weight` (2 norms)"),
    }


def nearest_section(url: str, cache: Path, repeats: int, process_runs: int, log) -> dict:
    from registry.diff import diff_schemas
    from registry.matching import match_checkpoint
    from registry.readers import read_checkpoint
    from registry.store import open_registry

    expected = variant_schema("ctvit/baseline").fingerprint
    rows, paths = {}, {}
    with open_registry(url, readonly=True) as reg:
        versions = reg.counts()["schema_versions"]
        for label, (schema, what) in nearest_queries().items():
            path = paths[label] = cache / f"ctvit-{schema.short}.pt"
            if not path.exists():
                print(f"writing {path} ...", file=log, flush=True)
                _save(empty_state([(e.name, e.shape) for e in schema.entries]), path)
            info = read_checkpoint(path)
            result = match_checkpoint(reg, info)
            totals, nearest, diffs = [], [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                match_checkpoint(reg, info)
                totals.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ranked = reg.nearest_candidates(info.schema, limit=15)
                t1 = time.perf_counter()
                for sv, _ in ranked:
                    diff_schemas(reg.load_schema(sv.id), info.schema)
                diffs.append(time.perf_counter() - t1)
                nearest.append(t1 - t0)
            top = result.candidates[0] if result.candidates else None
            rows[label] = {
                "change": what, "status": result.status,
                "top": f"{top.variant} v{top.version} score {top.score:.3f}" if top else None,
                "top_is_source": bool(top and top.fingerprint == expected),
                "rank_of_source": next((i + 1 for i, c in enumerate(result.candidates) if c.fingerprint == expected), None),
                "median_s": statistics.median(totals), "p99_s": percentile(totals, 0.99),
                "nearest_candidates_median_s": statistics.median(nearest),
                "diffs_median_s": statistics.median(diffs),
                "suggestion": result.suggestions[0] if result.suggestions else None,
            }
    registry, _ = registry_command()
    for label, path in paths.items():  # exit 1: `none` is the answer here
        walls = [run_once(registry + ["--db", url, "match", str(path), "--json"], ok=(0, 1))[0] for _ in range(process_runs)]
        rows[label]["whole_process_s"] = statistics.median(walls)
    return {"schema_versions": versions, "repeats": repeats, "queries": rows,
            "naive": naive_ranking(url, set(info.schema.names))}


def naive_ranking(url: str, names: set[str], sample: int = 1000) -> dict:
    """Seconds per stored schema to read its key set and compare it with the checkpoint's (missing,
    unexpected, Jaccard) - the loop a user writes without an index - on `sample` schemas. The key
    sets come from the registry's own blobs, names only: the cheapest source such a loop could have."""
    path = url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        blobs = [row[0] for row in db.execute("SELECT entries FROM schemas ORDER BY random() LIMIT ?", (sample,))]
    t0 = time.perf_counter()
    for blob in blobs:
        other = {line.split("\t", 1)[0] for line in zlib.decompress(blob).decode("utf-8").splitlines()}
        _ = (len(other - names), len(names - other), len(names & other) / len(names | other))
    per_schema = (time.perf_counter() - t0) / len(blobs)
    return {"per_schema_s": per_schema, "sample": len(blobs)}


# --- 3. the naive alternative for the exact case ------------------------------------------------


def naive_exact(url: str, path: Path, slow_runs: int, versions: int) -> dict:
    """`torch.load(weights_only=True)` of the file (whole process, median) + comparing its key set
    with every stored schema's (per-schema cost measured on 1,000, extrapolated to `versions`)."""
    samples = [run_once([sys.executable, "-c", SNIPPETS["torch.load(weights_only)"], str(path)])
               for _ in range(slow_runs)]
    per_schema = naive_ranking(url, set(variant_schema("diffusers-unet/sd15").names))["per_schema_s"]
    load = statistics.median(w for w, _ in samples)
    return {"torch_load_s": load, "torch_load_peak_mb": statistics.median(p for _, p in samples),
            "compare_per_schema_s": per_schema, "compare_all_s": per_schema * versions,
            "total_s": load + per_schema * versions, "versions": versions}


# --- report -------------------------------------------------------------------------------------


def render(report: dict) -> None:
    exact = report["exact"]
    print(f"registry command: {exact['registry_command']}")
    print(f"registry:         {report['versions']:,} schema versions (SQLite, {report['db_mb']:.0f} MB)"
          + (f", built in {report['build_s']:.0f} s" if report.get("build_s") else ", cached"))
    for label, spec in report["files"].items():
        print(f"{label:<16}  {spec['size_gb']:.2f} GB, {spec['source']}: {exact['answers'][label]}")
    print(f"\n{'process':<40} {'warm median s':>13} {'min s':>7} {'peak MB':>8}  {'cold median s':>13}")
    cold = exact["cold"]
    for name, figures in exact["warm"].items():
        cold_s = f"{cold[name]['median_s']:>13.3f}" if isinstance(cold, dict) and name in cold else f"{'-':>13}"
        print(f"{name:<40} {figures['median_s']:>13.3f} {figures['min_s']:>7.3f} {figures['peak_mb']:>8.1f}  {cold_s}")
    if not isinstance(cold, dict):
        print(f"cold: {cold}")
    runs = next(iter(exact["warm"].values()))["runs"]
    print(f"(warm: {runs} runs each, interleaved, after one warm-up; cold: page cache dropped before each run)")
    for label, figures in exact["breakdown"].items():
        print(f"\nwhere the time goes, {label} (medians inside a fresh process; interpreter start-up and "
              f"site come before, see `python -c pass`)")
        for name, seconds in figures["phases_s"].items():
            print(f"  {name:<40} {seconds * 1e3:8.1f} ms")
        print(f"  {'total in process':<40} {figures['in_process_total_s'] * 1e3:8.1f} ms   "
              f"({figures['queries']} SQL statements; the file has {figures['prefixes']} module prefixes)")
    print("\nheaviest imports of one `registry match` (-X importtime, cumulative ms, inflated by the tracing):")
    for name, ms in exact["heaviest_imports_ms"]:
        print(f"  {name:<48} {ms:8.1f}")
    naive = report["naive_exact"]
    print(f"\nnaive alternative, exact: torch.load(weights_only=True) of sd15-unet.pt {naive['torch_load_s']:.2f} s "
          f"({naive['torch_load_peak_mb']:.0f} MB) + comparing key sets with {naive['versions']:,} stored schemas "
          f"{naive['compare_all_s']:.1f} s (measured {naive['compare_per_schema_s'] * 1e6:.0f} us/schema on 1,000, "
          f"extrapolated) = {naive['total_s']:.1f} s")
    for label in report["files"]:
        mine = exact["warm"][f"registry match {label}"]["median_s"]
        verdict = "PASS" if mine < TARGET_S else "FAIL"
        print(f"  [{verdict}] registry match {label}: {mine:.3f} s (target < {TARGET_S:.0f} s); "
              f"{naive['total_s'] / mine:.0f}x faster than the naive alternative, "
              f"{naive['torch_load_s'] / mine:.1f}x faster than torch.load alone")
    near = report["nearest"]
    print(f"\nnearest-match ranking among {near['schema_versions']:,} schema versions "
          f"({near['repeats']} calls of match_checkpoint each, one process):")
    print(f"  {'query':<26} {'status':<6} {'median ms':>9} {'p99 ms':>7} {'rank ms':>7} {'diffs ms':>8} "
          f"{'process s':>9}  top candidate")
    for label, row in near["queries"].items():
        ok = "right" if row["top_is_source"] else f"WRONG: the source ranks {row['rank_of_source'] or 'nowhere'}"
        print(f"  {label:<26} {row['status']:<6} {row['median_s'] * 1e3:>9.1f} {row['p99_s'] * 1e3:>7.1f} "
              f"{row['nearest_candidates_median_s'] * 1e3:>7.1f} {row['diffs_median_s'] * 1e3:>8.1f} "
              f"{row['whole_process_s']:>9.2f}  {row['top']} ({ok})")
    print("  (median/p99: match_checkpoint in one warm process, p99 of so few calls is about their maximum; rank: "
          "nearest_candidates alone; diffs: loading and diffing the 15 candidates it returns; the rest of a call "
          "is the exact lookups, converters and config inference that come first; process: whole `registry "
          "match`, which imports torch to try converters and config inference)")
    for label, row in near["queries"].items():
        print(f"  {label}: {row['change']}" + (f"; suggests `{row['suggestion']}`" if row["suggestion"] else ""))
    naive = near["naive"]
    per = naive["per_schema_s"]
    median = statistics.median(row["median_s"] for row in near["queries"].values())
    print(f"  naive ranking (read each stored key set, compare): {per * 1e6:.0f} us/schema measured on "
          f"{naive['sample']:,}, {per * near['schema_versions']:.2f} s extrapolated to {near['schema_versions']:,} "
          f"= {per * near['schema_versions'] / median:.1f}x the median match_checkpoint (which also diffs), "
          "before any torch.load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=100_000, help="schema versions for the exact-match registry")
    parser.add_argument("--nearest-versions", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=11, help="timed runs of each whole process (warm)")
    parser.add_argument("--cold-runs", type=int, default=3, help="timed runs with the page cache dropped")
    parser.add_argument("--slow-runs", type=int, default=3, help="timed runs of torch.load")
    parser.add_argument("--repeats", type=int, default=30, help="match_checkpoint calls per nearest query")
    parser.add_argument("--workers", type=int, default=2, help="processes that encode synthetic schemas")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where databases and files are kept")
    parser.add_argument("--clean", action="store_true", help="delete the cache directory at the end")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    log = sys.stderr
    args.cache.mkdir(parents=True, exist_ok=True)
    try:
        files = sd15_files(args.cache, log)
        expect = {spec["variant"]: variant_schema(spec["variant"]).fingerprint for spec in files.values()}
        url, build_s = registry_db(args.cache, args.versions, args.workers, expect, log)
        near_url, _ = registry_db(args.cache, args.nearest_versions, args.workers, expect, log)
        exact = exact_section(url, files, args.runs, args.cold_runs, log)
        print("nearest-match ranking ...", file=log, flush=True)
        near = nearest_section(near_url, args.cache, args.repeats, args.slow_runs, log)
        print("naive alternative ...", file=log, flush=True)
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            versions = db.execute("SELECT count(*) FROM schema_versions").fetchone()[0]
        report = {
            "versions": versions, "db_mb": Path(url.removeprefix("sqlite:///")).stat().st_size / 1e6, "build_s": build_s,
            "files": {label: {"path": str(spec["path"]), "size_gb": spec["path"].stat().st_size / GB,
                              "source": spec["source"], "variant": spec["variant"]} for label, spec in files.items()},
            "exact": exact, "nearest": near,
            "naive_exact": naive_exact(url, files["sd15-unet.pt"]["path"], args.slow_runs, versions),
        }
    finally:
        if args.clean:
            shutil.rmtree(args.cache, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        render(report)


if __name__ == "__main__":
    main()
