"""A throwaway one-node Slurm cluster on this machine, for tests.

    with SlurmCluster(tmp_path / "slurm") as cluster:
        job_id = cluster.sbatch("examples/slurm/demo_requeue.sbatch", env={"DEMO_DIR": ...})
        state = cluster.wait_job(job_id, timeout=300)      # "COMPLETED"

It uses Debian's packages (`apt-get install slurmctld slurmd slurm-client munge`, Slurm 22.05 on
bookworm) and nothing of the machine's own Slurm set-up: its own munge key, munged socket,
slurm.conf, state and spool directories, log files and free TCP ports, all under `tmpdir`, so it
runs beside another cluster and leaves nothing behind. Client commands see it through
`SLURM_CONF` (`cluster.env`). Everything runs as the current user (root in CI and in a container:
slurmd must be root to start jobs as their owners).

Choices, all made so that it runs in a container without systemd or cgroup delegation:
- ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroups;
- no accounting, no job completion log;
- AuthInfo cred_expire short: Slurm holds a requeued job for cred_expire seconds (default 120);
- SchedulerParameters sched_interval/bf_interval short: a requeued job whose hold has passed is
  started by the next periodic scheduling pass (defaults 60 s / 30 s);
- munged runs with --force: it refuses a socket below a directory that is not executable by
  all, and pytest's temporary directories are 0700.

Slurm itself checks time limits and `--signal` warnings every 30 s (a compiled-in constant) and
sends the warning when `remaining <= warn_time + 30`; see examples/slurm/README.md.

`python tests/slurm_cluster.py [DIR]` starts a cluster, prints the SLURM_CONF to export, and
keeps it up until Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

#: The programs a cluster needs, and the Debian package that ships each.
BINARIES = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "squeue": "slurm-client",
    "sinfo": "slurm-client",
    "scontrol": "slurm-client",
    "scancel": "slurm-client",
    "munged": "munge",
}

#: Environment variables of an enclosing Slurm job or a user's defaults that would change what
#: client commands do against the test cluster.
_CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCONTROL_")

#: States in which a job is over for good (not requeued, not pending).
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "TIMEOUT",
})


class SlurmError(RuntimeError):
    """The cluster did not start or a client command failed; the message holds the logs' tail."""


