"""Faults a cluster meets (issue 7), on real SQLite files and a real PostgreSQL server.

A job killed mid-transaction, the server restarted under load (and one that stays down), a lost
answer to COMMIT, a read-only database, a full disk, and a resume storm while a writer holds the
lock. Whatever happens: nothing acknowledged is lost, nothing is half written, and the error a
user sees is one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import started_temp_postgres
from store_worker import RESUME_FILE, SCHEMA_ENTRIES, seed

from registry.errors import DatabaseError
from registry.store import open_registry
from registry.store.engine import sqlite_path

WORKER = Path(__file__).with_name("store_worker.py")
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "cluster_load.py"


def start_worker(action: str, url: str, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / f"ready-{action}-{uuid.uuid4().hex[:6]}"
    ready.mkdir()
    (ready / "go").touch()
    proc = subprocess.Popen([sys.executable, str(WORKER), action, url, str(ready), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, ready


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"worker never reached {path.name}")
        time.sleep(0.02)


def snapshot(url: str) -> tuple[dict, list]:
    with open_registry(url) as reg:
        return reg.counts(), [(e.action, e.subject) for e in reg.events()]


def integrity(url: str) -> str:
    connection = sqlite3.connect(sqlite_path(url))
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def checkpoint_fields(path: str, **extra) -> dict:
    return {"path": path, "size": 10, "mtime": 1700000002.0, "format": "torch-zip", "container": None,
            "wrapper": None, "prefix": None, "fingerprint": "sha256:" + "1" * 64, **extra}


# --- a job killed with SIGKILL between its writes and COMMIT -----------------------------------


@pytest.mark.parametrize("action", ["stall-checkpoint", "stall-run"])
def test_a_job_killed_before_commit_leaves_no_partial_rows_and_no_lock(db_url, action, tmp_path):
    seed(db_url)
    before = snapshot(db_url)
    proc, ready = start_worker(action, db_url, tmp_path)
    wait_for(ready / "inside", proc)
    assert snapshot(db_url) == before  # readers do not see, nor wait for, the open transaction
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)

    assert snapshot(db_url) == before  # neither the row nor its event
    if db_url.startswith("sqlite"):
        assert integrity(db_url) == "ok"
    began = time.monotonic()
    with open_registry(db_url) as reg:  # another process writes at once: no lock was left behind
        reg.register_checkpoint(**checkpoint_fields("/shared/after-kill.pt"))
        reg.start_run("race/same", schema_version_id=None, config={}, host="node", user="job")
    assert time.monotonic() - began < 10
    counts = snapshot(db_url)[0]
    assert (counts["checkpoints"], counts["runs"]) == (before[0]["checkpoints"] + 1, before[0]["runs"] + 1)


# --- PostgreSQL restarted, or gone, while jobs write ----------------------------------------------


@pytest.fixture(scope="module")
def own_pg():
    """A PostgreSQL server of this module's own, which its tests stop and restart."""
    server = started_temp_postgres()
    yield server
    server.stop()


@pytest.fixture
def own_pg_url(own_pg) -> str:
    if not own_pg.started:  # a failed test left it down
        own_pg.start()
    return own_pg.create_database(f"t_{uuid.uuid4().hex[:12]}")


def runs_and_checkpoints(server, url: str) -> tuple[int, int]:
    import psycopg

    database = url.rsplit("/", 1)[1]
    with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname={database}") as connection:
        return connection.execute("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM checkpoints)").fetchone()


