"""A separate process for the concurrency tests: `python store_worker.py ACTION URL READY_DIR`.

It announces itself by creating READY_DIR/<pid>, waits for READY_DIR/go so every worker starts
at the same moment, runs ACTION and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def wait_for_go(ready_dir: Path) -> None:
    (ready_dir / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while not (ready_dir / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.005)


def main() -> None:
    action, url, ready_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    from registry.schema import ModuleSignature, Schema, TensorEntry
    from registry.store import open_registry, upgrade_database

    wait_for_go(ready_dir)
    if action == "open":
        with open_registry(url) as reg:
            print(json.dumps({"migrated": reg.migrated, "revision": reg.revision, "variants": reg.counts()["variants"]}))
    elif action == "upgrade":
        state = upgrade_database(url)
        print(json.dumps({"migrated": state.upgraded, "revision": state.revision}))
    elif action == "register":
        schema = Schema([TensorEntry("layer.weight", (8, 8)), TensorEntry("layer.bias", (8,))])
        signature = ModuleSignature((("", "Net"), ("layer", "torch.nn.Linear")))
        with open_registry(url) as reg:
            variant = reg.register_variant("race/same", "race", {"width": 8})
            version = reg.record_schema_version("race/same", schema, signature, code_revision="r",
                                                package_versions={})
            checkpoint = reg.register_checkpoint("/shared/ckpt.pt", size=1234, mtime=1700000000.5,
                                                 format="torch-zip", container=None, wrapper=None, prefix=None,
                                                 fingerprint=schema.fingerprint, schema_version_id=version.id)
            print(json.dumps({"variant": variant.id, "version": version.id, "checkpoint": checkpoint.id}))
    else:
        raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main()
