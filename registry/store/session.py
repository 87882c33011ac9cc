"""One session scope: commit on success, roll back on any error, driver errors as DatabaseError.

Write scopes on SQLite begin with `BEGIN IMMEDIATE` (see `engine.py`), so writers queue on the
busy timeout instead of failing. `run_write` runs a unit of work again when running it again is
what fixes the failure:

- a race on PostgreSQL (unique violation, serialization failure, deadlock): at once, up to
  `MAX_ATTEMPTS` times; the retry then finds the other writer's row (insert-or-get);
- a lost server connection (restart, crash, network): after a backoff, until
  `REGISTRY_DB_RETRY_SECONDS` (default 30) have passed since the unit of work began; each
  reconnect waits in `engine.py` within the same bound. Then a one-line `DatabaseError`.

A connection lost during COMMIT leaves the outcome unknown, and running the work again could
record it twice (a second run row). So on PostgreSQL the transaction id is read just before
COMMIT, and after the reconnect `txid_status` says whether it committed: if it did, the result
is returned as it is; only an aborted transaction is run again. SQLite has no connection to
lose, and its errors are never retried here (a locked database already waited the busy timeout).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from registry.errors import DatabaseError, RegistryError

from .engine import (
    BEGIN_OPTION,
    RETRY_ENV_VAR,
    backoff_delays,
    connect_deadline,
    retry_seconds,
)

T = TypeVar("T")

# SQLSTATEs after which the same unit of work may succeed when run again at once.
_RACE_SQLSTATES = {"23505", "40001", "40P01"}
# Server going away or not taking connections: admin/crash shutdown, starting up, too many clients.
_CONNECTION_SQLSTATES = {"57P01", "57P02", "57P03", "53300"}
MAX_ATTEMPTS = 5


class OutcomeUnknown(DatabaseError):
    """A COMMIT lost its connection and the server could not say in time whether it landed."""


class SessionFactory:
    """Read and write sessions on one engine."""

    def __init__(self, engine: Engine, *, display: str):
        self.engine = engine
        self.display = display
        self.server = engine.dialect.name != "sqlite"
        self.retry_seconds = retry_seconds() if self.server else 0.0
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
            _rollback(session)
            raise
        except SQLAlchemyError as exc:
            _rollback(session)
            raise self.translate(exc) from exc
        except BaseException:
            _rollback(session)
            raise
        finally:
            session.close()

    def run_write(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` in a write transaction, retrying as the module doc says; returns its result.

        Raises `DatabaseError` when the failure is not retryable or the retry bound has passed,
        and `RegistryError`s that `work` raises.
        """
        deadline = time.monotonic() + self.retry_seconds
        token = connect_deadline.set(deadline)
        try:
            return self._run_until(work, deadline)
        finally:
            connect_deadline.reset(token)

    def _run_until(self, work: Callable[[Session], T], deadline: float) -> T:
        delays = backoff_delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._write_once(work, deadline)
            except DatabaseError as exc:
                cause = exc.__cause__
                if isinstance(exc, OutcomeUnknown):
                    raise
                if _race(cause) and attempt < MAX_ATTEMPTS:
                    time.sleep(0.01 * attempt)
                    continue
                if not (self.server and _connection_lost(cause)):
                    raise
                delay = next(delays)
                if time.monotonic() + delay > deadline:
                    raise self._gave_up(cause) from cause
                time.sleep(delay)

    def _write_once(self, work: Callable[[Session], T], deadline: float) -> T:
        xid = None
        try:
            with self.scope(write=True) as session:
                result = work(session)
                if self.server:
                    session.flush()
                    xid = session.scalar(text("SELECT txid_current_if_assigned()"))
            return result
        except DatabaseError as exc:
            # xid is read after the work, so only the COMMIT can have lost the connection here.
            lost = exc.__cause__
            if xid is not None and _connection_lost(lost) and self._committed(xid, deadline, lost):
                return result
            raise

    def _committed(self, xid: int, deadline: float, lost: SQLAlchemyError) -> bool:
        """Whether transaction `xid`, whose COMMIT lost its connection, committed (asked on a new one)."""
        delays = backoff_delays()
        while True:
            try:
                with self.engine.connect() as connection:
                    status = connection.scalar(text("SELECT txid_status(:xid)"), {"xid": xid})
            except SQLAlchemyError:
                status = "unreachable"
            if status in ("committed", "aborted", None):  # None: too old to tell, which a lost COMMIT is not
                return status == "committed"
            delay = next(delays)
            if time.monotonic() + delay > deadline:  # still in progress, or the server is still away
                raise OutcomeUnknown(
                    f"lost the connection to {self.display} during COMMIT and could not learn whether the "
                    f"write landed within {self.retry_seconds:g} s: {_detail(lost)}",
                    hint="look the record up before writing it again",
                ) from lost
            time.sleep(delay)

    def _gave_up(self, exc: BaseException | None) -> DatabaseError:
        return DatabaseError(
            f"lost the connection to {self.display} and could not reconnect within {self.retry_seconds:g} s: "
            f"{_detail(exc)}",
            hint=f"check that the server is up; {RETRY_ENV_VAR} sets how long to keep retrying",
        )

    def translate(self, exc: SQLAlchemyError) -> DatabaseError:
        """The `DatabaseError` a user sees for a driver error (one line plus a hint)."""
        detail = _detail(exc)
        code = str(getattr(getattr(exc, "orig", None), "sqlite_errorname", ""))
        if isinstance(exc, OperationalError) and "locked" in detail:
            return DatabaseError(
                f"database {self.display} stayed locked: {detail}",
                hint="another process held the write lock longer than the busy timeout; retry",
            )
        if code.startswith("SQLITE_READONLY") or "readonly database" in detail:
            return DatabaseError(
                f"database {self.display} is read-only: {detail}",
                hint="the file, its directory or its filesystem is not writable by this user; reads still work",
            )
        if code == "SQLITE_FULL" or "disk is full" in detail or "No space left" in detail:
            return DatabaseError(
                f"database {self.display} is out of disk space: {detail}",
                hint="free space on its filesystem and retry; nothing of this write was kept",
            )
        if code.startswith("SQLITE_IOERR"):
            return DatabaseError(
                f"I/O error on database {self.display}: {detail}",
                hint="the disk may be full, over a quota or file size limit, or failing; nothing of this write was kept",
            )
        if isinstance(exc, IntegrityError):
            return DatabaseError(f"write to {self.display} violated a constraint: {detail}")
        if self.server and _connection_lost(exc):
            return DatabaseError(f"lost the connection to {self.display}: {detail}", hint="check the server and retry")
        return DatabaseError(f"database error on {self.display}: {detail}")


def _rollback(session: Session) -> None:
    # A rollback on a dead connection fails too; the server has already discarded the transaction.
    try:
        session.rollback()
    except SQLAlchemyError:
        pass


def _detail(exc: BaseException | None) -> str:
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def _sqlstate(exc: BaseException | None) -> str | None:
    return getattr(getattr(exc, "orig", None), "sqlstate", None)


def _race(exc: BaseException | None) -> bool:
    if isinstance(exc, IntegrityError):
        sqlstate = _sqlstate(exc)
        return sqlstate == "23505" or sqlstate is None and "UNIQUE" in str(exc.orig)
    return isinstance(exc, DBAPIError) and _sqlstate(exc) in _RACE_SQLSTATES


def _connection_lost(exc: BaseException | None) -> bool:
    """A server connection that broke or could not be made (callers ask only for server databases)."""
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = _sqlstate(exc)
    if exc.connection_invalidated or sqlstate in _CONNECTION_SQLSTATES or (sqlstate or "").startswith("08"):
        return True
    # psycopg reports a failed connection attempt without a SQLSTATE.
    return isinstance(exc, OperationalError) and sqlstate is None
