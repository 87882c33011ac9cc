"""One session scope: commit on success, roll back on any error, driver errors as DatabaseError.

Write scopes on SQLite begin with `BEGIN IMMEDIATE` (see `engine.py`), so writers queue on the
busy timeout instead of failing. On PostgreSQL two writers can race between "not there" and
"insert"; `run_write` retries the whole unit of work after a unique violation, serialization
failure or deadlock, and the retry then finds the other writer's row (insert-or-get).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from registry.errors import DatabaseError, RegistryError

from .engine import BEGIN_OPTION

T = TypeVar("T")

# SQLSTATEs after which the same unit of work may succeed when run again.
_RETRY_SQLSTATES = {"23505", "40001", "40P01"}
MAX_ATTEMPTS = 5


class SessionFactory:
    """Read and write sessions on one engine."""

    def __init__(self, engine: Engine, *, display: str):
        self.engine = engine
        self.display = display
        write_bind = engine.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        self._read = sessionmaker(bind=engine, expire_on_commit=False)
        self._write = sessionmaker(bind=write_bind, expire_on_commit=False)

    @contextmanager
    def scope(self, *, write: bool) -> Iterator[Session]:
        """A session in one transaction; committed if the block succeeds, else rolled back.

        Raises `DatabaseError` (exit 4) for driver errors; other `RegistryError`s pass through.
        """
        session = (self._write if write else self._read)()
        try:
            yield session
            session.commit()
        except RegistryError:
            session.rollback()
            raise
        except SQLAlchemyError as exc:
            session.rollback()
            raise self.translate(exc) from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def run_write(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` in a write transaction, retrying races; returns what `work` returns."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self.scope(write=True) as session:
                    return work(session)
            except DatabaseError as exc:
                if attempt == MAX_ATTEMPTS or not _retryable(exc.__cause__):
                    raise
                time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    def translate(self, exc: SQLAlchemyError) -> DatabaseError:
        """The `DatabaseError` a user sees for a driver error (one line plus a hint)."""
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        if isinstance(exc, OperationalError) and "locked" in detail:
            return DatabaseError(
                f"database {self.display} stayed locked: {detail}",
                hint="another process held the write lock longer than the busy timeout; retry",
            )
        if isinstance(exc, IntegrityError):
            return DatabaseError(f"write to {self.display} violated a constraint: {detail}")
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return DatabaseError(f"lost the connection to {self.display}: {detail}", hint="check the server and retry")
        return DatabaseError(f"database error on {self.display}: {detail}")


def _retryable(exc: BaseException | None) -> bool:
    if isinstance(exc, IntegrityError):
        sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
        return sqlstate == "23505" or sqlstate is None and "UNIQUE" in str(exc.orig)
    if isinstance(exc, DBAPIError):
        return getattr(getattr(exc, "orig", None), "sqlstate", None) in _RETRY_SQLSTATES
    return False
