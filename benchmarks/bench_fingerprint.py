"""Benchmark: whole-process `registry fingerprint` of a Stable-Diffusion-1.5-size UNet checkpoint.

DESIGN §9 and issue 3. Builds the SD-1.5 UNet state dict (686 tensors, 859,520,964 fp32 elements,
~3.44 GB) cheaply - names and shapes from the `diffusers-unet` family on the meta device (or
diffusers' UNet2DConditionModel on the meta device when the families cannot be imported), data
from `torch.empty` (never initialised) - and writes it as `.pt` (torch.save) and `.safetensors`
(safetensors.torch.save_file), plus a copy 10x smaller in bytes with the same 686 entries (every
tensor's first dimension divided by 10), to show the cost does not grow with file size.

Then, with the page cache warm (each file read once; each command run once before timing),
several runs of each whole process, interleaved round-robin, timed from spawn to exit, with that
process's own peak RSS (`os.wait4` in a small launcher process):
  registry fingerprint FILE
  python: torch.load(FILE, weights_only=True) + list names and shapes
  python: torch.load(FILE, weights_only=True, mmap=True) + list names and shapes
  python: safetensors load_file / safe_open + list names and shapes      (for .safetensors)
  python: read only the zip directory and data.pkl / the JSON header      (the floor)
Prints medians, ratios and the issue's targets; `--json` prints the figures as JSON. The files
are deleted at the end (unless --keep).

    python benchmarks/bench_fingerprint.py [--runs 11] [--slow-runs 3] [--dir DIR] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SD15 = {"sample_size": 64, "cross_attention_dim": 768}  # the rest are UNet2DConditionModel defaults
GB = 1e9

TARGETS = {"wall_s": 0.2, "peak_mb": 50.0, "vs_weights_only": 25.0, "vs_mmap": 10.0, "flat": 1.25}

SNIPPETS = {
    "torch.load(weights_only)": "import sys, torch\n"
    "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True)\n"
    "rows = [(k, tuple(v.shape)) for k, v in sd.items()]\n",
    "torch.load(mmap)": "import sys, torch\n"
    "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True, mmap=True)\n"
    "rows = [(k, tuple(v.shape)) for k, v in sd.items()]\n",
    "floor: zip dir + data.pkl": "import sys, zipfile\n"
    "z = zipfile.ZipFile(sys.argv[1])\n"
    "z.read(next(n for n in z.namelist() if n.endswith('/data.pkl')))\n",
    "safetensors load_file": "import sys\nfrom safetensors.torch import load_file\n"
    "sd = load_file(sys.argv[1])\nrows = [(k, tuple(v.shape)) for k, v in sd.items()]\n",
    "safetensors safe_open": "import sys\nfrom safetensors import safe_open\n"
    "with safe_open(sys.argv[1], 'pt') as f:\n    rows = [(k, f.get_slice(k).get_shape()) for k in f.keys()]\n",
    "floor: JSON header": "import sys, json, struct\n"
    "f = open(sys.argv[1], 'rb')\njson.loads(f.read(struct.unpack('<Q', f.read(8))[0]))\n",
}


def unet_shapes() -> tuple[list[tuple[str, tuple[int, ...]]], str]:
    """(name, shape) of the SD-1.5 UNet state dict, and where they came from."""
    try:
        from registry.catalog import get_builtin_variant
        from registry.families import build_schema, get_family, make_config

        variant = get_builtin_variant("diffusers-unet/sd15")
        family = get_family(variant.family)
        built = build_schema(family, make_config(family, variant.config))
        return [(e.name, e.shape) for e in built.schema], "variant diffusers-unet/sd15 on the meta device"
    except Exception as exc:  # without the built-in families, diffusers itself gives the same layout
        import torch
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            model = UNet2DConditionModel(**SD15)
        shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        return shapes, f"diffusers UNet2DConditionModel (meta device; families unavailable: {type(exc).__name__})"


def empty_state(shapes, divide: int = 1, prefix: str = "") -> dict:
    """`{prefix + name: torch.empty(shape)}` in fp32, never initialised (first dims divided by `divide`)."""
    import torch

    state = {}
    for name, shape in shapes:
        if divide > 1 and shape:
            shape = (max(1, shape[0] // divide),) + tuple(shape[1:])
        state[prefix + name] = torch.empty(shape, dtype=torch.float32)
    return state


def write_checkpoints(directory: Path, shapes, divide: int, stem: str) -> tuple[Path, Path]:
    """`stem.pt` and `stem.safetensors` holding torch.empty tensors (first dims divided by `divide`)."""
    import torch
    from safetensors.torch import save_file

    state = empty_state(shapes, divide)
    pt, st = directory / f"{stem}.pt", directory / f"{stem}.safetensors"
    torch.save(state, pt)
    save_file(state, str(st))
    return pt, st


EDITABLE = "registry fingerprint (editable)"


def registry_command() -> tuple[list[str], str]:
    """The installed console script if it starts, else `python cli.py` (same `main`)."""
    script = Path(sys.executable).with_name("registry")
    if script.exists():
        probe = subprocess.run([str(script), "--help"], capture_output=True, cwd=tempfile.gettempdir(), env=CHILD_ENV)
        if probe.returncode == 0:
            return [str(script)], "console script"
    return [sys.executable, str(ROOT / "cli.py")], "python cli.py (the console script does not start)"


def regular_install(directory: Path) -> list[str] | None:
    """The console script of a regular (non-editable) install of this checkout, or None.

    `make install` is editable: every process then first imports setuptools' editable finder
    (~10 ms of a ~80 ms command), which a user's `pip install model-registry` does not have. A
    throwaway venv gets a regular install of the package alone; a `.pth` line puts this venv's
    site-packages (click, sqlalchemy, ...) on its path without running their `.pth` files.
    """
    import sysconfig

    venv = directory / "regular-venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True)
    if made.returncode != 0:
        return None
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)],
                               capture_output=True, cwd=directory, env=CHILD_ENV)
    script = venv / "bin" / "registry"
    return [str(script)] if installed.returncode == 0 and script.exists() else None


def warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass


# Children may write bytecode caches, as an installed package has them: a PYTHONDONTWRITEBYTECODE
# in the caller's environment would make every measured process compile the project from source.
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

# Each measured process is spawned by this small launcher, not by the benchmark itself: a child
# forked from a process that holds torch and 3 GB of tensors reports that parent's memory as its
# peak RSS. The launcher times spawn-to-exit and reads the child's own rusage (os.wait4).
LAUNCHER = (
    "import os, sys, time\n"
    "start = time.perf_counter()\n"
    "pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ,\n"
    "                     file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def run_once(command: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one fresh process; its exit code must be in `ok`."""
    launched = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *command], capture_output=True,
                              text=True, cwd=tempfile.gettempdir(), env=CHILD_ENV)
    wall, peak_kb, status = launched.stdout.split() if launched.stdout else ("0", "0", "launcher failed")
    if launched.returncode != 0 or status not in {str(code) for code in ok}:
        raise SystemExit(f"benchmark command failed ({status}): {' '.join(command)}\n{launched.stderr}")
    return float(wall), int(peak_kb) / 1024  # Linux reports kilobytes


