"""Registry store benchmark (DESIGN §9): size and speed at 100,000 schema versions, and many writers.

    python benchmarks/bench_store.py                 # table for people
    python benchmarks/bench_store.py --json          # the same figures as JSON
    python benchmarks/bench_store.py --versions 20000 --skip-postgres   # quicker

Sections
1. layout   - entries as a child table vs one compressed blob per schema, measured on the same
              synthetic schemas; figures per version, extrapolated to 100k.
2. lookup   - an SQLite registry with N schema versions (synthetic but realistic: 200-1,500 entries
              each, names drawn from a few thousand module paths of a few dozen architectures),
              built with bulk inserts: file size, exact lookup (`find_by_fingerprint`) median/p99
              through the API, `nearest_candidates` median/p99, and a whole process doing
              `open_registry` + `find_by_fingerprint` (what `registry match` pays).
3. writers  - P processes x R registrations at once (each: `register_checkpoint` of a new file of
              the process's run), on SQLite and on a throwaway PostgreSQL server: errors, rows
              lost, throughput, latency p50/p99.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from functools import lru_cache
from multiprocessing import Pool
from pathlib import Path

LEAVES = [  # (leaf name, shape as a function of width w)
    ("attn.to_q.weight", "w,w"), ("attn.to_k.weight", "w,w"), ("attn.to_v.weight", "w,w"),
    ("attn.to_out.weight", "w,w"), ("attn.to_out.bias", "w"), ("attn.to_qkv.weight", "3w,w"),
    ("attn.norm.weight", "w"), ("attn.norm.gamma", "w"), ("attn.norm.beta", "w"), ("attn.q_norm.weight", "w"),
    ("attn.k_norm.weight", "w"), ("attn.rel_pos.weight", "64,w"), ("cross.to_q.weight", "w,w"),
    ("cross.to_k.weight", "w,768"), ("cross.to_v.weight", "w,768"), ("cross.to_out.weight", "w,w"),
    ("cross.to_out.bias", "w"), ("cross.norm.weight", "w"), ("cross.norm.bias", "w"), ("ff.0.weight", "4w,w"),
    ("ff.0.bias", "4w"), ("ff.2.weight", "w,4w"), ("ff.2.bias", "w"), ("ff.proj_in.weight", "8w,w"),
    ("ff.proj_out.weight", "w,4w"), ("ff.norm.weight", "w"), ("ff.norm.gamma", "w"), ("ff.norm.beta", "w"),
    ("norm1.weight", "w"), ("norm1.bias", "w"), ("norm2.weight", "w"), ("norm2.bias", "w"), ("norm3.weight", "w"),
    ("norm3.bias", "w"), ("conv1.weight", "w,w,3,3"), ("conv1.bias", "w"), ("conv2.weight", "w,w,3,3"),
    ("conv2.bias", "w"), ("time_emb_proj.weight", "w,1280"), ("time_emb_proj.bias", "w"),
    ("skip.weight", "w,w,1,1"), ("skip.bias", "w"), ("gn.weight", "w"), ("gn.bias", "w"), ("adaln.weight", "6w,w"),
    ("adaln.bias", "6w"), ("ls1.gamma", "w"), ("ls2.gamma", "w"), ("mlp.fc1.weight", "4w,w"), ("mlp.fc1.bias", "4w"),
    ("mlp.fc2.weight", "w,4w"), ("mlp.fc2.bias", "w"), ("gate.weight", "8,w"), ("experts.w1", "8,4w,w"),
    ("experts.w2", "8,w,4w"), ("pos_bias.weight", "32,8"), ("rotary.inv_freq", "32"), ("dwconv.weight", "w,1,7,7"),
    ("dwconv.bias", "w"), ("grn.gamma", "1,1,1,w"),
]
PREFIXES = ["blocks.", "layers.", "encoder.layers.", "decoder.layers."]
WIDTHS = [256, 320, 384, 512, 640, 768, 1024, 1280]
ARCHITECTURES = 48


@lru_cache(maxsize=None)
def _shape(spec: str, width: int) -> tuple[int, ...]:
    dims = []
    for part in spec.split(","):
        dims.append(int(part[:-1] or 1) * width if part.endswith("w") else int(part))
    return tuple(dims)


def _architecture(index: int) -> tuple[str, list[tuple[str, str]]]:
    rng = random.Random(index)
    return PREFIXES[index % len(PREFIXES)], sorted(rng.sample(LEAVES, rng.randint(14, 60)))


def synthetic_entries(seed: int) -> tuple[int, list[tuple[str, tuple[int, ...]]]]:
    """(architecture, [(name, shape)]) of one synthetic schema version: 200-1,500 entries."""
    rng = random.Random(seed)
    arch = rng.randrange(ARCHITECTURES)
    prefix, leaves = _architecture(arch)
    depth = rng.randint(200 // (len(leaves) - 3) + 1, min(24, 1500 // len(leaves)))
    width = rng.choice(WIDTHS)
    dropped = set(rng.sample(range(len(leaves)), rng.randint(0, 3)))  # a refactor removed a few
    entries = [(f"{prefix}{i}.{leaf}", _shape(spec, width))
               for i in range(depth) for j, (leaf, spec) in enumerate(leaves) if j not in dropped]
    entries += [("embed.weight", (rng.choice([32000, 49408]), width)), ("final_norm.weight", (width,))]
    return arch, sorted(entries)


@lru_cache(maxsize=None)
def _shape_text(shape: tuple[int, ...]) -> str:
    return ",".join(map(str, shape))


class _Entry:
    __slots__ = ("name", "shape", "dtype")

    def __init__(self, name: str, shape: tuple[int, ...]):
        self.name, self.shape, self.dtype = name, shape, "float32"


class _Entries:
    """Duck-typed stand-in for `Schema` (what `sketch.features` reads), skipping object overhead."""

    def __init__(self, pairs):
        self.entries = [_Entry(n, s) for n, s in pairs]


def encode_version(seed: int) -> dict:
    """Everything the store writes for one synthetic schema (the same functions the API uses)."""
    import hashlib

    from registry.store import codec, sketch

    arch, pairs = synthetic_entries(seed)
    lines = [f"{n}\t[{_shape_text(s)}]" for n, s in pairs]
    canonical = "\n".join(lines) + "\n"
    text = "\tfloat32\n".join(lines) + "\tfloat32\n"
    packed = sketch.sketch(sketch.features(_Entries(pairs)))
    numel = 0
    for _, shape in pairs:
        count = 1
        for d in shape:
            count *= d
        numel += count
    return {
        "seed": seed, "arch": arch,
        "fingerprint": "sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
        "content_hash": codec.content_hash(text), "entry_count": len(pairs), "numel": numel,
        "entries": codec.encode_text(text), "sketch": packed, "bands": sorted(set(sketch.bands(packed))),
    }


def _encode_chunk(seeds: list[int]) -> list[dict]:
    return [encode_version(s) for s in seeds]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


# --- 1. layout ----------------------------------------------------------------------------------


def measure_layout(workdir: Path, count: int) -> dict:
    """Bytes and load time per version: child table of entries vs one zlib blob per schema."""
    versions = [synthetic_entries(seed)[1] for seed in range(count)]
    results = {}
    for layout in ("child_table", "blob"):
        path = workdir / f"layout-{layout}.db"
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        start = time.perf_counter()
        if layout == "child_table":
            db.execute("CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
            db.execute("CREATE TABLE entries (schema_id INTEGER, name_id INTEGER, shape TEXT, dtype TEXT, "
                       "PRIMARY KEY (schema_id, name_id)) WITHOUT ROWID")
            name_ids: dict[str, int] = {}
            for schema_id, pairs in enumerate(versions):
                rows = []
                for name, shape in pairs:
                    if name not in name_ids:
                        name_ids[name] = len(name_ids) + 1
                        db.execute("INSERT INTO names VALUES (?, ?)", (name_ids[name], name))
                    rows.append((schema_id, name_ids[name], ",".join(map(str, shape)), "float32"))
                db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?)", rows)
        else:
            db.execute("CREATE TABLE schemas (id INTEGER PRIMARY KEY, entries BLOB)")
            for schema_id, pairs in enumerate(versions):
                text = "".join(f"{n}\t[{','.join(map(str, s))}]\tfloat32\n" for n, s in pairs)
                db.execute("INSERT INTO schemas VALUES (?, ?)", (schema_id, zlib.compress(text.encode(), 6)))
        db.commit()
        write_seconds = time.perf_counter() - start
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        size = path.stat().st_size
        loads = []
        for schema_id in random.Random(1).sample(range(count), min(200, count)):
            t0 = time.perf_counter()
            if layout == "child_table":
                rows = db.execute("SELECT n.name, e.shape, e.dtype FROM entries e JOIN names n ON n.id = e.name_id "
                                  "WHERE e.schema_id = ?", (schema_id,)).fetchall()
                _ = sorted(rows)
            else:
                blob = db.execute("SELECT entries FROM schemas WHERE id = ?", (schema_id,)).fetchone()[0]
                _ = zlib.decompress(blob).decode().splitlines()
            loads.append(time.perf_counter() - t0)
        db.close()
        results[layout] = {
            "bytes_per_version": size / count,
            "extrapolated_100k_mb": size / count * 100_000 / 1e6,
            "write_ms_per_version": write_seconds / count * 1e3,
            "load_one_schema_ms_median": statistics.median(loads) * 1e3,
        }
    results["versions_measured"] = count
    results["mean_entries"] = statistics.mean(len(v) for v in versions)
    return results


# --- 2. lookup at N versions --------------------------------------------------------------------


def build_registry(url: str, count: int, workers: int) -> tuple[list[str], float]:
    """Bulk-insert `count` synthetic schema versions; returns (fingerprints, seconds)."""
    import sqlalchemy as sa

    from registry.schema import ModuleSignature
    from registry.store import codec, open_registry
    from registry.store.orm import (FamilyRow, ModuleSignatureRow, SchemaRow, SchemaSketchBandRow,
                                    SchemaVersionRow, VariantRow, utcnow)

    start = time.perf_counter()
    reg = open_registry(url, upgrade=True)
    engine = reg.engine
    now = utcnow()
    versions_per_variant = 50
    fingerprints = []
    signatures: dict[tuple[int, int], int] = {}
    schema_ids: dict[str, int] = {}
    seeds = list(range(count))
    chunks = [seeds[i:i + 500] for i in range(0, count, 500)]
    with engine.begin() as connection:
        connection.execute(sa.insert(FamilyRow.__table__), [{"id": a + 1, "name": f"arch{a}", "created_at": now}
                                                            for a in range(ARCHITECTURES)])
        variant_rows = []
        with Pool(workers) as pool:
            for encoded in pool.imap(_encode_chunk, chunks):
                schema_rows, band_rows, version_rows, signature_rows = [], [], [], []
                for item in encoded:
                    seed = item["seed"]
                    variant_id = seed // versions_per_variant + 1
                    if seed % versions_per_variant == 0:
                        variant_rows.append({"id": variant_id, "name": f"arch{item['arch']}/v{variant_id}",
                                             "family_id": item["arch"] + 1, "config_json": json.dumps({"seed": seed}),
                                             "description": "", "is_default": False, "created_at": now,
                                             "created_by": "bench"})
                    key = (item["arch"], item["entry_count"] // 100)
                    if key not in signatures:
                        signatures[key] = len(signatures) + 1
                        modules = ModuleSignature(tuple((f"m{i}", f"torch.nn.Arch{key[0]}Block") for i in range(key[1] + 1)))
                        signature_rows.append({"id": signatures[key], "hash": modules.hash,
                                               "module_count": len(modules.modules),
                                               "modules": codec.encode_text(modules.canonical_text)})
                    if item["content_hash"] in schema_ids:  # schema-equivalent versions share one row
                        schema_id = schema_ids[item["content_hash"]]
                    else:
                        schema_id = schema_ids[item["content_hash"]] = len(schema_ids) + 1
                        schema_rows.append({k: item[k] for k in ("content_hash", "fingerprint", "entry_count",
                                                                 "numel", "entries", "sketch")} | {"id": schema_id})
                        band_rows += [{"bucket": b, "schema_id": schema_id} for b in item["bands"]]
                    version_rows.append({"id": seed + 1, "variant_id": variant_id,
                                         "version": seed % versions_per_variant + 1, "schema_id": schema_id,
                                         "fingerprint": item["fingerprint"], "signature_id": signatures[key],
                                         "signature_hash": "sha256:sig%d" % signatures[key], "code_revision": "bench",
                                         "package_versions": {"torch": "2.13.0"}, "created_at": now,
                                         "created_by": "bench"})
                    fingerprints.append(item["fingerprint"])
                if variant_rows:
                    connection.execute(sa.insert(VariantRow.__table__), variant_rows)
                    variant_rows = []
                if signature_rows:
                    connection.execute(sa.insert(ModuleSignatureRow.__table__), signature_rows)
                if schema_rows:
                    connection.execute(sa.insert(SchemaRow.__table__), schema_rows)
                    connection.execute(sa.insert(SchemaSketchBandRow.__table__), band_rows)
                connection.execute(sa.insert(SchemaVersionRow.__table__), version_rows)
    reg.close()
    return fingerprints, time.perf_counter() - start


def measure_lookup(workdir: Path, count: int, workers: int) -> dict:
    from registry.schema import Schema, TensorEntry
    from registry.store import open_registry

    path = workdir / "lookup.db"
    url = f"sqlite:///{path}"
    fingerprints, build_seconds = build_registry(url, count, workers)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    rng = random.Random(7)
    with open_registry(url, readonly=True) as reg:
        counts = reg.counts()
        exact = []
        for fp in rng.sample(fingerprints, 1000):
            t0 = time.perf_counter()
            found = reg.find_by_fingerprint(fp)
            exact.append(time.perf_counter() - t0)
            assert found and found[0].fingerprint == fp
        misses = []
        for i in range(200):
            t0 = time.perf_counter()
            assert reg.find_by_fingerprint(f"sha256:{i:064x}") == []
            misses.append(time.perf_counter() - t0)
        nearest, top_hits = [], 0
        for seed in rng.sample(range(count), 50):
            _, pairs = synthetic_entries(seed)
            mutated = [(n.replace("attn.", "self_attn.") if i % 7 == 0 else n, s) for i, (n, s) in enumerate(pairs)]
            query = Schema(TensorEntry(n, s) for n, s in mutated)
            t0 = time.perf_counter()
            ranked = reg.nearest_candidates(query, limit=10)
            nearest.append(time.perf_counter() - t0)
            source_fingerprint = fingerprints[seed]
            top_hits += bool(ranked) and ranked[0][0].fingerprint == source_fingerprint
    process = []
    probe = rng.choice(fingerprints)
    code = ("import sys; from registry.store import open_registry; r = open_registry(sys.argv[1]); "
            "print(len(r.find_by_fingerprint(sys.argv[2])))")
    for _ in range(7):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, url, probe], capture_output=True, text=True, check=True)
        process.append(time.perf_counter() - t0)
        assert out.stdout.strip() == "1"
    baseline = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        baseline.append(time.perf_counter() - t0)
    return {
        "schema_versions": counts["schema_versions"], "distinct_schemas": counts["schemas"],
        "build_seconds": build_seconds, "database_mb": size / 1e6, "bytes_per_version": size / count,
        "exact_lookup_ms_median": statistics.median(exact) * 1e3, "exact_lookup_ms_p99": percentile(exact, 0.99) * 1e3,
        "exact_miss_ms_median": statistics.median(misses) * 1e3,
        "nearest_ms_median": statistics.median(nearest) * 1e3, "nearest_ms_p99": percentile(nearest, 0.99) * 1e3,
        "nearest_top1_is_the_source": f"{top_hits}/50",
        "whole_process_lookup_s_median": statistics.median(process),
        "python_startup_s_median": statistics.median(baseline),
    }


# --- 3. writers ---------------------------------------------------------------------------------


def worker_main(url: str, ready_dir: str, count: int, tag: str) -> None:
    """One writer process: start a run, register `count` checkpoints, end the run; JSON on stdout."""
    from registry.store import open_registry

    reg = open_registry(url)
    (Path(ready_dir) / str(os.getpid())).touch()
    while not (Path(ready_dir) / "go").exists():
        time.sleep(0.002)
    latencies, errors, first_error = [], 0, None
    start = time.perf_counter()
    try:
        run = reg.start_run("bench/writer", schema_version_id=None, config={"tag": tag}, host="bench", user="bench")
    except Exception as exc:  # noqa: BLE001  (counted, reported)
        print(json.dumps({"errors": count + 1, "first_error": repr(exc), "latencies": []}))
        return
    for i in range(count):
        t0 = time.perf_counter()
        try:
            reg.register_checkpoint(f"/runs/{tag}/step-{i}.pt", size=1000 + i, mtime=1.7e9 + i, format="torch-zip",
                                    container="state_dict", wrapper=None, prefix=None, fingerprint="sha256:bench",
                                    step=i, run_id=run.id)
        except Exception as exc:  # noqa: BLE001
            errors += 1
            first_error = first_error or repr(exc)
        latencies.append(time.perf_counter() - t0)
    try:
        reg.end_run(run.id, "completed")
    except Exception as exc:  # noqa: BLE001
        errors += 1
        first_error = first_error or repr(exc)
    print(json.dumps({"errors": errors, "first_error": first_error, "latencies": latencies,
                      "seconds": time.perf_counter() - start}))
    reg.close()


def measure_writers(url: str, processes: int, count: int, workdir: Path) -> dict:
    from registry.store import open_registry

    with open_registry(url, upgrade=True) as reg:
        reg.register_variant("bench/writer", "bench", {})
    ready = Path(tempfile.mkdtemp(dir=workdir))
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", url, str(ready), str(count), f"p{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
    while len(list(ready.iterdir())) < processes:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    start = time.perf_counter()
    (ready / "go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            results.append({"errors": count, "first_error": err.strip().splitlines()[-1:], "latencies": []})
        else:
            results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - start
    latencies = [x for r in results for x in r["latencies"]]
    with open_registry(url) as reg:
        counts = reg.counts()
        events = reg.events()
    expected = processes * count
    return {
        "processes": processes, "registrations_each": count,
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r.get("first_error")), None),
        "rows_lost": expected - counts["checkpoints"],
        "events_lost": expected + 2 * processes + 1 - len(events),
        "throughput_per_s": expected / wall, "wall_seconds": wall,
        "latency_ms_p50": percentile(latencies, 0.5) * 1e3 if latencies else None,
        "latency_ms_p99": percentile(latencies, 0.99) * 1e3 if latencies else None,
    }


# --- report -------------------------------------------------------------------------------------


def render(report: dict) -> None:
    layout = report["layout"]
    print(f"entries layout ({layout['versions_measured']} synthetic versions, mean {layout['mean_entries']:.0f} entries)")
    print(f"  {'layout':<12} {'bytes/version':>14} {'100k est. MB':>13} {'write ms/v':>11} {'load one ms':>12}")
    for name in ("child_table", "blob"):
        row = layout[name]
        print(f"  {name:<12} {row['bytes_per_version']:>14,.0f} {row['extrapolated_100k_mb']:>13,.0f} "
              f"{row['write_ms_per_version']:>11.2f} {row['load_one_schema_ms_median']:>12.3f}")
    lookup = report.get("lookup")
    if lookup:
        print(f"\nlookup at {lookup['schema_versions']:,} schema versions (SQLite)")
        for key, value in lookup.items():
            if value is not None and key != "schema_versions":
                print(f"  {key:<32} {value:,.3f}" if isinstance(value, float) else f"  {key:<32} {value}")
    for backend, figures in report.get("writers", {}).items():
        print(f"\nwriters on {backend}: {figures['processes']} processes x {figures['registrations_each']} registrations")
        for key, value in figures.items():
            if key not in ("processes", "registrations_each"):
                print(f"  {key:<32} {value:,.3f}" if isinstance(value, float) else f"  {key:<32} {value}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--layout-versions", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--registrations", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="processes that encode synthetic schemas")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
    report: dict = {}
    pg = None
    try:
        report["layout"] = measure_layout(workdir, args.layout_versions)
        if args.versions:
            report["lookup"] = measure_lookup(workdir, args.versions, args.workers)
        report["writers"] = {"sqlite": measure_writers(f"sqlite:///{workdir / 'writers.db'}", args.processes,
                                                       args.registrations, workdir)}
        if not args.skip_postgres:
            from registry.store.pgserver import TempPostgres, find_bin_dir

            if find_bin_dir() is None:
                report["writers"]["postgresql"] = "skipped: PostgreSQL binaries not found"
            else:
                pg = TempPostgres(fsync=True).start()
                report["writers"]["postgresql"] = measure_writers(pg.create_database("bench"), args.processes,
                                                                  args.registrations, workdir)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render(report)


if __name__ == "__main__":
    main()
