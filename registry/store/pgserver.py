"""A throwaway PostgreSQL server in a temporary directory, for the tests and the benchmarks.

Started with the server's own `initdb` and `pg_ctl` on a free port of 127.0.0.1 with trust
authentication. initdb refuses to run as root, so as root the server runs as the `postgres` OS
user (through `runuser`) in a directory given to that user. `shutdown()` and `start()` again
keep the data and the port, which is how the fault tests restart a server under load.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bin_dir() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`, or None if PostgreSQL is not installed."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TempPostgres:
    """`start()` a server, `create_database(name)` -> URL, `stop()` and remove every file."""

    def __init__(self, *, fsync: bool = False, max_connections: int = 200):
        self.bin_dir = find_bin_dir()
        if self.bin_dir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.fsync = fsync
        # 64 load-benchmark workers plus the tests' own connections fit; the packaged default is 100.
        self.max_connections = max_connections
        self.port = _free_port()
        self.base = Path(tempfile.mkdtemp(prefix="registry-pg-"))
        self.data = self.base / "data"
        self.as_root = os.geteuid() == 0
        self.user = "postgres"
        self.started = False

    def _run(self, *args: str) -> None:
        command = list(args)
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self) -> TempPostgres:
        """Initialise the data directory (first time only) and start the server; returns self."""
        if not self.data.exists():
            if self.as_root:
                shutil.chown(self.base, "postgres", "postgres")
            self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                      "-E", "UTF8", "--no-sync", "--locale=C")
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                   f"-c max_connections={self.max_connections} -c fsync={'on' if self.fsync else 'off'}")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                  str(self.base / "server.log"), "-w", "-t", "60", "start")
        self.started = True
        return self

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        auth = f"{self.user}:{password}" if password else self.user
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def shutdown(self, mode: str = "fast") -> None:
        """Stop the server and keep its data: `fast` (clients disconnected, clean) or `immediate` (a crash)."""
        if self.started:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
            self.started = False

    def stop(self) -> None:
        """Stop the server and remove every file."""
        try:
            self.shutdown("immediate")
        finally:
            self.started = False
            shutil.rmtree(self.base, ignore_errors=True)
