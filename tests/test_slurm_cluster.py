"""A real one-node Slurm cluster (tests/slurm_cluster.py) runs a resumable job that is signalled
before its time limit, requeues itself, and resumes at the step it saved.

Without Slurm's binaries (Debian: slurmctld slurmd slurm-client munge) these tests are skipped,
unless REGISTRY_REQUIRE_SLURM=1 (set in CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import FINAL_STATES, SlurmCluster, find_missing

pytestmark = pytest.mark.slow

REQUIRE_SLURM = os.environ.get("REGISTRY_REQUIRE_SLURM", "") == "1"
DEMO = Path(__file__).resolve().parent.parent / "examples" / "slurm" / "demo_requeue.sbatch"
TRAIN = DEMO.with_name("train.sbatch")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One cluster for the module's tests (starting one costs seconds); each test waits for its
    own jobs to end, and a job id is never reused."""
    missing = find_missing()
    reason = None
    if missing:
        reason = f"Slurm not installed (missing: {', '.join(missing)})"
    elif os.geteuid() != 0:
        reason = "a Slurm node daemon (slurmd) must run as root"
    if reason:
        if REQUIRE_SLURM:
            pytest.fail(reason + " and REGISTRY_REQUIRE_SLURM=1")
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


def read_events(path: Path) -> dict[str, list[dict[str, str]]]:
    """The demo's event lines, grouped by job id, in order."""
    by_job: dict[str, list[dict[str, str]]] = {}
    for line in path.read_text().splitlines():
        epoch, event, *fields = line.split()
        record = dict(field.split("=", 1) for field in fields)
        record.update(event=event, time=epoch)
        by_job.setdefault(record["job"], []).append(record)
    return by_job


def assert_one_requeue(events: list[dict[str, str]], target: int) -> None:
    """start at 0 -> signalled at s (0 < s < target) -> start at s, restart 1 -> done at target."""
    assert [e["event"] for e in events] == ["start", "signalled", "start", "done"], events
    first, signalled, rerun, done = events
    saved = int(signalled["step"])
    assert first["step"] == "0" and first["restart"] == ""
    assert 0 < saved < target
    assert rerun["step"] == str(saved), "the rerun did not resume at the saved step"
    assert rerun["restart"] == "1", "SLURM_RESTART_COUNT is not 1 on the rerun"
    assert done["step"] == str(target) and done["restart"] == "1"


def test_cluster_runs_a_job(cluster, tmp_path):
    assert cluster.node_state() == "idle"
    out = tmp_path / "hello.out"
    job_id = cluster.sbatch(None, "-o", str(out), "--wrap", 'echo "hello from $SLURM_JOB_ID"')
    assert cluster.wait_job(job_id, timeout=60) == "COMPLETED"
    assert out.read_text().strip() == f"hello from {job_id}"


def test_job_signalled_by_the_test_requeues_and_resumes(cluster, tmp_path):
    """The quick path: the test sends the USR1 that Slurm would send before the time limit."""
    work = tmp_path / "work"
    work.mkdir()
    job_id = cluster.sbatch(DEMO, "--time=0:10:00", "-o", str(work / "slurm-%j.out"),
                            env={"DEMO_DIR": str(work), "DEMO_TARGET": "8"})
    state = work / f"step.{job_id}"  # the demo's saved step, replaced atomically every second
    deadline = time.monotonic() + 60
    while not (state.exists() and int(state.read_text()) >= 2):
        assert time.monotonic() < deadline, cluster.log_tail()
        time.sleep(0.2)
    cluster.run("scancel", "--signal=USR1", "--batch", str(job_id))
    assert cluster.wait_job(job_id, timeout=120) == "COMPLETED"
    events = read_events(work / "events")
    assert list(events) == [str(job_id)]
    assert_one_requeue(events[str(job_id)], target=8)
    assert cluster.job_info(job_id)["Restarts"] == "1"
    # --open-mode=append: the rerun did not truncate the first run's output
    output = (work / f"slurm-{job_id}.out").read_text()
    assert output.count(" start step=") == 2 and " done step=8 " in output, output


