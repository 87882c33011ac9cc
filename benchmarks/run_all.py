"""`make bench`: run every benchmark in turn; each prints its own table of figures and ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [[name] for name in ("bench_meta_build.py", "bench_fingerprint.py", "bench_store.py", "bench_match.py",
                                  "bench_dcp.py")]
# The cluster load at the sizes: SQLite on one node, a throwaway PostgreSQL for many.
BENCHMARKS += [["cluster_load.py", "--workers", str(n)] for n in (4, 16, 64)]
BENCHMARKS += [["cluster_load.py", "--db", "postgres-temp", "--workers", str(n)] for n in (4, 16, 64)]


def main() -> int:
    failed = []
    for name, *args in BENCHMARKS:
        label = " ".join([name, *args])
        print(f"\n##### {label}", flush=True)
        extra = [] if args else sys.argv[1:]  # the cluster runs take their own arguments only
        if subprocess.run([sys.executable, str(HERE / name), *args, *extra]).returncode != 0:
            failed.append(label)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
