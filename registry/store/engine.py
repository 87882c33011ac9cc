"""Which database, and an Engine configured for it.

URL resolution (DESIGN §6): the `--db` value, else `REGISTRY_DB`, else the `db` key of the
`[tool.registry]` table in the nearest pyproject.toml (a relative SQLite path is relative to that
file), else an SQLite file in the user's data directory. A value without `://` is taken as an
SQLite file path.

SQLite connections get WAL, a busy timeout and foreign keys; pysqlite's own transaction handling
is switched off (`isolation_level = None`) and SQLAlchemy's `begin` event emits the BEGIN itself,
so a write session really starts with `BEGIN IMMEDIATE` (take the write lock first, wait on the
busy timeout) instead of upgrading a read lock mid-transaction, which fails at once with
"database is locked". Reads begin DEFERRED: under WAL they never wait for a writer. An SQLite
file in a directory nobody can write (a read-only mount, mode 0555) with no `-wal`/`-shm`
beside it is opened `immutable`: SQLite could not create the shared-memory file that WAL
readers need, and no writer can exist; reads work and writes fail as read-only.

PostgreSQL uses psycopg 3 without a connection pool (`NullPool`): each unit of work connects,
so hundreds of mostly idle training jobs hold no server connection slots between writes, and a
restarted server leaves no stale connection behind. Once a process has reached the server, a
refused or dropped connection is retried with backoff for up to `REGISTRY_DB_RETRY_SECONDS`
(default 30) while the server restarts; a first connection that is refused fails at once, since
that is a wrong URL far more often than a restart.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from registry.errors import DatabaseError, UsageError

ENV_VAR = "REGISTRY_DB"
APP_NAME = "model-registry"
DEFAULT_FILE = "registry.db"
BUSY_TIMEOUT_SECONDS = 60.0
# Execution option naming the BEGIN form a connection's transactions use on SQLite.
BEGIN_OPTION = "registry_sqlite_begin"
RETRY_ENV_VAR = "REGISTRY_DB_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 30.0
# What a server says while it cannot take connections for a moment (starting, stopping, full).
_TRANSIENT_CONNECT_TEXT = ("the database system is starting up", "the database system is shutting down",
                           "the database system is in recovery mode", "too many clients",
                           "remaining connection slots are reserved")


# Set by a unit of work (`session.run_write`): its reconnects end by this `time.monotonic()` too.
connect_deadline: ContextVar[float | None] = ContextVar("registry_connect_deadline", default=None)


def retry_seconds() -> float:
    """How long a lost server connection is retried: `REGISTRY_DB_RETRY_SECONDS`, default 30 (0: never).

    Raises `UsageError` for a value that is not a non-negative number.
    """
    raw = os.environ.get(RETRY_ENV_VAR, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UsageError(f"{RETRY_ENV_VAR} must be a number of seconds, not {raw!r}")
    return value


def backoff_delays(first: float = 0.1, cap: float = 2.0) -> Iterator[float]:
    """Exponential backoff with jitter (so restarted servers are not hit by every job at once)."""
    delay = first
    while True:
        yield delay * random.uniform(0.5, 1.0)
        delay = min(delay * 2, cap)


def default_db_path() -> Path:
    """The SQLite file used when neither `--db` nor REGISTRY_DB is given."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME)) / DEFAULT_FILE


def db_url_source(url: str | None = None) -> str:
    """Where the URL comes from: `--db`, `REGISTRY_DB`, `pyproject.toml PATH` or `default`."""
    if url:
        return "--db"
    if os.environ.get(ENV_VAR):
        return ENV_VAR
    project = _project_db()
    if project is not None:
        return f"pyproject.toml {project[1]}"
    return "default"


def _project_db() -> tuple[str, str] | None:
    """`(url, pyproject path)` of the nearest `[tool.registry]` table's `db`, or None."""
    from registry.project import load_project

    project = load_project()
    if project is None or not project.db:
        return None
    return project.db, str(project.path)


def resolve_db_url(url: str | None = None) -> str:
    """The database URL to use, as a SQLAlchemy URL string.

    Raises `UsageError` (exit 2) for a value that is not a URL SQLAlchemy understands.
    """
    raw = url or os.environ.get(ENV_VAR) or ""
    if not raw:
        project = _project_db()
        raw = project[0] if project is not None else ""
    if not raw:
        return f"sqlite:///{default_db_path()}"
    if "://" not in raw:
        return f"sqlite:///{Path(raw).expanduser().absolute()}"
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://"):]
    try:
        parsed = make_url(raw)
    except ArgumentError:
        raise UsageError(f"not a database URL: {raw!r}", hint="use sqlite:///PATH or postgresql://USER@HOST/DB") from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def missing_database(path: Path, resolved: str, source: str) -> DatabaseError:
    """The `DatabaseError` for an SQLite registry file that does not exist (yet); `source` is
    `db_url_source`'s answer (the hint repeats `--db` only when the URL came from there)."""
    init = f"registry init --db {display_url(resolved)}" if source == "--db" else "registry init"
    return DatabaseError(f"no registry database at {path}", hint=f"create it with: {init}")


