"""Benchmark: whole-process `registry fingerprint` of a torch.distributed.checkpoint folder (issue 16).

Writes the SD-1.5 UNet (686 tensors, 859,520,964 fp32 elements, ~3.44 GB; names and shapes from
the `diffusers-unet/sd15` variant on the meta device, data random, one tensor at a time) as a DCP
folder of 4 `.distcp` shards (`FileSystemWriter(thread_count=4)`, no process group) under
`{"model": ...}`, and the same layout 10x smaller in bytes (every first dimension / 10, same 686
entries) to show the cost does not grow with the checkpoint's size.

Then, page cache warm, fresh processes interleaved round-robin (the launcher and the medians of
`bench_fingerprint.py`), each timed from spawn to exit with its own peak RSS:
  registry fingerprint DIR
  python: FileSystemReader(DIR).read_metadata() + list names and shapes   (pickle.load of .metadata)
  python: dcp.load into tensors allocated from that metadata + list them   (the tensors themselves)
  python: format_utils.dcp_to_torch_save(DIR, tmp.pt)                       (torch's own converter)
The full loads are what a user writes to see what the checkpoint holds when read_metadata's
private structures are not known to them; read_metadata is the cheap expert path, and it runs
the pickle. Files are deleted at the end (unless --keep).

    python benchmarks/bench_dcp.py [--runs 9] [--slow-runs 3] [--dir DIR] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fingerprint import CHILD_ENV, GB, measure, registry_command, unet_shapes, warm  # noqa: E402

TARGETS = {"vs_load": 20.0, "flat_peak": 1.25}

SNIPPETS = {
    "read_metadata": "import sys\nfrom torch.distributed.checkpoint import FileSystemReader\n"
    "md = FileSystemReader(sys.argv[1]).read_metadata()\n"
    "rows = [(k, tuple(v.size)) for k, v in md.state_dict_metadata.items() if hasattr(v, 'size')]\n",
    "dcp.load": "import sys, warnings, torch\nimport torch.distributed.checkpoint as dcp\n"
    "warnings.simplefilter('ignore')\n"
    "md = dcp.FileSystemReader(sys.argv[1]).read_metadata()\n"
    "sd = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in md.state_dict_metadata.items()\n"
    "      if hasattr(v, 'size')}\n"
    "dcp.load(sd, checkpoint_id=sys.argv[1])\n"
    "rows = [(k, tuple(v.shape)) for k, v in sd.items()]\n",
    "dcp_to_torch_save": "import sys, os, warnings\nfrom torch.distributed.checkpoint.format_utils import "
    "dcp_to_torch_save\nwarnings.simplefilter('ignore')\n"
    "out = sys.argv[1].rstrip('/') + '.converted.pt'\ndcp_to_torch_save(sys.argv[1], out)\nos.remove(out)\n",
}


def write_dcp(folder: Path, shapes, divide: int) -> int:
    """A 4-shard DCP folder of random fp32 tensors (first dims divided by `divide`); returns its bytes."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes:
        if divide > 1 and shape:
            shape = (max(1, shape[0] // divide),) + tuple(shape[1:])
        state[name] = torch.randn(shape, generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": state}, storage_writer=dcp.FileSystemWriter(str(folder), thread_count=4))
    shards = sorted(folder.glob("*.distcp"))
    if len(shards) != 4:
        raise SystemExit(f"expected 4 .distcp shards, got {[s.name for s in shards]}")
    return sum(p.stat().st_size for p in folder.iterdir())


def check_fingerprint(registry: list[str], folder: Path, shapes) -> str:
    import subprocess

    from registry.schema import Schema, TensorEntry

    expected = Schema(TensorEntry(name, tuple(shape)) for name, shape in shapes).fingerprint
    out = subprocess.run(registry + ["fingerprint", str(folder), "--json"], capture_output=True, text=True,
                         check=True, env=CHILD_ENV)
    got = json.loads(out.stdout)[0]
    if got["fingerprint"] != expected or got["format"] != "dcp-folder":
        raise SystemExit(f"fingerprint of {folder} is {got['fingerprint']} ({got['format']}), expected {expected}")
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs of fast processes (median reported)")
    parser.add_argument("--slow-runs", type=int, default=3, help="timed runs of the full loads")
    parser.add_argument("--dir", default=None, help="where to write the ~3.8 GB of shards (default: temp dir)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the folders")
    args = parser.parse_args()

    shapes, source = unet_shapes()
    elements = sum(math.prod(s) for _n, s in shapes)
    directory = Path(tempfile.mkdtemp(prefix="bench-dcp-", dir=args.dir))
    needed = elements * 4 * (1.1 + 1.0) * 1.05  # both folders, and dcp_to_torch_save's temporary .pt
    if shutil.disk_usage(directory).free < needed:
        shutil.rmtree(directory)
        raise SystemExit(f"{directory} lacks {needed / GB:.1f} GB of free space (use --dir)")
    registry, how = registry_command()
    try:
        big, small = directory / "sd15-unet-dcp", directory / "sd15-unet-dcp-small"
        print(f"writing {big} and {small} ...", file=sys.stderr)
        sizes = {big.name: write_dcp(big, shapes, 1), small.name: write_dcp(small, shapes, 10)}
        os.sync()
        fingerprint = check_fingerprint(registry, big, shapes)
        python = [sys.executable, "-c"]
        commands, counts = {}, {}
        for folder in (big, small):
            for shard in folder.iterdir():
                warm(shard)
            commands[f"{folder.name}|registry fingerprint"] = registry + ["fingerprint", str(folder)]
            commands[f"{folder.name}|read_metadata"] = python + [SNIPPETS["read_metadata"], str(folder)]
            counts[f"{folder.name}|registry fingerprint"] = counts[f"{folder.name}|read_metadata"] = args.runs
        for name in ("dcp.load", "dcp_to_torch_save"):
            commands[f"{big.name}|{name}"] = python + [SNIPPETS[name], str(big)]
            counts[f"{big.name}|{name}"] = args.slow_runs
        print("measuring ...", file=sys.stderr)
        results = measure(commands, counts)
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    table = {folder: {key.split("|", 1)[1]: value for key, value in results.items() if key.startswith(folder + "|")}
             for folder in sizes}
    mine = table[big.name]["registry fingerprint"]
    ratios = {name: figures["median_s"] / mine["median_s"] for name, figures in table[big.name].items()
              if name != "registry fingerprint"}
    flat_peak = mine["peak_mb"] / table[small.name]["registry fingerprint"]["peak_mb"]
    flat_time = mine["median_s"] / table[small.name]["registry fingerprint"]["median_s"]
    checks = {
        f">= {TARGETS['vs_load']:.0f}x faster than dcp.load": ratios["dcp.load"] >= TARGETS["vs_load"],
        f">= {TARGETS['vs_load']:.0f}x faster than dcp_to_torch_save": ratios["dcp_to_torch_save"] >= TARGETS["vs_load"],
        f"peak memory flat: 3.4 GB / 0.34 GB < {TARGETS['flat_peak']}": flat_peak < TARGETS["flat_peak"],
    }
    report = {"registry_command": " ".join(registry) + f"  [{how}]", "schema_source": source, "entries": len(shapes),
              "elements": elements, "fingerprint": fingerprint, "sizes": sizes, "results": table, "ratios": ratios,
              "big/small peak": flat_peak, "big/small time": flat_time, "targets": checks}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"registry command: {report['registry_command']}\nschema source:    {source}")
    print(f"state dict:       {len(shapes)} tensors, {elements:,} fp32 elements, 4 .distcp shards\n")
    print(f"{'folder':<34} {'process':<24} {'median s':>9} {'min s':>8} {'peak MB':>8} {'runs':>5}")
    for folder, rows in table.items():
        label = f"{folder} ({sizes[folder] / GB:.2f} GB)"
        for name, figures in rows.items():
            print(f"{label:<34} {name:<24} {figures['median_s']:>9.3f} {figures['min_s']:>8.3f} "
                  f"{figures['peak_mb']:>8.1f} {figures['runs']:>5}")
            label = ""
    print("\nregistry fingerprint is faster than")
    for name, value in ratios.items():
        print(f"  {name:<24} {value:7.2f}x")
    print(f"  big/small: time {flat_time:.2f}, peak {flat_peak:.2f}")
    for target, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {target}")


if __name__ == "__main__":
    main()
