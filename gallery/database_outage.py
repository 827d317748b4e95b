"""The database out of reach (stopped, restarting, a network cut) told apart from an error of a query,
and work that waits one out rather than failing at once: a worker's task that failed in the outage's
first millisecond stayed taken by the queue until its retry time (12 minutes) with nothing running."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")
# SQLSTATEs of a server going away under a connection: admin_shutdown (a fast stop), crash_shutdown,
# cannot_connect_now (starting or stopping); class 08 is "connection exception".
SERVER_GOING_AWAY = {"57P01", "57P02", "57P03"}


def connection_lost(exception: BaseException | None) -> bool:
    """Whether `exception` is the connection failing (refused, cut, closed, the server stopping), not a
    query's own error (a statement timeout or a lock refused is an OperationalError too)."""
    if isinstance(exception, InterfaceError):  # "connection already closed"
        return True
    if not isinstance(exception, OperationalError):
        return False
    sqlstate = getattr(exception.__cause__, "sqlstate", None)  # psycopg's error, which Django's wraps
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in SERVER_GOING_AWAY


def database_reachable() -> bool:
    """Whether a new connection opens. Drops this thread's current one first: after an outage it is
    broken, and the next query connects again."""
    with contextlib.suppress(DatabaseError):
        connection.close()
    try:
        connection.ensure_connection()
    except DatabaseError:
        return False
    return True


def run_through_database_outage(work: Callable[[], T], *, wait_at_most: float, poll_seconds: float = 2.0) -> T:
    """work(); if it fails because the database is out of reach, wait (up to `wait_at_most` seconds) until
    it is back and run work() once more. Only for work that may run twice (a batch claims what is still
    pending; rolled back, nothing of the failed run stays). A longer outage raises its error as before."""
    try:
        return work()
    except (OperationalError, InterfaceError) as exc:
        if not connection_lost(exc):
            raise
        logger.warning("the database connection was lost (%s); waiting up to %.0f s for the database",
                       " ".join(str(exc).split()), wait_at_most)
        deadline = time.monotonic() + wait_at_most
        while not database_reachable():  # at once, after a restart that only broke this connection
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll_seconds)
        logger.warning("the database is reachable: running the task again")
    return work()
