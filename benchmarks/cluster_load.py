"""Cluster load (issue 7): N worker processes acting as training jobs against one registry database.

    python benchmarks/cluster_load.py --workers 16                        # a temporary SQLite file
    python benchmarks/cluster_load.py --db postgres-temp --workers 64 --json
    python benchmarks/cluster_load.py --db postgresql://me@db-host/scratch --workers 64 --seconds 60

Every worker is its own process and does what a job does: open the registry, resolve the job's
checkpoint (read-only: the file's header, then `match_checkpoint`, which finds the registry's
record of that file), start a run, register a new checkpoint every 0.5-2 s (`--interval`) until
`--seconds` have passed, end the run. It remembers every write the database acknowledged;
afterwards the parent looks each one up, and an acknowledged write that is not there is `lost`.

Figures: `errors` (exceptions in workers, must be 0), `lost` (must be 0), `duplicates` (runs
recorded twice for one job), `registrations` acknowledged, `per_second` over the wall time,
registration latency `p50_ms`/`p99_ms`/`max_ms`, and the resolve latency.

`--db` takes a URL, `postgres-temp` (a throwaway PostgreSQL server for the run, with the packaged
defaults that matter here: fsync on, max_connections 100), or nothing (a temporary SQLite file).
The database is upgraded and, if it holds no variants, the built-in variants are registered
(`registry init`). Use a scratch database: the runs and checkpoints written here stay (their
paths start with /cluster-load/<run id>/).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

VARIANT = "ctvit/tiny"
# safetensors dtype codes and item sizes, by torch's dtype name (what schemas record).
SAFETENSORS_DTYPES = {"float64": ("F64", 8), "float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2),
                      "int64": ("I64", 8), "int32": ("I32", 4), "int16": ("I16", 2), "int8": ("I8", 1),
                      "uint8": ("U8", 1), "bool": ("BOOL", 1)}


def write_zero_checkpoint(path: Path, schema: Any) -> None:
    """A safetensors file of zeros with `schema`'s names, shapes and dtypes (no torch needed)."""
    header, offset = {}, 0
    for entry in schema:
        code, itemsize = SAFETENSORS_DTYPES[entry.dtype]
        size = itemsize
        for dim in entry.shape:
            size *= dim
        header[entry.name] = {"dtype": code, "shape": list(entry.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        out.write(bytes(offset))


def prepare(url: str, workdir: str) -> dict[str, Any]:
    """Bring the database to head with the built-in variants, write and register the checkpoint to resume.

    Runs in a child process: registering the built-in variants imports torch, which the forking
    parent should not hold.
    """
    from registry.catalog import get_builtin_variant
    from registry.readers import read_checkpoint
    from registry.store import open_registry
    from registry.store.variants import init_builtin_variants

    with open_registry(url, upgrade=True) as reg:
        if reg.counts()["variants"] == 0:
            init_builtin_variants(reg)
        elif reg.get_variant(VARIANT) is None:
            init_builtin_variants(reg, [get_builtin_variant(VARIANT)])
        version = reg.latest_schema_version(VARIANT)
        schema = reg.load_schema(version.id)
        path = Path(workdir) / "resume-from.safetensors"
        write_zero_checkpoint(path, schema)
        info = read_checkpoint(str(path))
        stat = path.stat()
        reg.register_checkpoint(str(path), size=stat.st_size, mtime=stat.st_mtime, format=info.format,
                                container=info.container, wrapper=info.wrapper, prefix="",
                                fingerprint=version.fingerprint, schema_version_id=version.id)
        return {"variant": VARIANT, "schema_version_id": version.id, "fingerprint": version.fingerprint,
                "checkpoint": str(path), "display": reg.url_display, "backend": reg.backend}


def worker(index: int, url: str, plan: dict[str, Any], options: dict[str, Any], barrier: Any, results: Any) -> None:
    """One job: open, resolve, start a run, register checkpoints until the time is up, end the run."""
    from registry.matching import match_checkpoint
    from registry.readers import read_checkpoint
    from registry.store import open_registry

    rng = random.Random(index)
    out: dict[str, Any] = {"worker": index, "errors": [], "acked": [], "latency_ms": [], "resolve_ms": None,
                           "run": None, "ended": False}
    prefix = f"/cluster-load/{options['bench_id']}/w{index:03d}"
    try:
        barrier.wait(timeout=300)
        started = time.monotonic()
        with open_registry(url) as reg:
            t0 = time.perf_counter()
            match = match_checkpoint(reg, read_checkpoint(plan["checkpoint"]), family="ctvit")
            out["resolve_ms"] = (time.perf_counter() - t0) * 1000
            if (match.status, match.variant) != ("exact", plan["variant"]):
                out["errors"].append(f"resolve answered {match.status} {match.variant}")
            run = reg.start_run(plan["variant"], schema_version_id=plan["schema_version_id"],
                                config={"worker": index}, host=socket.gethostname(), user="cluster-load",
                                scheduler_job_id=f"cluster-load-{options['bench_id']}-{index}")
            out["run"] = run.id
            lo, hi = options["interval"]
            step = 0
            while True:
                pause = rng.uniform(lo, hi)
                if time.monotonic() + pause > started + options["seconds"]:
                    break
                time.sleep(pause)
                step += 1
                path = f"{prefix}/step-{step:06d}.pt"
                t0 = time.perf_counter()
                try:
                    reg.register_checkpoint(path, size=1000 + step, mtime=time.time(), format="torch-zip",
                                            container=None, wrapper=None, prefix=None,
                                            fingerprint=plan["fingerprint"], step=step,
                                            schema_version_id=plan["schema_version_id"], run_id=run.id)
                except Exception as exc:  # noqa: BLE001  (counted and reported, the job goes on)
                    out["errors"].append(f"register: {type(exc).__name__}: {exc}")
                    continue
                out["latency_ms"].append((time.perf_counter() - t0) * 1000)
                out["acked"].append(path)
            reg.end_run(run.id, "completed")
            out["ended"] = True
    except Exception as exc:  # noqa: BLE001
        out["errors"].append(f"{type(exc).__name__}: {exc}")
    results.put(out)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def verify(url: str, outs: list[dict[str, Any]], bench_id: str) -> dict[str, int]:
    """Look up every acknowledged write: `lost` missing ones, `duplicates` extra runs of one job."""
    from registry.store import open_registry

    lost = unacknowledged = 0
    with open_registry(url) as reg:
        for out in outs:
            if out["run"] is None:
                continue
            run = reg.get_run(out["run"])
            if run is None:
                lost += 1 + len(out["acked"])
                continue
            if out["ended"] and run.status != "completed":
                lost += 1
            present = {c.path for c in reg.list_checkpoints(run_id=out["run"])}
            lost += len(set(out["acked"]) - present)
            unacknowledged += len(present - set(out["acked"]))
        jobs = [r.scheduler_job_id for r in reg.list_runs(variant=VARIANT)
                if (r.scheduler_job_id or "").startswith(f"cluster-load-{bench_id}-")]
    return {"lost": lost, "duplicates": len(jobs) - len(set(jobs)), "landed_unacknowledged": unacknowledged}


def run_load(url: str, workers: int, seconds: float, interval: tuple[float, float]) -> dict[str, Any]:
    """Prepare, run `workers` jobs at once, verify; returns the figures (see the module doc)."""
    workdir = tempfile.mkdtemp(prefix="cluster-load-")
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            plan = pool.apply(prepare, (url, workdir))
        # Workers fork from here: import what they use once, and hold no database connection.
        import registry.matching
        import registry.store.api  # noqa: F401

        fork = multiprocessing.get_context("fork")
        options = {"bench_id": uuid.uuid4().hex[:8], "seconds": seconds, "interval": interval}
        barrier, results = fork.Barrier(workers + 1), fork.Queue()
        procs = [fork.Process(target=worker, args=(i, url, plan, options, barrier, results)) for i in range(workers)]
        for proc in procs:
            proc.start()
        barrier.wait(timeout=300)
        began = time.monotonic()
        outs = []
        for _ in procs:
            try:
                outs.append(results.get(timeout=seconds + 600))
            except Exception:  # noqa: BLE001  (a worker that died without a word)
                break
        wall = time.monotonic() - began
        for proc in procs:
            proc.join(timeout=60)
        missing = workers - len(outs)
        checked = verify(url, outs, options["bench_id"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    errors = [e for out in outs for e in out["errors"]] + ["a worker died without reporting"] * missing
    latencies = [ms for out in outs for ms in out["latency_ms"]]
    resolves = [out["resolve_ms"] for out in outs if out["resolve_ms"] is not None]
    registrations = len(latencies)
    return {
        "db": plan["display"], "backend": plan["backend"], "workers": workers, "seconds": seconds,
        "interval": list(interval), "errors": len(errors), "error_samples": errors[:5],
        **checked, "registrations": registrations, "per_second": round(registrations / wall, 2),
        "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "resolve_p50_ms": percentile(resolves, 0.50), "resolve_p99_ms": percentile(resolves, 0.99),
        "wall_seconds": round(wall, 2), "mean_interval_s": round(statistics.mean(interval), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="database URL, or postgres-temp (default: a temporary SQLite file)")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each job registers checkpoints")
    parser.add_argument("--interval", default="0.5,2", help="MIN,MAX seconds between a job's registrations")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    lo, hi = (float(v) for v in args.interval.split(","))

    server = scratch = None
    try:
        if args.db == "postgres-temp":
            from registry.store.pgserver import TempPostgres

            # PostgreSQL's packaged defaults: fsync on, 100 connections (jobs hold none between writes).
            server = TempPostgres(fsync=True, max_connections=100).start()
            url = server.create_database("cluster_load")
        elif args.db:
            url = args.db
        else:
            scratch = tempfile.mkdtemp(prefix="cluster-load-db-")
            url = f"sqlite:///{os.path.join(scratch, 'registry.db')}"
        figures = run_load(url, args.workers, args.seconds, (lo, hi))
    finally:
        if server is not None:
            server.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{figures['backend']} {figures['db']}: {figures['workers']} jobs for {figures['seconds']:g} s")
        for key in ("errors", "lost", "duplicates", "registrations", "per_second", "p50_ms", "p99_ms", "max_ms",
                    "resolve_p50_ms", "resolve_p99_ms", "wall_seconds"):
            print(f"  {key:<16} {figures[key]}")
        for sample in figures["error_samples"]:
            print(f"  error: {sample}")
    return 0 if figures["errors"] == 0 and figures["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
