"""Web view at scale: 10,000 runs and 100,000 checkpoints; server time per page.

Builds a throwaway SQLite registry (built-in variants from `registry init`, then runs and
checkpoints bulk-inserted: 50 resume chains of 200 runs, 10 checkpoints each, a few thousand of
them unmatched), then times each page in-process through the ASGI app (server time: routing,
queries, layout, rendering), medians of 5. Target: a lineage page of a 200-run chain in ≤ 1 s.

    python benchmarks/bench_web.py [--chains 50] [--runs-per-chain 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone


def _fill(url: str, chains: int, per_chain: int, checkpoints_per_run: int) -> dict:
    import sqlalchemy as sa

    from registry.store import open_registry
    from registry.store.orm import CheckpointRow, RunRow

    with open_registry(url) as reg:
        version = reg.latest_schema_version("ctvit/tiny")
        variant_id = reg.require_variant("ctvit/tiny").id
    engine = sa.create_engine(url)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    roots, checkpoint_id = [], 0
    with engine.begin() as connection:
        for chain in range(chains):
            resumed, runs, checkpoints = None, [], []
            for index in range(per_chain):
                run_id = uuid.uuid4().hex[:16]
                moment = start + timedelta(hours=chain * per_chain + index)
                runs.append({"id": run_id, "variant_id": variant_id, "schema_version_id": version.id,
                             "config_json": "{}", "host": f"node{index % 8}", "username": f"user{chain % 5}",
                             "scheduler_job_id": f"{1000 + chain}_{index}", "world_size": 1, "code_revision": None,
                             "started_at": moment, "ended_at": moment + timedelta(minutes=50),
                             "status": "preempted", "resumed_from_checkpoint_id": resumed, "parent_run_id": None})
                for k in range(checkpoints_per_run):
                    checkpoint_id += 1
                    step = (index * checkpoints_per_run + k + 1) * 100
                    matched = not (chain % 10 == 9 and k % 2)  # some chains left files no build loads
                    checkpoints.append({
                        "id": checkpoint_id, "path": f"/shared/runs/chain{chain}/step-{step:08d}.pt", "size": 10**6,
                        "mtime": 0.0, "content_digest": None, "format": "torch-zip", "container": "model",
                        "wrapper": None, "prefix": None,
                        "fingerprint": version.fingerprint if matched else f"sha256:{chain:064x}",
                        "step": step, "schema_version_id": version.id if matched else None, "run_id": run_id,
                        "created_at": moment})
                resumed = checkpoint_id
            # insert runs one by one in order (each resumes a checkpoint inserted before it)
            for run, first in zip(runs, range(0, len(checkpoints), checkpoints_per_run)):
                connection.execute(sa.insert(RunRow.__table__), [run])
                connection.execute(sa.insert(CheckpointRow.__table__),
                                   checkpoints[first:first + checkpoints_per_run])
            roots.append(runs[0]["id"])
    return {"roots": roots, "checkpoints": checkpoint_id}


def _time(client, path: str, repeat: int = 5) -> tuple[float, int]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - began)
        assert response.status_code == 200, (path, response.status_code, response.text[:200])
    return statistics.median(times), len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=50)
    parser.add_argument("--runs-per-chain", type=int, default=200)
    parser.add_argument("--checkpoints-per-run", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from starlette.testclient import TestClient

    from registry.store import open_registry
    from registry.web.app import create_app

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{os.path.join(folder, 'registry.db')}"
        subprocess.run([sys.executable, "-m", "registry.command.cli", "--db", url, "init"], check=True,
                       stdout=subprocess.DEVNULL)
        began = time.perf_counter()
        filled = _fill(url, args.chains, args.runs_per_chain, args.checkpoints_per_run)
        fill_seconds = time.perf_counter() - began
        with open_registry(url, readonly=True) as reg:
            counts = reg.counts()
            client = TestClient(create_app(reg))
            root = filled["roots"][0]
            pages = {
                "variants (index)": "/index.html",
                "lineage list (page 1 of chains)": "/lineage.html",
                "lineage list filtered by user": "/lineage.html?user=user3",
                f"chain of {args.runs_per_chain} runs, collapsed": f"/chain-{root}.html",
                f"chain of {args.runs_per_chain} runs, expanded": f"/chain-{root}-full.html",
                "run": f"/run-{root}.html",
                "checkpoint": f"/checkpoint-{filled['checkpoints'] // 2}.html",
                "unmatched (files not on disk)": "/unmatched.html",
                "search by short fingerprint": "/search.html?q=" + reg.latest_schema_version("ctvit/tiny").fingerprint[7:19],
                "search by path": "/search.html?q=chain7/step-0000",
                "API chain": f"/api/chains/{root}",
            }
            client.get("/index.html")  # warm the templates and the first connection
            results = {name: _time(client, path) for name, path in pages.items()}
    rows = [{"page": name, "median_seconds": round(seconds, 4), "bytes": size} for name, (seconds, size) in results.items()]
    chain_pages = [r for r in rows if r["page"].startswith("chain of")]
    verdict = all(r["median_seconds"] <= 1.0 for r in chain_pages)
    if args.json:
        print(json.dumps({"runs": counts["runs"], "checkpoints": counts["checkpoints"], "fill_seconds": fill_seconds,
                          "pages": rows, "chain_pages_within_1s": verdict}, indent=2))
        return
    print(f"registry: {counts['runs']:,} runs, {counts['checkpoints']:,} checkpoints (filled in {fill_seconds:.1f} s)")
    print(f"{'page':<40} {'server time':>12} {'bytes':>10}")
    for row in rows:
        print(f"{row['page']:<40} {row['median_seconds'] * 1000:>9.0f} ms {row['bytes']:>10,}")
    print(f"lineage page of a {args.runs_per_chain}-run chain within 1 s: {'yes' if verdict else 'NO'}")


if __name__ == "__main__":
    main()
