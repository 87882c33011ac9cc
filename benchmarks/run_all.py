"""`make bench`: run every benchmark in turn; each prints its own table of figures and ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_meta_build.py", "bench_fingerprint.py", "bench_store.py", "bench_match.py"]


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n##### {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