def measure(commands: dict[str, list[str]], runs: int | dict[str, int]) -> dict[str, dict]:
    """Median/min wall and median peak RSS of `runs` fresh processes per command (one number, or
    one per command), after one unmeasured warm-up each. All commands are interleaved round-robin
    and a command with fewer runs takes its turns spread evenly over the rounds, so a burst of load
    from other processes on the machine hits every command alike instead of skewing one ratio."""
    counts = runs if isinstance(runs, dict) else {name: runs for name in commands}
    rounds = max(counts.values())
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for command in commands.values():
        run_once(command)
    for attempt in range(rounds):
        for name, command in commands.items():
            if len(samples[name]) < counts[name] and attempt * counts[name] // rounds >= len(samples[name]):
                samples[name].append(run_once(command))
    return {
        name: {"median_s": statistics.median(w for w, _ in got), "min_s": min(w for w, _ in got),
               "peak_mb": statistics.median(p for _, p in got), "runs": len(got)}
        for name, got in samples.items()
    }


def bench_format(big: Path, small: Path, registry: list[str], runs: int, slow_runs: int,
                 editable: list[str] | None = None) -> list[dict]:
    """Figures for one format: `registry fingerprint` and the floor on both sizes, and the full
    loaders on the big file (fewer runs), all interleaved. `editable`: the development install's
    console script, also measured on the big file when `registry` is a regular install."""
    python = [sys.executable, "-c"]
    floor, baselines = ("floor: zip dir + data.pkl", ["torch.load(weights_only)", "torch.load(mmap)"])
    if big.suffix == ".safetensors":
        floor, baselines = ("floor: JSON header", ["safetensors load_file", "safetensors safe_open"])
    warm(big)
    warm(small)
    commands = {}
    for path in (big, small):
        commands[f"{path.name}|registry fingerprint"] = registry + ["fingerprint", str(path)]
        commands[f"{path.name}|{floor}"] = python + [SNIPPETS[floor], str(path)]
    if editable is not None:
        commands[f"{big.name}|{EDITABLE}"] = editable + ["fingerprint", str(big)]
    counts = {name: runs for name in commands}
    for name in baselines:
        commands[f"{big.name}|{name}"] = python + [SNIPPETS[name], str(big)]
        counts[f"{big.name}|{name}"] = slow_runs
    results = measure(commands, counts)
    return [
        {"path": path.name, "size_bytes": path.stat().st_size,
         "results": {key.split("|", 1)[1]: value for key, value in results.items() if key.startswith(path.name + "|")}}
        for path in (big, small)
    ]


