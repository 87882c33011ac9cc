"""Benchmark: `registry convert` of a 4.3 GB Stable Diffusion single file to a diffusers UNet.

Issue 13, "big files at disk speed". Builds a Stable-Diffusion-1.5-style single file in --dir
(default /tmp): the LDM UNet at the SD-1.5 config under `model.diffusion_model.` (686 tensors,
859,520,964 fp32 elements, ~3.44 GB) plus fake `first_stage_model.` / `cond_stage_model.`
blocks up to ~4.3 GB, random data, `{"state_dict": ..., "global_step": N}` saved with torch.save.
The random data goes to a scratch file first, in chunks, and torch.save reads it through memory
maps, so building it never holds the 4.3 GB in this process's anonymous memory.

Then, in the same run, with the page cache warm and dirty pages flushed before every run, whole
processes timed from spawn to exit with their own peak RSS (`os.wait4`, the launcher of
bench_fingerprint.py), alternating the order each round:
  registry convert FILE --to diffusers-unet/sd15 -o A.safetensors    (streams; fsyncs once), twice:
          as the first conversion of a layout (REGISTRY_PLAN_CACHE=0, so nothing cached can help)
          and after an unmeasured first conversion (cache on). The built-in converter is a
          renaming converter (models/ldm_names.py): neither run traces or imports torch or
          diffusers, so both rows measure the same work, and the "cache on" row differs only by
          noise. It stays as the check that no cache is needed (a converter written as a plain
          function is traced on its first layout and its plan cached; this file does not time one).
  python: torch.load(FILE, mmap=True, weights_only=True) -> diffusers' convert_ldm_unet_checkpoint
          -> safetensors.torch.save_file(B.safetensors)               (what a user runs today)
  the same pipeline + os.fsync of its output                        (the same durability as ours)
Checks the outputs are tensor-for-tensor equal (safe_open, one tensor at a time), prints the
figures, the ratios and the issue's targets (`--json`: as JSON), and deletes every file it made
(unless --keep). Needs ~13 GB free in --dir.

    python benchmarks/bench_convert.py [--rounds 2] [--dir /tmp] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fingerprint import CHILD_ENV, registry_command, run_once  # noqa: E402  (one launcher for all benchmarks)

GB = 1e9
TOTAL_BYTES = 4.3 * GB
NEEDED_FREE = 13 * GB  # scratch 4.3 + source 4.3 + two outputs of 3.44 (the scratch goes before the outputs)
TARGETS = {"peak_mb": 1024.0, "speedup": 1.5}
VARIANT = "diffusers-unet/sd15"

PIPELINE = (
    "import json, os, sys, torch\n"
    "from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint\n"
    "from safetensors.torch import save_file\n"
    "checkpoint = torch.load(sys.argv[1], map_location='cpu', weights_only=True, mmap=True)\n"
    "unet = convert_ldm_unet_checkpoint(checkpoint['state_dict'], json.loads(sys.argv[3]))\n"
    "save_file(unet, sys.argv[2])\n"
    "if sys.argv[4] == 'fsync':\n"
    "    fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd)\n"
)


def sd15_unet_shapes() -> tuple[list[tuple[str, tuple[int, ...]]], dict]:
    """(name, shape) of the LDM-layout SD-1.5 UNet, and diffusers' config for it (the converter's input)."""
    from registry.catalog import get_builtin_variant
    from registry.families import build_schema, get_family, make_config
    from registry.models.ldm_unet import diffusers_config_for

    variant = get_builtin_variant("ldm-unet/sd15")
    family = get_family(variant.family)
    config = make_config(family, variant.config)
    shapes = [(e.name, tuple(e.shape)) for e in build_schema(family, config).schema]
    return shapes, diffusers_config_for(config).diffusers_kwargs()


def other_models(unet_bytes: int) -> list[tuple[str, tuple[int, ...]]]:
    """Fake VAE and text-encoder tensors that bring the file to ~TOTAL_BYTES."""
    left = int(TOTAL_BYTES) - unet_bytes
    shapes, index = [], 0
    while left > 0:
        if index % 2:
            name, shape = f"cond_stage_model.transformer.text_model.encoder.layers.{index}.mlp.fc1.weight", (3072, 768)
        else:
            name, shape = f"first_stage_model.decoder.up.{index}.block.0.conv1.weight", (512, 512, 3, 3)
        size = 4
        for dim in shape:
            size *= dim
        shapes.append((name, shape))
        left -= size
        index += 1
    return shapes


def build_source(directory: Path) -> tuple[Path, dict]:
    """The SD-style single file and the diffusers config of its UNet; random data, built in chunks."""
    import numpy as np
    import torch

    unet, config = sd15_unet_shapes()
    shapes = [("model.diffusion_model." + name, shape) for name, shape in unet]
    shapes += other_models(4 * sum(int(np.prod(shape)) for _, shape in shapes))
    counts = [int(np.prod(shape)) for _, shape in shapes]
    scratch = directory / "bench-convert-scratch.bin"
    generator = torch.Generator().manual_seed(0)
    chunk = 16 << 20  # elements
    with open(scratch, "wb") as handle:
        left = sum(counts)
        while left:
            step = min(chunk, left)
            handle.write(torch.rand(step, generator=generator).numpy().tobytes())
            left -= step
    mapped = np.memmap(scratch, dtype=np.float32, mode="c")
    state, start = {}, 0
    for (name, shape), count in zip(shapes, counts):
        state[name] = torch.from_numpy(mapped[start:start + count].reshape(shape))
        start += count
    source = directory / "bench-convert-sd15.ckpt"
    torch.save({"state_dict": state, "global_step": 470000}, source)
    del state, mapped
    scratch.unlink()
    return source, config


def init_registry(directory: Path, registry: list[str]) -> str:
    url = f"sqlite:///{directory / 'bench-convert.db'}"
    subprocess.run([*registry, "--db", url, "init"], check=True, capture_output=True, env=CHILD_ENV)
    return url


def warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


def measure(commands: dict[str, tuple[list[str], Path]], rounds: int) -> dict[str, dict]:
    """Median wall and peak RSS per command over `rounds`, the order reversed every other round;
    each output is removed and dirty pages flushed before every run (so no run pays for another's
    writeback)."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for attempt in range(rounds):
        order = list(commands) if attempt % 2 == 0 else list(reversed(commands))
        for name in order:
            command, output = commands[name]
            output.unlink(missing_ok=True)
            os.sync()
            samples[name].append(run_once(command))
    return {name: {"median_s": statistics.median(w for w, _ in got), "min_s": min(w for w, _ in got),
                   "peak_mb": statistics.median(p for _, p in got), "runs": len(got)}
            for name, got in samples.items()}