LAUNCHERS = {"one-process": "", "torchrun": "torchrun --standalone --nproc_per_node 2 --no-python"}


def test_registry_train_is_warned_before_its_time_limit_requeued_and_resumed_in_one_run_chain(cluster, tmp_path):
    """The real path with the real trainer, alone and under torchrun: examples/slurm/train.sbatch
    as task 3 of an array, with a 2-minute limit and --signal=B:USR1@70, so Slurm itself warns the
    job 20-50 s in (slurmctld checks every 30 s and warns once `time left <= 70 + 30 s`): late
    enough for the trainer to be running, early enough for a short test. The trainer checkpoints
    and exits 75, the script requeues the job, and the rerun resumes at the saved step. The job
    has more steps than it could ever finish; once the rerun has resumed, the test cancels it.

    Both jobs run at once (the node has 2 CPUs; each job asks for one), so they share the wait for
    Slurm's warning. The requeued job's limit is raised to 10 minutes, so that a rerun slow to
    start on a loaded machine is not warned a second time before it resumes. About 60 s."""
    from registry.catalog import get_builtin_variant
    from registry.store import open_registry
    from registry.store.variants import init_builtin_variants

    bin_dir = str(Path(sys.executable).parent)
    jobs = {}
    for name, launcher in LAUNCHERS.items():
        work = tmp_path / name
        work.mkdir()
        db = f"sqlite:///{work / 'registry.db'}"
        with open_registry(db, upgrade=True) as reg:
            init_builtin_variants(reg, [get_builtin_variant("ctvit/tiny"), get_builtin_variant("ctvit/tiny-swiglu")])
        out, log = work / "runs", work / "train.out"
        env = {"REGISTRY_DB": db, "TRAIN_VARIANT": "ctvit/tiny", "TRAIN_STEPS": "10000000", "TRAIN_EVERY": "1000",
               "TRAIN_OUT": str(out), "TRAIN_LAUNCHER": launcher, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        array_id = cluster.sbatch(TRAIN, "--array=3", "--time=0:02:00", "--signal=B:USR1@70", "-o", str(log),
                                  env=env, cwd=work)
        jobs[name] = dict(task=f"{array_id}_3", db=db, out=out, log=log, world_size=2 if launcher else 1,
                          extended=False, resumed=False)

    deadline = time.monotonic() + 240
    while not all(job["resumed"] for job in jobs.values()):
        for name, job in jobs.items():
            if job["resumed"]:
                continue
            output = job["log"].read_text() if job["log"].exists() else ""
            state = cluster.job_state(job["task"])
            assert time.monotonic() < deadline and state not in FINAL_STATES, f"{name}: {state}\n{output}\n" + cluster.log_tail()
            if "requeueing job" in output and not job["extended"]:
                cluster.run("scontrol", "update", f"JobId={job['task']}", "TimeLimit=10:00")
                job["extended"] = True
            if "resuming ctvit/tiny" in output:
                assert cluster.job_info(job["task"])["Restarts"] == "1", name
                cluster.run("scancel", job["task"])
                job["resumed"] = True
        time.sleep(0.5)

    for name, job in jobs.items():
        cluster.wait_job(job["task"], timeout=120)
        with open_registry(job["db"]) as reg:
            first, rerun = reg.list_runs()
            assert first.status == "preempted" and first.world_size == rerun.world_size == job["world_size"], name
            assert first.scheduler_job_id == rerun.scheduler_job_id == job["task"]  # Slurm's own `job_task` form
            assert rerun.parent_run_id == first.id, name  # one chain
            saved = reg.list_checkpoints(run_id=first.id)[-1]
            assert rerun.resumed_from_checkpoint_id == saved.id and saved.step > 0, name
        output = job["log"].read_text()
        assert f"pre-empted by SIGTERM at step {saved.step}" in output, output  # the script forwards the warning as TERM
        assert f"resuming ctvit/tiny from {job['out'] / f'step-{saved.step:08d}.pt'} at step {saved.step}" in output, output