@pytest.mark.slow
@pytest.mark.postgres
def test_jobs_ride_out_a_server_crash_and_restart_and_lose_nothing(own_pg, own_pg_url):
    from registry.catalog import get_builtin_variant
    from registry.store.variants import init_builtin_variants

    with open_registry(own_pg_url, upgrade=True) as reg:  # what the benchmark needs, built once here
        init_builtin_variants(reg, [get_builtin_variant("ctvit/tiny")])
    env = {**os.environ, "REGISTRY_DB_RETRY_SECONDS": "30"}
    proc = subprocess.Popen([sys.executable, str(BENCHMARK), "--db", own_pg_url, "--workers", "6", "--seconds", "8",
                             "--interval", "0.2,0.5", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:  # every job has resolved its checkpoint and started its run, and they are registering
            runs, checkpoints = runs_and_checkpoints(own_pg, own_pg_url)
            if runs == 6 and checkpoints >= 8:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the load never got going: {proc.communicate()[1][-2000:]}")
            time.sleep(0.1)
        own_pg.shutdown("immediate")  # a crash: no checkpoint, the WAL is replayed on start
        time.sleep(2)
        own_pg.start()
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    figures = json.loads(out)
    assert (figures["errors"], figures["lost"], figures["duplicates"]) == (0, 0, 0), figures["error_samples"]
    assert figures["max_ms"] > 1500, "no registration waited for the restart"
    assert figures["registrations"] > 20


@pytest.mark.postgres
def test_a_server_that_stays_down_fails_a_write_with_one_line_within_the_bound(own_pg, own_pg_url, monkeypatch):
    monkeypatch.setenv("REGISTRY_DB_RETRY_SECONDS", "2")
    with open_registry(own_pg_url, upgrade=True) as reg:
        reg.register_variant("toy/a", "toy", {})
        own_pg.shutdown("fast")
        try:
            began = time.monotonic()
            with pytest.raises(DatabaseError) as caught:
                reg.register_variant("toy/b", "toy", {})
            waited = time.monotonic() - began
        finally:
            own_pg.start()
        assert 1.5 < waited < 15
        message = caught.value.message
        assert message.startswith(f"lost the connection to {reg.url_display} and could not reconnect within 2 s: ")
        assert "\n" not in message and caught.value.exit_code == 4
        assert "REGISTRY_DB_RETRY_SECONDS" in caught.value.hint
        reg.register_variant("toy/b", "toy", {})  # the server is back: the same Registry reconnects
        assert [v.name for v in reg.list_variants()] == ["toy/a", "toy/b"]


@pytest.mark.postgres
@pytest.mark.parametrize("landed", [True, False], ids=["commit-landed", "commit-lost"])
def test_a_commit_whose_answer_is_lost_is_recorded_exactly_once(pg_url, landed, monkeypatch):
    import psycopg

    with open_registry(pg_url, upgrade=True) as reg:
        reg.register_variant("toy/a", "toy", {})
        real_commit = reg.engine.dialect.do_commit
        calls = []

        def answer_lost(fairy) -> None:
            calls.append(landed)
            if len(calls) == 1:
                if landed:
                    real_commit(fairy)
                fairy.dbapi_connection.close()  # the server sees the client go; an open transaction aborts
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            real_commit(fairy)

        monkeypatch.setattr(reg.engine.dialect, "do_commit", answer_lost)
        run = reg.start_run("toy/a", schema_version_id=None, config={}, host="node", user="job")
        assert len(calls) == (1 if landed else 2)  # run again only when the first COMMIT did not land
        assert [r.id for r in reg.list_runs()] == [run.id]
        assert [e.action for e in reg.events()] == ["variant.add", "run.start"]


# --- a read-only database ------------------------------------------------------------------------


def unprivileged() -> dict:
    """Popen arguments that make mode bits bind the command as they bind any user.

    Root writes through mode bits by its capabilities, so as root the command runs without
    CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER (dropped from the bounding set before
    exec, so the new program never has them); it stays uid 0 and can still reach the interpreter.
    """
    if os.geteuid() != 0:
        return {}
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, caps = 24, (1, 2, 3)  # <linux/prctl.h>, <linux/capability.h>

    def drop() -> None:
        for cap in caps:
            if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return {"preexec_fn": drop}


def write_safetensors_zeros(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A float32 safetensors file of zeros (8-byte header length, JSON header, data)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))


def registry_cli(*args: str, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    code = "import sys; from registry.command.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, env=env,
                          timeout=120, **popen)


@pytest.mark.parametrize("mode", ["file", "directory"])
def test_a_read_only_database_answers_reads_and_refuses_writes_in_one_line(tmp_path, mode):
    shared_dir = tmp_path / "shared"
    shared_dir.mkdir()
    checkpoint = shared_dir / "ckpt.safetensors"
    write_safetensors_zeros(checkpoint, dict(SCHEMA_ENTRIES))
    url = f"sqlite:///{shared_dir / 'registry.db'}"
    seed(url)  # closed again: the -wal and -shm files are gone, as on a registry at rest
    db_file = sqlite_path(url)
    assert sorted(p.name for p in shared_dir.iterdir()) == ["ckpt.safetensors", "registry.db"]
    popen = unprivileged()
    if mode == "file":
        db_file.chmod(0o444)
    else:
        shared_dir.chmod(0o555)
    digest = hashlib.sha256(db_file.read_bytes()).hexdigest()
    try:
        info = registry_cli("--db", url, "info", "--json", **popen)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["counts"]["checkpoints"] == 1
        matched = registry_cli("--db", url, "match", str(checkpoint), "--json", **popen)
        assert matched.returncode == 0, matched.stderr
        assert (json.loads(matched.stdout)["status"], json.loads(matched.stdout)["variant"]) == ("exact", "race/same")

        refused = registry_cli("--db", url, "init", **popen)  # a job that writes
        assert refused.returncode == 4
        assert refused.stderr.splitlines() == [
            f"error: database {url} is read-only: attempt to write a readonly database",
            "hint: the file, its directory or its filesystem is not writable by this user; reads still work",
        ]
    finally:
        shared_dir.chmod(0o755)
        db_file.chmod(0o644)
    assert hashlib.sha256(db_file.read_bytes()).hexdigest() == digest
    assert integrity(url) == "ok"


# --- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MiB tmpfs (needs root, or CAP_SYS_ADMIN); skipped where mounting is not permitted."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the file-size-limit case stands in")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], check=False, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left; returns it."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def truncate_wal(reg) -> None:
    """Checkpoint the WAL into the database and truncate it, so the next write must grow it."""
    raw = reg.engine.raw_connection()
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


def test_a_full_disk_fails_a_write_in_one_line_and_keeps_earlier_data(tiny_tmpfs):
    url = f"sqlite:///{tiny_tmpfs / 'registry.db'}"
    seed(url)
    with open_registry(url) as reg:
        before = reg.counts()
        truncate_wal(reg)
        filler = fill(tiny_tmpfs)
        with pytest.raises(DatabaseError) as caught:
            reg.register_checkpoint(**checkpoint_fields("/shared/no-space.pt"))
        assert caught.value.message == f"database {url} is out of disk space: database or disk is full"
        assert caught.value.exit_code == 4
        assert reg.counts() == before and reg.find_checkpoint(*RESUME_FILE) is not None
        assert integrity(url) == "ok"
        filler.unlink()
        reg.register_checkpoint(**checkpoint_fields("/shared/space-again.pt"))
        assert reg.counts()["checkpoints"] == before["checkpoints"] + 1
    assert integrity(url) == "ok"


def test_a_file_size_limit_fails_a_write_in_one_line_and_keeps_earlier_data(sqlite_url, tmp_path):
    seed(sqlite_url)
    before = snapshot(sqlite_url)
    proc, _ = start_worker("fsize-limit", sqlite_url, tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    answer = json.loads(out)
    assert answer["refused"] == {
        "message": f"I/O error on database {sqlite_url}: disk I/O error",
        "exit": 4,
    }
    assert answer["counts_after_refusal"] == before[0]
    assert answer["written_after_limit_lifted"]
    assert integrity(sqlite_url) == "ok"
    assert snapshot(sqlite_url)[0]["checkpoints"] == before[0]["checkpoints"] + 1


# --- lookups during a write: a resume storm ------------------------------------------------------


@pytest.mark.slow
def test_a_resume_storm_of_64_jobs_does_not_wait_for_a_writer(sqlite_url, tmp_path):
    ids = seed(sqlite_url)
    holder = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held until the storm is over
    holder.execute("INSERT INTO families (name, created_at) VALUES ('held', '2024-01-01 00:00:00.000000')")
    try:
        proc, _ = start_worker("storm", sqlite_url, tmp_path, "64", ids["fingerprint"])
        out, err = proc.communicate(timeout=300)
        held_throughout = holder.in_transaction
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 0, err
    answer = json.loads(out)
    assert (answer["ok"], answer["failed"]) == (64, 0), err
    assert held_throughout
    # A job queued behind the writer would have waited out the 60 s busy timeout and failed.
    assert answer["slowest"] < 30, answer
