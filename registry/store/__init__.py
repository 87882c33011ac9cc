"""The registry database (DESIGN §6): SQLAlchemy ORM, Alembic migrations, SQLite or PostgreSQL.

    from registry.store import open_registry
    with open_registry() as reg:            # --db / REGISTRY_DB / default SQLite file
        reg.find_by_fingerprint(fp)

`open_registry` is the one entry point; the `Registry` it returns speaks in plain records
(`registry.store.records`). Importing this package does not import SQLAlchemy: it loads with
the first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import Registry

__all__ = ["open_registry", "resolve_db_url", "display_url", "upgrade_database", "downgrade_database",
           "database_revision", "describe_database"]


def resolve_db_url(url: str | None = None) -> str:
    """The URL to use: `url`, else REGISTRY_DB, else the default SQLite file (see `engine.py`)."""
    from .engine import resolve_db_url as resolve

    return resolve(url)


def display_url(url: str) -> str:
    """`url` with the password replaced by `***`."""
    from .engine import display_url as display

    return display(url)


def open_registry(url: str | None = None, *, readonly: bool = False, upgrade: bool | None = None,
                  create: bool = True) -> "Registry":
    """Open the registry database; returns a `Registry` (a context manager).

    `upgrade=None` upgrades an SQLite database on open and refuses a server database that is
    behind; `upgrade=True` upgrades either (what `registry init` does). `readonly=True` never
    writes: no upgrade, no file created, and write methods raise `DatabaseError`.
    `create=False` refuses a missing SQLite file as `readonly` does (for what only reads or
    changes existing records) but may still upgrade.
    Raises `DatabaseError` (exit 4, with a hint) when the database cannot be opened, is missing
    where it may not be created, is newer than the code, or is behind and may not be upgraded
    here; `UsageError` for a bad URL.
    """
    from .api import Registry
    from .engine import backend, create_registry_engine, db_url_source, missing_database, sqlite_path
    from .migrate import ensure_current

    source = db_url_source(url)
    resolved = resolve_db_url(url)
    path = sqlite_path(resolved)
    if (readonly or not create) and path is not None and not path.exists():
        raise missing_database(path, resolved, source)
    engine = create_registry_engine(resolved, create_dirs=not readonly)
    allow_upgrade = (backend(resolved) == "sqlite") if upgrade is None else upgrade
    try:
        state = ensure_current(engine, resolved, upgrade=allow_upgrade and not readonly)
    except BaseException:
        engine.dispose()
        raise
    return Registry(engine, resolved, source=source, state=state, readonly=readonly)


def upgrade_database(url: str | None = None, revision: str = "head"):
    """Upgrade the database to `revision` under the migration lock; returns a `RevisionState`.

    Raises `DatabaseError` for an unreachable database, one newer than the code, or a failure.
    """
    return _migrate(url, revision, downgrade=False)


def downgrade_database(url: str | None = None, revision: str = "-1"):
    """Downgrade the database to `revision` (`-1`, a revision id, or `base`); returns a `RevisionState`."""
    return _migrate(url, revision, downgrade=True)


def _migrate(url: str | None, revision: str, *, downgrade: bool):
    from .engine import create_registry_engine, db_url_source, missing_database, sqlite_path
    from .migrate import run_migration

    resolved = resolve_db_url(url)
    path = sqlite_path(resolved)
    if downgrade and path is not None and not path.exists():
        raise missing_database(path, resolved, db_url_source(url))
    engine = create_registry_engine(resolved)
    try:
        return run_migration(engine, resolved, revision, downgrade=downgrade)
    finally:
        engine.dispose()


def database_revision(url: str | None = None) -> str | None:
    """The revision the database is at (None when empty); never writes or upgrades."""
    from .engine import create_registry_engine, sqlite_path
    from .migrate import current_revision

    resolved = resolve_db_url(url)
    path = sqlite_path(resolved)
    if path is not None and not path.exists():
        return None
    engine = create_registry_engine(resolved, create_dirs=False)
    try:
        return current_revision(engine)
    finally:
        engine.dispose()


def describe_database(url: str | None = None):
    """A `RegistryInfo` for any database state (what `registry info` shows); never writes.

    Counts are filled only when the database is at the code's revision. Raises `DatabaseError`
    only when the database cannot be reached.
    """
    from .engine import backend, create_registry_engine, db_url_source, sqlite_path
    from .engine import display_url as display
    from .migrate import HEAD_REVISION, KNOWN_REVISIONS, current_revision
    from .records import RegistryInfo

    source, resolved = db_url_source(url), resolve_db_url(url)
    path = sqlite_path(resolved)
    if path is not None and not path.exists():
        return RegistryInfo(display(resolved), source, backend(resolved), None, HEAD_REVISION, "missing", {})
    engine = create_registry_engine(resolved, create_dirs=False)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    if revision != HEAD_REVISION:
        status = "newer" if revision is not None and revision not in KNOWN_REVISIONS else "behind"
        return RegistryInfo(display(resolved), source, backend(resolved), revision, HEAD_REVISION, status, {})
    with open_registry(url, readonly=True) as reg:
        return reg.info()