def check_fingerprint(registry: list[str], path: Path, shapes) -> str:
    """The command's fingerprint, checked against the one computed from the shapes written."""
    from registry.schema import Schema, TensorEntry

    expected = Schema(TensorEntry(name, tuple(shape)) for name, shape in shapes).fingerprint
    out = subprocess.run(registry + ["fingerprint", str(path), "--json"], capture_output=True, text=True, check=True,
                         env=CHILD_ENV)
    got = json.loads(out.stdout)[0]["fingerprint"]
    if got != expected:
        raise SystemExit(f"fingerprint of {path} is {got}, expected {expected}")
    return got


def summarise(big: dict, small: dict, pt_big: dict) -> dict:
    """Ratios against the baselines and the issue's targets for one format. `pt_big`: the .pt
    figures, whose torch.load times are also shown against a .safetensors fingerprint."""
    mine = big["results"]["registry fingerprint"]["median_s"]
    ratios = {name: figures["median_s"] / mine for name, figures in big["results"].items()
              if not name.startswith(("registry fingerprint", "floor"))}
    # The same ratios from each command's fastest run: less disturbed by other load on the machine,
    # so the gap between the two says how noisy this run was.
    fastest = big["results"]["registry fingerprint"]["min_s"]
    of_minimums = {name: big["results"][name]["min_s"] / fastest for name in ratios}
    if big is not pt_big:
        for name in ("torch.load(weights_only)", "torch.load(mmap)"):
            ratios[f"{name} of the .pt"] = pt_big["results"][name]["median_s"] / mine
    ratios["big/small time"] = mine / small["results"]["registry fingerprint"]["median_s"]
    full, lazy = (("torch.load(weights_only)", "torch.load(mmap)") if big is pt_big
                  else ("safetensors load_file", "safetensors safe_open"))
    if EDITABLE in big["results"]:  # the same ratio for the development install, for reference
        ratios[f"{full}, editable install"] = big["results"][full]["median_s"] / big["results"][EDITABLE]["median_s"]
    checks = {
        f"wall < {TARGETS['wall_s']} s": mine < TARGETS["wall_s"],
        f"peak < {TARGETS['peak_mb']:.0f} MB": big["results"]["registry fingerprint"]["peak_mb"] < TARGETS["peak_mb"],
        f">= {TARGETS['vs_weights_only']:.0f}x faster than {full}": ratios[full] >= TARGETS["vs_weights_only"],
        f">= {TARGETS['vs_mmap']:.0f}x faster than {lazy}": ratios[lazy] >= TARGETS["vs_mmap"],
        f"flat: 3.4 GB / 0.34 GB time < {TARGETS['flat']}": ratios["big/small time"] < TARGETS["flat"],
    }
    return {"ratios": ratios, "ratios_of_minimums": of_minimums, "targets": checks}


