"""scripts/run.sh (make run) refuses its own settings in one line before it starts anything, and its end
says whether the service stopped because it was asked to."""

import os
import socket
import subprocess

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
