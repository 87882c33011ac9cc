"""Many processes at once: migrations run once, registrations yield one row, nothing is lost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.store import open_registry
from registry.store.migrate import HEAD_REVISION

WORKER = Path(__file__).with_name("store_worker.py")


def run_together(action: str, url: str, count: int, tmp_path: Path) -> list[dict]:
    """Start `count` workers, release them at the same moment, return their JSON answers."""
    ready = tmp_path / f"ready-{action}"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, str(WORKER), action, url, str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)]
    deadline = time.monotonic() + 120
    while len([p for p in ready.iterdir()]) < count and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.02)
    (ready / "go").touch()
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        answers.append(json.loads(out.strip().splitlines()[-1]))
    return answers


@pytest.mark.slow
def test_sixteen_processes_opening_a_fresh_sqlite_file_migrate_it_once(sqlite_url, tmp_path):
    answers = run_together("open", sqlite_url, 16, tmp_path)
    assert [a["revision"] for a in answers] == [HEAD_REVISION] * 16
    assert sum(a["migrated"] for a in answers) == 1


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_server_upgrades_migrate_once(pg_url, tmp_path):
    answers = run_together("upgrade", pg_url, 6, tmp_path)
    assert sum(a["migrated"] for a in answers) == 1
    assert {a["revision"] for a in answers} == {HEAD_REVISION}


@pytest.mark.slow
def test_concurrent_registration_of_the_same_things_yields_one_row(db_url, tmp_path):
    open_registry(db_url, upgrade=True).close()
    answers = run_together("register", db_url, 8, tmp_path)
    for key in ("variant", "version", "checkpoint"):
        assert len({a[key] for a in answers}) == 1, key
    with open_registry(db_url) as reg:
        counts = reg.counts()
        actions = [e.action for e in reg.events()]
    assert (counts["variants"], counts["schema_versions"], counts["schemas"], counts["checkpoints"]) == (1, 1, 1, 1)
    assert actions == ["variant.add", "schema.record", "checkpoint.add"]