def display_url(url: str) -> str:
    """The URL with any password replaced by `***` (what `registry info` and errors show)."""
    return make_url(url).render_as_string(hide_password=True)


def backend(url: str) -> str:
    """`sqlite` or `postgresql` (or another SQLAlchemy backend name)."""
    return make_url(url).get_backend_name()


def sqlite_path(url: str | URL) -> Path | None:
    """The file of an SQLite URL; None for a server URL or an in-memory database."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def create_registry_engine(url: str, *, create_dirs: bool = True) -> Engine:
    """An Engine for a resolved URL. SQLite: pragmas and BEGIN control installed (see module doc).

    Raises `DatabaseError` if the SQLite file's directory cannot be created, `UsageError` for an
    unsupported backend.
    """
    parsed = make_url(url)
    name = parsed.get_backend_name()
    if name == "sqlite":
        path = sqlite_path(parsed)
        if path is not None and create_dirs:
            folders = [p for p in path.absolute().parents if not p.exists()]
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create the directory of the registry database {path}: {exc.strerror or exc}",
                    hint="pass another location with --db or REGISTRY_DB",
                ) from None
            if not path.exists():  # the first connection will create it
                _created.setdefault(path.absolute(), folders)
        immutable = path is not None and _needs_immutable(path)
        if immutable:
            import sqlite3

            target = f"{path.absolute().as_uri()}?immutable=1"
            engine = create_engine(parsed, creator=lambda: sqlite3.connect(
                target, uri=True, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False))
        else:
            engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_SECONDS})
        _install_sqlite_events(engine, immutable=immutable)
        return engine
    if name == "postgresql":
        engine = create_engine(
            parsed,
            poolclass=NullPool,
            connect_args={"connect_timeout": 10, "application_name": APP_NAME},
        )
        _install_reconnect(engine)
        return engine
    raise UsageError(f"unsupported database backend {name!r}", hint="use sqlite:///PATH or postgresql://USER@HOST/DB")


# SQLite files (and the folders made for them) that did not exist when this process made an
# engine for them: a command that fails removes them again (`discard_created`).
_created: dict[Path, list[Path]] = {}


def forget_created() -> None:
    """Keep the SQLite files created so far (a command succeeded): `discard_created` leaves them."""
    _created.clear()


def discard_created() -> list[Path]:
    """Remove the SQLite files created since `forget_created` that hold nothing (only the schema),
    with the folders made for them; returns the files removed. Call after every engine on them
    is disposed.

    A file another process has open, or in which anything was recorded, is kept: the check and
    the removal happen under SQLite's exclusive lock, after leaving WAL mode, which SQLite
    allows only when no other connection is open.
    """
    removed = []
    for path, folders in list(_created.items()):
        if _remove_if_empty(path):
            removed.append(path)
            for folder in folders:  # nearest first; stops at one that is not empty
                try:
                    folder.rmdir()
                except OSError:
                    break
    _created.clear()
    return removed


def _remove_if_empty(path: Path) -> bool:
    import sqlite3

    if not path.is_file():
        return False
    try:
        connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        if str(connection.execute("PRAGMA journal_mode = DELETE").fetchone()[0]).lower() != "delete":
            return False
        connection.execute("BEGIN EXCLUSIVE")
        tables = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            if table != "alembic_version" and connection.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone():
                connection.execute("ROLLBACK")
                return False
        for suffix in ("-wal", "-shm", "-journal", ""):  # the database last: never a -wal without it
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return True
    except (sqlite3.Error, OSError):
        return False
    finally:
        connection.close()


def _needs_immutable(path: Path) -> bool:
    """True for an existing SQLite file that WAL readers could not open normally (see module doc).

    Only when nobody can be writing it either: no `-wal`/`-shm` (no writer is connected) in a
    directory on a read-only filesystem or with no write permission for anyone.
    """
    directory = path.parent
    if not path.is_file() or os.access(directory, os.W_OK):
        return False
    if any(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm")):
        return False
    return bool(os.statvfs(directory).f_flag & os.ST_RDONLY) or directory.stat().st_mode & 0o222 == 0


def _install_reconnect(engine: Engine) -> None:
    """Retry a refused or dropped server connection with backoff once this engine has connected."""
    reached = False
    bound = retry_seconds()

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, _record, cargs, cparams):
        nonlocal reached
        deadline = min(time.monotonic() + bound, connect_deadline.get() or float("inf"))
        delays = backoff_delays()
        while True:
            try:
                connection = dialect.loaded_dbapi.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as exc:
                transient = reached or any(text in str(exc) for text in _TRANSIENT_CONNECT_TEXT)
                delay = next(delays)
                if not transient or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                continue
            reached = True
            return connection


def _install_sqlite_events(engine: Engine, *, immutable: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Hand transaction control to SQLAlchemy: pysqlite would otherwise BEGIN (deferred) by
        # itself before DML and never before SELECT.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal" and not immutable:
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        mode = connection.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")