def print_table(report: dict) -> None:
    print(f"registry command: {report['registry_command']}")
    print(f"schema source:    {report['schema_source']}")
    print(f"state dict:       {report['entries']} tensors, {report['elements']:,} fp32 elements")
    print()
    print(f"{'file':<38} {'process':<32} {'median s':>9} {'min s':>8} {'peak MB':>8} {'runs':>5}")
    for entry in report["files"]:
        label = f"{entry['path']} ({entry['size_bytes'] / GB:.2f} GB)"
        for name, figures in entry["results"].items():
            print(f"{label:<38} {name:<32} {figures['median_s']:>9.3f} {figures['min_s']:>8.3f} "
                  f"{figures['peak_mb']:>8.1f} {figures['runs']:>5}")
            label = ""
    for kind, summary in report["summary"].items():
        print(f"\n{kind}: registry fingerprint is faster than")
        for name, value in summary["ratios"].items():
            fastest = summary.get("ratios_of_minimums", {}).get(name)
            print(f"  {name:<44} {value:6.2f}" + ("" if name == "big/small time" else "x")
                  + (f"   (fastest runs: {fastest:.2f}x)" if fastest else ""))
        for target, ok in summary["targets"].items():
            print(f"  [{'PASS' if ok else 'FAIL'}] {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=11, help="timed runs of fast processes (median reported)")
    parser.add_argument("--slow-runs", type=int, default=3, help="timed runs of full torch/safetensors loads")
    parser.add_argument("--dir", default=None, help="where to write the ~7.6 GB of files (default: temp dir)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint files")
    args = parser.parse_args()

    shapes, source = unet_shapes()
    elements = sum(math.prod(s) for _n, s in shapes)
    directory = Path(tempfile.mkdtemp(prefix="bench-fingerprint-", dir=args.dir))
    needed = elements * 4 * 2 * 1.1 * 1.05
    free = shutil.disk_usage(directory).free
    if free < needed:
        shutil.rmtree(directory)
        raise SystemExit(f"{directory} has {free / GB:.1f} GB free; the benchmark writes {needed / GB:.1f} GB (use --dir)")
    registry, how = registry_command()
    editable = None
    installed = regular_install(directory)
    if installed is not None:  # measure what users run; the development install is shown beside it
        registry, editable, how = installed, registry, "regular install of this checkout in a throwaway venv"
    try:
        log = sys.stderr
        print(f"writing checkpoints to {directory} ...", file=log)
        big_pt, big_st = write_checkpoints(directory, shapes, 1, "sd15-unet")
        small_pt, small_st = write_checkpoints(directory, shapes, 10, "sd15-unet-small")
        os.sync()  # 7.6 GB of dirty pages being written back would slow whatever is measured first
        fingerprint = check_fingerprint(registry, big_pt, shapes)
        check_fingerprint(registry, big_st, shapes)
        files = []
        for big, small in ((big_pt, small_pt), (big_st, small_st)):
            print(f"measuring {big.name} and {small.name} ...", file=log)
            files.extend(bench_format(big, small, registry, args.runs, args.slow_runs, editable))
        report = {
            "registry_command": " ".join(registry) + f"  [{how}]",
            "schema_source": source,
            "entries": len(shapes),
            "elements": elements,
            "fingerprint": fingerprint,
            "files": files,
            "summary": {"pt": summarise(files[0], files[1], files[0]),
                        "safetensors": summarise(files[2], files[3], files[0])},
        }
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
