"""A separate process for the concurrency and fault tests: `python store_worker.py ACTION URL READY_DIR [ARG]`.

It announces itself by creating READY_DIR/<pid>, waits for READY_DIR/go so every worker starts
at the same moment, runs ACTION and prints one JSON line.

- `open`, `upgrade`, `register`: many processes at once on one database;
- `stall-checkpoint`, `stall-run`: write, then stop just before COMMIT (after flushing the rows
  and their event into the open transaction), create READY_DIR/inside and sleep until killed;
- `fsize-limit`: a write under a file size limit of 0 (a full disk where tmpfs cannot be
  mounted), then the same after the limit is lifted;
- `storm COUNT FINGERPRINT`: fork COUNT resuming jobs, each opens the registry and looks up what
  `seed` wrote (never writes); prints how many succeeded and how long the slowest took.
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


SCHEMA_ENTRIES = (("layer.weight", (8, 8)), ("layer.bias", (8,)))
RESUME_FILE = ("/shared/resume.pt", 4321, 1700000000.25)


def seed(url: str) -> dict:
    """The variant, schema version and checkpoint the stall and storm actions use; returns their ids."""
    from registry.schema import ModuleSignature, Schema, TensorEntry
    from registry.store import open_registry

    schema = Schema([TensorEntry(name, shape) for name, shape in SCHEMA_ENTRIES])
    signature = ModuleSignature((("", "Net"), ("layer", "torch.nn.Linear")))
    with open_registry(url, upgrade=True) as reg:
        reg.register_variant("race/same", "race", {"width": 8})
        version = reg.record_schema_version("race/same", schema, signature, code_revision="r", package_versions={})
        path, size, mtime = RESUME_FILE
        reg.register_checkpoint(path, size=size, mtime=mtime, format="torch-zip", container=None, wrapper=None,
                                prefix=None, fingerprint=schema.fingerprint, schema_version_id=version.id)
        return {"fingerprint": schema.fingerprint, "version": version.id}


def stall_before_commit(ready_dir: Path) -> None:
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    @event.listens_for(Session, "before_commit")
    def _stall(session) -> None:
        session.flush()
        (ready_dir / "inside").touch()
        time.sleep(600)


def fsize_limit(url: str) -> dict:
    """Refused write under RLIMIT_FSIZE 0 (SIGXFSZ ignored, so writes fail with EFBIG), then a write without it."""
    import resource
    import signal

    from registry.errors import DatabaseError
    from registry.store import open_registry

    fields = {"size": 10, "mtime": 1700000003.0, "format": "torch-zip", "container": None, "wrapper": None,
              "prefix": None, "fingerprint": "sha256:" + "2" * 64}
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with open_registry(url) as reg:
        raw = reg.engine.raw_connection()  # empty the WAL, so that the next write must grow a file
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw.close()
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
        try:
            reg.register_checkpoint("/shared/over-limit.pt", **fields)
            refused = None
        except DatabaseError as exc:
            refused = {"message": exc.message, "exit": exc.exit_code}
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        counts = reg.counts()
        written = reg.register_checkpoint("/shared/under-limit.pt", **fields)
    return {"refused": refused, "counts_after_refusal": counts, "written_after_limit_lifted": written.id is not None}


def storm(url: str, count: int, fingerprint: str) -> dict:
    """Fork `count` lookup-only jobs at once; returns how many succeeded and the slowest one's seconds."""
    import registry.store.api  # noqa: F401  (imported once, before the fork)
    from registry.store import open_registry

    read_end, write_end = os.pipe()
    began = time.monotonic()
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            status = 1
            try:
                t0 = time.monotonic()
                with open_registry(url) as reg:
                    versions = reg.find_by_fingerprint(fingerprint)
                    record = reg.find_checkpoint(*RESUME_FILE)
                ok = bool(versions) and record is not None
                os.write(write_end, (json.dumps({"ok": ok, "seconds": time.monotonic() - t0}) + "\n").encode())
                status = 0 if ok else 1
            finally:
                os._exit(status)
        children.append(pid)
    os.close(write_end)
    failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children)
    with os.fdopen(read_end) as answers:
        lines = [json.loads(line) for line in answers]
    return {"ok": sum(a["ok"] for a in lines), "failed": failed,
            "slowest": max((a["seconds"] for a in lines), default=None), "seconds": time.monotonic() - began}


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
    elif action in ("stall-checkpoint", "stall-run"):
        stall_before_commit(ready_dir)
        with open_registry(url) as reg:
            if action == "stall-checkpoint":
                reg.register_checkpoint("/shared/killed.pt", size=99, mtime=1700000001.0, format="torch-zip",
                                        container=None, wrapper=None, prefix=None, fingerprint="sha256:" + "0" * 64)
            else:
                reg.start_run("race/same", schema_version_id=None, config={}, host="node", user="job")
    elif action == "fsize-limit":
        print(json.dumps(fsize_limit(url)))
    elif action == "storm":
        print(json.dumps(storm(url, int(sys.argv[4]), sys.argv[5])))
    else:
        raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main()
