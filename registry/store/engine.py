"""Which database, and an Engine configured for it.

URL resolution (DESIGN §6): the `--db` value, else `REGISTRY_DB`, else an SQLite file in the
user's data directory. A value without `://` is taken as an SQLite file path.

SQLite connections get WAL, a busy timeout and foreign keys; pysqlite's own transaction handling
is switched off (`isolation_level = None`) and SQLAlchemy's `begin` event emits the BEGIN itself,
so a write session really starts with `BEGIN IMMEDIATE` (take the write lock first, wait on the
busy timeout) instead of upgrading a read lock mid-transaction, which fails at once with
"database is locked". PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from registry.errors import DatabaseError, UsageError

ENV_VAR = "REGISTRY_DB"
APP_NAME = "model-registry"
DEFAULT_FILE = "registry.db"
BUSY_TIMEOUT_SECONDS = 60.0
# Execution option naming the BEGIN form a connection's transactions use on SQLite.
BEGIN_OPTION = "registry_sqlite_begin"


def default_db_path() -> Path:
    """The SQLite file used when neither `--db` nor REGISTRY_DB is given."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME)) / DEFAULT_FILE


def db_url_source(url: str | None = None) -> str:
    """Where the URL comes from: `--db`, `REGISTRY_DB` or `default`."""
    if url:
        return "--db"
    if os.environ.get(ENV_VAR):
        return ENV_VAR
    return "default"


def resolve_db_url(url: str | None = None) -> str:
    """The database URL to use, as a SQLAlchemy URL string.

    Raises `UsageError` (exit 2) for a value that is not a URL SQLAlchemy understands.
    """
    raw = url or os.environ.get(ENV_VAR) or ""
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
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create the directory of the registry database {path}: {exc.strerror or exc}",
                    hint="pass another location with --db or REGISTRY_DB",
                ) from None
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_SECONDS})
        _install_sqlite_events(engine)
        return engine
    if name == "postgresql":
        return create_engine(
            parsed,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 10, "application_name": APP_NAME},
        )
    raise UsageError(f"unsupported database backend {name!r}", hint="use sqlite:///PATH or postgresql://USER@HOST/DB")


def _install_sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001
        # Hand transaction control to SQLAlchemy: pysqlite would otherwise BEGIN (deferred) by
        # itself before DML and never before SELECT.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # noqa: ANN001
        mode = connection.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")
