"""Schema revisions: read the database's revision, refuse or upgrade it, under a lock in the database.

- The code's revisions are listed here (`KNOWN_REVISIONS`, oldest first; a test checks them
  against `migrations/versions`) so that opening a current database never loads Alembic.
- A database at a revision this code does not know is newer than the code: refused, never written.
- SQLite is upgraded on open; a server database that is behind is refused with the exact command
  that fixes it (`registry db upgrade --db URL`).
- Migrations run under a lock held in the database itself, never a node-local lock file:
  SQLite `BEGIN EXCLUSIVE` (the migration runs inside that transaction, so it is also atomic),
  PostgreSQL `pg_advisory_xact_lock` inside the migration's transaction. Whoever waits on the
  lock re-reads the revision once it has it, so many processes opening a fresh database at once
  migrate it exactly once.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from registry.errors import DatabaseError

from .engine import BEGIN_OPTION, display_url

KNOWN_REVISIONS: tuple[str, ...] = ("0001_initial", "0002_event_log", "0003_nearest_match_index",
                                   "0004_sources_and_behaviour")
HEAD_REVISION = KNOWN_REVISIONS[-1]
# pg_advisory_xact_lock key: the ASCII of "mregmig" as a number; any fixed 64-bit value works.
ADVISORY_LOCK_KEY = 0x6D7265676D6967


@dataclass(frozen=True)
class RevisionState:
    """What opening found: `revision` now, and `upgraded_from` if this process ran migrations."""

    revision: str | None
    upgraded: bool = False
    upgraded_from: str | None = None


def migrations_dir() -> Path:
    import registry.migrations

    return Path(registry.migrations.__file__).parent


def alembic_config(url: str, connection: Connection | None = None):
    """An Alembic `Config` for the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def read_revision(connection: Connection) -> str | None:
    """The revision stamped in the database; None for an empty database.

    Raises `DatabaseError` for a database stamped with several heads (branches we never create).
    """
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    if len(rows) > 1:
        raise DatabaseError(f"database is stamped with several revisions: {', '.join(sorted(rows))}")
    return rows[0] if rows else None


def current_revision(engine: Engine) -> str | None:
    """The database's revision (a read-only transaction). Raises `DatabaseError` if unreachable."""
    try:
        with engine.connect() as connection:
            return read_revision(connection)
    except SQLAlchemyError as exc:
        raise _unreachable(engine, exc) from exc


def _unreachable(engine: Engine, exc: SQLAlchemyError) -> DatabaseError:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return DatabaseError(
        f"cannot open the registry database {engine.url.render_as_string(hide_password=True)}: {detail}",
        hint="check --db / REGISTRY_DB (`registry info` shows which database is in use)",
    )


def refuse_newer(url: str, revision: str) -> DatabaseError:
    return DatabaseError(
        f"database {display_url(url)} is at schema revision {revision}, "
        f"which is newer than this version of model-registry (newest known: {HEAD_REVISION})",
        hint="upgrade model-registry to the version that wrote it; the database was not modified",
    )


def refuse_behind(url: str, revision: str | None) -> DatabaseError:
    at = revision or "none (empty database)"
    return DatabaseError(
        f"database {display_url(url)} is at schema revision {at}; "
        f"this version of model-registry needs {HEAD_REVISION}",
        hint=f"run: registry db upgrade --db {display_url(url)}",
    )


def ensure_current(engine: Engine, url: str, *, upgrade: bool) -> RevisionState:
    """Check the database's revision and, if `upgrade`, bring it to head under the lock.

    Returns the state. Raises `DatabaseError`: newer than the code (never written), behind when
    `upgrade` is false (with the fix command), or the migration failed (rolled back).
    """
    revision = current_revision(engine)
    if revision == HEAD_REVISION:
        return RevisionState(revision)
    if revision is not None and revision not in KNOWN_REVISIONS:
        raise refuse_newer(url, revision)
    if not upgrade:
        raise refuse_behind(url, revision)
    return run_migration(engine, url, "head")


def run_migration(engine: Engine, url: str, target: str, *, downgrade: bool = False) -> RevisionState:
    """Upgrade (or downgrade) to `target` under the database-held lock; returns the new state.

    A no-op when another process already did it while we waited for the lock. Raises
    `DatabaseError` for a database newer than the code or a failed migration (rolled back).
    """
    from alembic import command
    from alembic.util.exc import CommandError

    try:
        with migration_lock(engine) as connection:
            before = read_revision(connection)
            if before is not None and before not in KNOWN_REVISIONS:
                raise refuse_newer(url, before)
            if not downgrade and target == "head" and before == HEAD_REVISION:
                return RevisionState(before)
            config = alembic_config(url, connection)
            (command.downgrade if downgrade else command.upgrade)(config, target)
            after = read_revision(connection)
            return RevisionState(after, upgraded=after != before, upgraded_from=before)
    except CommandError as exc:
        raise DatabaseError(f"cannot migrate {display_url(url)} to {target}: {exc}") from None
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseError(
            f"migrating {display_url(url)} to {target} failed and was rolled back: {detail}"
        ) from exc


@contextmanager
def migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that holds the database's migration lock.

    Commits when the block succeeds, rolls back otherwise.
    """
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # Foreign keys off while tables are rebuilt (batch migrations); the pragma is ignored
            # inside a transaction, so it is set on the raw connection before BEGIN.
            _sqlite_pragma(connection, "PRAGMA foreign_keys = OFF")
            try:
                exclusive = connection.execution_options(**{BEGIN_OPTION: "EXCLUSIVE"})
                with exclusive.begin():
                    yield exclusive
                    violations = exclusive.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if violations:
                        raise DatabaseError(f"migration left {len(violations)} foreign key violations; rolled back")
            finally:
                _sqlite_pragma(connection, "PRAGMA foreign_keys = ON")
        else:
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
                yield connection


def _sqlite_pragma(connection: Connection, statement: str) -> None:
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()
