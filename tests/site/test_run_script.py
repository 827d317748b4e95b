"""scripts/run.sh (make run) refuses its own settings in one line before it starts anything, and its end
says whether the service stopped because it was asked to."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO


def setting(value: str | None, low: int = 0, high: int = 86400) -> subprocess.CompletedProcess:
    env = {key: val for key, val in os.environ.items() if key != "SOME_SECONDS"}
    if value is not None:
        env["SOME_SECONDS"] = value
    return subprocess.run(["bash", "-c", f"source {REPO}/scripts/settings.sh; "
                                         f"whole_number_setting SOME_SECONDS 30 {low} {high}"],
                          env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("value", "expected"), [(None, "30"), ("", "30"), (" 45 ", "45"), ("08", "8"), ("0", "0")])
def test_a_whole_number_setting_of_the_script_is_read_as_a_decimal(value, expected):
    done = setting(value)
    assert done.returncode == 0 and done.stdout.strip() == expected, done.stderr


@pytest.mark.parametrize("value", ["30s", "abc", "-1", "86401", "99999999999999999999", "1e3"])
def test_a_wrong_whole_number_setting_of_the_script_is_refused_by_name(value):
    done = setting(value)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (f"Error: SOME_SECONDS must be a whole number of at least 0 and at most 86400, "
                                   f"not '{value}'")


@pytest.mark.parametrize(("name", "value"), [("IMAGINAITION_STOP_TIMEOUT", "30s"), ("IMAGINAITION_PORT", "abc")])
def test_make_run_refuses_its_wrong_settings_before_it_starts_anything(name, value, tmp_path):
    """IMAGINAITION_STOP_TIMEOUT=30s let everything start, then made Ctrl-C stop nothing."""
    env = {**os.environ, name: value, "IMAGINAITION_VAR_DIR": str(tmp_path / "var")}
    done = subprocess.run(["bash", f"{REPO}/scripts/run.sh"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"Error: {name} must be a whole number" in done.stderr
    assert ">> " not in done.stdout and not (tmp_path / "var").exists()  # nothing installed, started or made


@pytest.mark.parametrize(("name", "value"), [("IMAGINAITION_BATCH_SIZE", "abc"), ("IMAGINAITION_WORKERS", "0")])
def test_make_run_says_a_wrong_setting_of_the_service_once_before_its_database_starts(name, value, tmp_path):
    """It was said by fetch_weights, then ">> fetch_weights failed; going on …", then again by migrate, after the
    embedded database had been started."""
    env = {**{key: val for key, val in os.environ.items() if key not in ("DATABASE_URL", "IMAGINAITION_DATABASE_NAME")},
           name: value, "IMAGINAITION_VAR_DIR": str(tmp_path / "var"), "IMAGINAITION_PGDATA": str(tmp_path / "pgdata")}
    done = subprocess.run(["bash", f"{REPO}/scripts/run.sh"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.count(f"Error: {name} must be") == 1, done.stderr[-2000:]
    assert "going on" not in done.stdout + done.stderr and not (tmp_path / "pgdata").exists()


def test_make_run_refuses_a_port_something_else_answers_on(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "IMAGINAITION_PORT": str(taken.getsockname()[1]),
               "IMAGINAITION_VAR_DIR": str(tmp_path / "var")}
        done = subprocess.run(["bash", f"{REPO}/scripts/run.sh"], env=env, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 1 and "something already answers on 127.0.0.1:" in done.stderr
    assert not (tmp_path / "var").exists()


def test_a_setup_step_that_fails_ends_make_run_without_a_stop_of_workers_it_never_started(tmp_path):
    """Its end said ">> stopping (workers finish their current task, for at most 30 s …)" with none started."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    env = {**os.environ, "IMAGINAITION_PORT": str(free), "IMAGINAITION_VAR_DIR": str(tmp_path / "var"),
           "DATABASE_URL": f"postgres://nobody:nothing@127.0.0.1:{free}/none"}  # nothing listens: migrate fails
    done = subprocess.run(["bash", f"{REPO}/scripts/run.sh"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "connection" in done.stderr.lower(), done.stderr[-2000:]
    assert "stopping (workers" not in done.stdout + done.stderr and "is running on" not in done.stdout


def processes_started_with(var_dir: str) -> list[int]:
    """Every process make run started with this IMAGINAITION_VAR_DIR: its workers and web server each run in a
    session of their own (setsid), out of reach of a signal to make run's process group."""
    mark = b"\0" + f"IMAGINAITION_VAR_DIR={var_dir}".encode() + b"\0"
    found = []
    for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if mark in b"\0" + environ.read() + b"\0":
                    found.append(pid)
        except OSError:  # ended meanwhile
            continue
    return found


def test_make_run_ends_with_an_error_status_when_its_embedded_database_dies(tmp_path):
    """The server killed (kill -9, the out-of-memory killer) left make run running: every page answered 503
    "try again in a moment" for as long as it ran, and a service manager's restart-on-failure never acted."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    env = {**{name: value for name, value in os.environ.items()
              if name not in ("DATABASE_URL", "IMAGINAITION_DATABASE_NAME")},  # its server's own database
           "IMAGINAITION_PORT": str(free), "IMAGINAITION_VAR_DIR": str(tmp_path / "var"),
           "IMAGINAITION_PGDATA": str(tmp_path / "pgdata"),  # a server of its own, not the tests'
           "IMAGINAITION_ADMIN_PASSWORD": "Run-script-test-2026", "IMAGINAITION_STOP_TIMEOUT": "5"}
    log = tmp_path / "run.log"
    with log.open("w") as output:
        run = subprocess.Popen(["bash", f"{REPO}/scripts/run.sh"], env=env, stdout=output, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "is running on" not in log.read_text():
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        postmaster = int((tmp_path / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
        os.kill(postmaster, signal.SIGKILL)
        status = run.wait(timeout=120)
    finally:
        left = processes_started_with(env["IMAGINAITION_VAR_DIR"])  # before the test's own clean-up below
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "imaginaition_site.embedded_db", "stop"], env=env, cwd=REPO,
                       capture_output=True, timeout=120)
        for pid in processes_started_with(env["IMAGINAITION_VAR_DIR"]):  # none, unless make run failed to stop them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
    said = log.read_text()
    assert status != 0, said[-3000:]
    assert f">> the embedded database (postgres, pid {postmaster}) ended (status 0): stopping the others" in said
    assert not left, said[-3000:]  # workers and web server stopped with it