def equal_outputs(ours: Path, theirs: Path) -> tuple[bool, str]:
    """Tensor-for-tensor equality (names, dtypes, shapes, values), one tensor in memory at a time."""
    import torch
    from safetensors import safe_open

    with safe_open(str(ours), "pt") as a, safe_open(str(theirs), "pt") as b:
        if sorted(a.keys()) != sorted(b.keys()):
            return False, f"names differ: {len(set(a.keys()) ^ set(b.keys()))} not in both"
        for name in a.keys():
            x, y = a.get_tensor(name), b.get_tensor(name)
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
                return False, f"{name} differs"
        return True, f"{len(a.keys())} tensors equal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    free = shutil.disk_usage(args.dir).free
    if free < NEEDED_FREE:
        raise SystemExit(f"{args.dir} has {free / GB:.1f} GB free; this benchmark needs {NEEDED_FREE / GB:.0f} GB")
    directory = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.dir))
    try:
        source, config = build_source(directory)
        registry, how = registry_command()
        url = init_registry(directory, registry)
        warm(source)
        ours, theirs = directory / "registry.safetensors", directory / "diffusers.safetensors"
        synced = directory / "diffusers-fsync.safetensors"
        pipeline = [sys.executable, "-c", PIPELINE, str(source)]
        convert = [*registry, "--db", url, "convert", str(source), "--to", VARIANT, "-o", str(ours)]
        env = shutil.which("env") or "/usr/bin/env"  # the launcher spawns without a PATH search
        cached = [env, f"REGISTRY_CACHE_DIR={directory / 'cache'}", *convert]
        run_once(cached)  # an earlier conversion (unmeasured): whatever it caches, the next may use
        commands = {
            "registry convert": ([env, "REGISTRY_PLAN_CACHE=0", *convert], ours),
            "registry convert, cache on": (cached, ours),
            "diffusers pipeline": ([*pipeline, str(theirs), json.dumps(config), "no-fsync"], theirs),
            "diffusers pipeline + fsync": ([*pipeline, str(synced), json.dumps(config), "fsync"], synced),
        }
        figures = measure(commands, args.rounds)
        equal, detail = equal_outputs(ours, theirs)
        report(figures, source, equal, detail, how, args.json)
        if not equal:
            raise SystemExit(f"outputs differ: {detail}")
    finally:
        if args.keep:
            print(f"kept {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)


def report(figures: dict, source: Path, equal: bool, detail: str, how: str, as_json: bool) -> None:
    ours, theirs = figures["registry convert"], figures["diffusers pipeline"]
    synced, warm = figures["diffusers pipeline + fsync"], figures["registry convert, cache on"]
    ratios = {
        "speedup": theirs["median_s"] / ours["median_s"],
        "speedup_same_durability": synced["median_s"] / ours["median_s"],
        "speedup_plan_cached": theirs["median_s"] / warm["median_s"],
        "speedup_plan_cached_same_durability": synced["median_s"] / warm["median_s"],
        "memory_ratio": theirs["peak_mb"] / ours["peak_mb"],
        "peak_fraction_of_file": ours["peak_mb"] * 2**20 / source.stat().st_size,
    }
    if as_json:
        print(json.dumps({"file_bytes": source.stat().st_size, "figures": figures, "ratios": ratios,
                          "equal": equal, "detail": detail, "registry": how, "targets": TARGETS}, indent=2))
        return
    print(f"source: {source.stat().st_size / GB:.2f} GB SD-1.5-style single file (UNet 3.44 GB); registry: {how}")
    print(f"{'command':<30} {'median s':>9} {'min s':>7} {'peak RSS MB':>12} runs")
    for name, row in figures.items():
        print(f"{name:<30} {row['median_s']:>9.2f} {row['min_s']:>7.2f} {row['peak_mb']:>12.0f} {row['runs']:>4}")
    print(f"time ratio (diffusers pipeline / registry convert): {ratios['speedup']:.2f}x "
          f"(target >= {TARGETS['speedup']}x); with fsync on both sides: {ratios['speedup_same_durability']:.2f}x")
    print(f"  after an earlier conversion, cache on: {ratios['speedup_plan_cached']:.2f}x; with fsync on both "
          f"sides: {ratios['speedup_plan_cached_same_durability']:.2f}x")
    print(f"memory ratio (diffusers pipeline / registry convert): {ratios['memory_ratio']:.1f}x; registry peak "
          f"{ours['peak_mb']:.0f} MB = {ratios['peak_fraction_of_file']:.1%} of the file (target <= {TARGETS['peak_mb']:.0f} MB)")
    print(f"outputs tensor-for-tensor equal: {'yes' if equal else 'NO'} ({detail})")


if __name__ == "__main__":
    main()