def find_missing() -> list[str]:
    """The names of the needed programs that are not on PATH (also /usr/sbin), empty when none."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [name for name in BINARIES if shutil.which(name, path=path) is None]


def _which(name: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise SlurmError(f"{name} not found (Debian package {BINARIES.get(name, name)})")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class SlurmCluster:
    """One slurmctld, one slurmd (node `node_name`, `cpus` CPUs) and one munged under `tmpdir`.

    `start()` (or entering the context) writes the configuration, starts the daemons and returns
    when `sinfo` shows the node idle; `stop()` (or leaving it) cancels every job, stops the
    daemons and any job step daemon they left, and waits for them. Attributes after
    construction: `root`, `conf_path`, `node_name`, `partition`, `env` (the environment for
    client commands: the caller's environment without Slurm variables, plus SLURM_CONF).
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        *,
        cpus: int = 2,
        real_memory_mb: int = 1000,
        cred_expire: int = 5,
        sched_interval: int = 1,
        start_timeout: float = 60.0,
        extra_conf: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.root = Path(tmpdir).resolve()
        self.conf_path = self.root / "slurm.conf"
        self.node_name = socket.gethostname().split(".")[0] or "localhost"
        self.partition = "debug"
        self.cpus = cpus
        self.real_memory_mb = real_memory_mb
        self.cred_expire = cred_expire
        self.sched_interval = sched_interval
        self.start_timeout = start_timeout
        self.extra_conf = tuple(extra_conf)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
        self.env["SLURM_CONF"] = str(self.conf_path)
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.log_dir = self.root / "log"
        self._procs: dict[str, subprocess.Popen] = {}

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> SlurmCluster:
        """Write the configuration, start munged, slurmctld, slurmd; wait for an idle node.

        The daemons' ports are found free just before they start; when another socket took one
        in between (a daemon exits with "Address already in use"), it starts again on new ports,
        up to three times."""
        for name in BINARIES:
            _which(name)
        for attempt in range(3):
            try:
                return self._start_once()
            except SlurmError as exc:
                if "already in use" not in str(exc) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> SlurmCluster:
        try:
            self._write_files()
            self._start_munged()
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf_path)])
            self._wait(self._controller_up, "slurmctld to answer `scontrol ping`")
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node_name,
                                   "-f", str(self.conf_path)])
            self._wait(lambda: self.node_state() == "idle", f"node {self.node_name} to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons (TERM, then KILL after 10 s) and wait for them."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            subprocess.run([_which("scancel"), "--full", "--user", str(os.getuid())],
                           env=self.env, capture_output=True, timeout=30, check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.jobs():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld"):
            self._terminate(name)
        self._kill_stepds()
        self._terminate("munged")

    # -- client commands ----------------------------------------------------------------------

    def run(self, *args: str, check: bool = True, timeout: float = 60.0,
            **kwargs) -> subprocess.CompletedProcess:
        """Run a client command (`cluster.run("squeue", "-h")`) against this cluster; text output."""
        env = dict(self.env)
        env.update(kwargs.pop("env", None) or {})
        result = subprocess.run([_which(args[0]), *args[1:]], check=False, env=env,
                                capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise SlurmError(f"{' '.join(args)} exited {result.returncode}: "
                             f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def sbatch(self, script: str | os.PathLike[str] | None, *args: str,
               env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None) -> int:
        """Submit `script` with extra sbatch `args` (script None: `args` hold `--wrap CMD`);
        `env` is added to the job's environment (sbatch exports the whole environment).

        Returns the job id (for an array, the array's job id)."""
        script_args = [] if script is None else [str(script)]
        result = self.run("sbatch", "--parsable", *args, *script_args, env=env,
                          cwd=str(cwd) if cwd else None)
        return int(result.stdout.strip().split(";")[0].split("_")[0])

    def jobs(self) -> list[tuple[str, str]]:
        """(job id, state) of every job in the queue (pending, running, completing)."""
        result = self.run("squeue", "-h", "-a", "-o", "%i %T", check=False)
        return [tuple(line.split()[:2]) for line in result.stdout.splitlines() if line.strip()]

    def job_info(self, job_id: int | str) -> dict[str, str]:
        """`scontrol show job -o ID` as a dict of its Key=Value fields (empty when unknown).

        For an array's job id this is its first task; ask for "ID_TASK" for the others."""
        result = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        line = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
        info: dict[str, str] = {}
        for field in line.split():
            key, sep, value = field.partition("=")
            if sep:
                info[key] = value
        return info

    def job_state(self, job_id: int | str) -> str | None:
        """JobState of a job ("PENDING", "RUNNING", "COMPLETED", ...) or None when purged."""
        return self.job_info(job_id).get("JobState")

    def wait_job(self, job_id: int | str, timeout: float = 300.0, poll: float = 1.0) -> str:
        """Wait until the job (every task of an array) is in a final state; return that state
        (for an array: the states joined with ",", when they differ)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self._array_states(job_id)
            if states and all(state in FINAL_STATES for state in states.values()):
                return ",".join(sorted(set(states.values())))
            if time.monotonic() > deadline:
                raise SlurmError(f"job {job_id} not done after {timeout:.0f} s: {states}\n"
                                 + self.log_tail())
            time.sleep(poll)

    def node_state(self) -> str:
        """The node's state as sinfo prints it ("idle", "mixed", "alloc", "down*", ...)."""
        result = self.run("sinfo", "-h", "-N", "-n", self.node_name, "-o", "%T", check=False)
        return result.stdout.strip()

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of each daemon's log, for failure messages."""
        parts = []
        for path in sorted(self.log_dir.glob("*")):
            parts.append(f"--- {path.name}\n{_tail(path, lines)}")
        return "\n".join(parts)

    # -- internals ----------------------------------------------------------------------------

    def _array_states(self, job_id: int | str) -> dict[str, str]:
        result = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        states = {}
        for line in result.stdout.splitlines():
            fields = dict(f.partition("=")[::2] for f in line.split() if "=" in f)
            if "JobId" in fields:
                states[fields["JobId"]] = fields.get("JobState", "")
        return states

    def _write_files(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(exist_ok=True)
        munge_dir = self.munge_socket.parent
        munge_dir.mkdir(exist_ok=True)
        munge_dir.chmod(0o755)  # munged: the socket's directory must be executable by all
        key = munge_dir / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(128))
        ctld_port, slurmd_port = _free_port(), _free_port()
        while slurmd_port == ctld_port:
            slurmd_port = _free_port()
        user = _user_name()
        r = self.root
        lines = [
            "# A throwaway one-node cluster written by tests/slurm_cluster.py",
            "ClusterName=regtest",
            f"SlurmctldHost={self.node_name}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            f"SlurmUser={user}",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            f"SchedulerParameters=sched_interval={self.sched_interval},bf_interval={self.sched_interval}",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "ReturnToService=2",
            "JobRequeue=1",
            "MinJobAge=300",
            "KillWait=5",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            *self.extra_conf,
            (f"NodeName={self.node_name} NodeAddr=127.0.0.1 CPUs={self.cpus} "
             f"RealMemory={self.real_memory_mb} State=UNKNOWN"),
            (f"PartitionName={self.partition} Nodes={self.node_name} Default=YES "
             "MaxTime=INFINITE State=UP"),
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _start_munged(self) -> None:
        d = self.munge_socket.parent
        self._spawn("munged", [
            _which("munged"), "--foreground", "--force",
            f"--socket={self.munge_socket}", f"--key-file={d / 'munge.key'}",
            f"--pid-file={d / 'munged.pid'}", f"--seed-file={d / 'munged.seed'}",
            f"--log-file={self.log_dir / 'munged.log'}",
        ])
        self._wait(self.munge_socket.exists, "munged's socket")

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.log_dir / f"{name}.out", "ab") as out:  # the daemon keeps its own copy
            self._procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=subprocess.STDOUT, env=self.env,
                                                 cwd=self.root, preexec_fn=_die_with_parent)

    def _controller_up(self) -> bool:
        return "UP" in self.run("scontrol", "ping", check=False).stdout

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not ready():
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{name} exited with {proc.returncode} while waiting for "
                                     f"{what}\n" + self.log_tail())
            if time.monotonic() > deadline:
                raise SlurmError(f"timed out after {self.start_timeout:.0f} s waiting for {what}\n"
                                 + self.log_tail())
            time.sleep(0.2)

    def _terminate(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def _kill_stepds(self) -> None:
        """slurmstepd (one per running job step, forked by our slurmd and detached from it)
        outlives slurmd by design; kill those that carry our SLURM_CONF, and their jobs."""
        marker = f"SLURM_CONF={self.conf_path}".encode()
        me = os.getpid()
        for _ in range(2):
            found = False
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                    if b"slurmstepd" not in cmdline.split(b"\0")[0]:
                        continue
                    if marker not in (entry / "environ").read_bytes().split(b"\0"):
                        continue
                    os.kill(int(entry.name), signal.SIGKILL)
                    found = True
                except (OSError, ValueError):
                    continue
            if not found:
                return
            time.sleep(0.5)


def _die_with_parent() -> None:
    """In the daemon before exec: SIGTERM it when the process that started it dies, so a killed
    test run leaves no daemon behind (Linux prctl PR_SET_PDEATHSIG; a no-op elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def main(argv: list[str] | None = None) -> int:
    import sys
    import tempfile

    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="slurm-cluster-"))
    def interrupted(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)  # also when started in the background,
    signal.signal(signal.SIGTERM, interrupted)  # where a shell makes it ignore SIGINT
    with SlurmCluster(root) as cluster:
        print(f"export SLURM_CONF={cluster.conf_path}", flush=True)
        print(f"node {cluster.node_name} idle; Ctrl-C (or SIGTERM) stops the cluster", flush=True)
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
