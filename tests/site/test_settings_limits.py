"""Number settings with an upper bound, or one that must stay above its minimum, switches that are neither on
nor off, and settings that contradict each other are refused at start by name; blank ones are the default."""

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from pathlib import Path

from imaginaition_site.env import env_bool, env_list, env_number, env_path
from tests.conftest import REPO


@pytest.mark.parametrize(("value", "expected"), [
    ("4096", 4096), ("1", 1), ("4097", "a whole number of at least 1 and at most 4096, not '4097'"),
    ("99999999999999999999", "at most 4096"),
])
def test_a_number_setting_may_have_a_maximum(monkeypatch, value, expected):
    monkeypatch.setenv("IMAGINAITION_SOMETHING", value)
    if isinstance(expected, str):
        with pytest.raises(ImproperlyConfigured, match=f"^IMAGINAITION_SOMETHING must be .*{expected}"):
            env_number("IMAGINAITION_SOMETHING", 7, minimum=1, maximum=4096)
    else:
        assert env_number("IMAGINAITION_SOMETHING", 7, minimum=1, maximum=4096) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("1", 1.0), ("0.5", 0.5), ("0", "more than 0 and at most 1, not '0'"), ("-0.1", "more than 0"),
    ("1.5", "at most 1, not '1.5'"), ("inf", "at most 1"), ("nan", "a number"),
])
def test_a_number_setting_may_have_to_stay_above_its_minimum(monkeypatch, value, expected):
    monkeypatch.setenv("IMAGINAITION_SOMETHING", value)
    if isinstance(expected, str):
        with pytest.raises(ImproperlyConfigured, match=f"^IMAGINAITION_SOMETHING must be .*{expected}"):
            env_number("IMAGINAITION_SOMETHING", 0.97, minimum=0, exclusive_minimum=True, maximum=1, whole=False)
    else:
        assert env_number("IMAGINAITION_SOMETHING", 0.97, minimum=0, exclusive_minimum=True, maximum=1,
                          whole=False) == expected


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity", "nan"])
def test_a_number_setting_without_a_maximum_is_still_finite(monkeypatch, value):
    """`inf` passed every setting without a maximum (IMAGINAITION_INDEX_SYNC_SECONDS=inf: never in sync)."""
    monkeypatch.setenv("IMAGINAITION_SOMETHING", value)
    with pytest.raises(ImproperlyConfigured, match=f"^IMAGINAITION_SOMETHING must be a number of at least 0, "
                                                   f"not '{value}'"):
        env_number("IMAGINAITION_SOMETHING", 10.0, minimum=0, whole=False)


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("IMAGINAITION_BATCH_SIZE", "99999999999999999999",
     "Error: IMAGINAITION_BATCH_SIZE must be a whole number of at least 1 and at most 4096, "
     "not '99999999999999999999'"),
    ("IMAGINAITION_ANN_TARGET_RECALL", "1.5",
     "Error: IMAGINAITION_ANN_TARGET_RECALL must be a number of more than 0 and at most 1, not '1.5'"),
    ("IMAGINAITION_ANN_TARGET_RECALL", "0",
     "Error: IMAGINAITION_ANN_TARGET_RECALL must be a number of more than 0 and at most 1, not '0'"),
    ("IMAGINAITION_HTTPS", "enabled",  # read as off: no secure cookies, no HSTS, without a word
     "Error: IMAGINAITION_HTTPS must be one of 1, true, yes, on (on) or 0, false, no, off (off), not 'enabled'"),
    ("IMAGINAITION_REGION_MIN_AREA", "2",  # a share of the picture above 1: no region would ever be embedded
     "Error: IMAGINAITION_REGION_MIN_AREA must be a number of at least 0 and at most 1, not '2'"),
    ("IMAGINAITION_TASK_TIMEOUT", "900",  # above the retry (720): django-q2 only warned
     "Error: IMAGINAITION_TASK_RETRY (720) must be more than IMAGINAITION_TASK_TIMEOUT (900): a task still "
     "running at the retry time is handed out again and runs twice"),
    ("Q_CLUSTER_NAME", "interactve",  # a cluster on a queue nobody fills: uploads never got their labels
     "Error: Q_CLUSTER_NAME must be unset (the main workers) or one of interactive, not 'interactve'"),
    ("Q_CLUSTER_NAME", "interactive ",  # django-q2 reads it with its space: a queue of its own too
     "Error: Q_CLUSTER_NAME must be unset (the main workers) or one of interactive, not 'interactive '"),
], ids=["batch-size-huge", "recall-above-1", "recall-0", "https-word", "region-area-above-1", "timeout-over-retry",
        "cluster-name-typo", "cluster-name-space"])
def test_a_setting_out_of_its_range_stops_a_command_in_one_line(setting, value, message):
    env = {**os.environ, setting: value, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 1
    assert done.stderr.strip() == message, done.stderr[-3000:]


@pytest.mark.parametrize(("value", "expected"), [("", False), ("  ", False), ("ON", True), ("yes", True),
                                                 ("0", False), ("Off", False), ("enabled", None), ("2", None)])
def test_a_switch_is_on_or_off_or_refused(monkeypatch, value, expected):
    monkeypatch.setenv("IMAGINAITION_SWITCH", value)
    if expected is None:
        with pytest.raises(ImproperlyConfigured, match=f"^IMAGINAITION_SWITCH must be one of .*not '{value}'"):
            env_bool("IMAGINAITION_SWITCH", False)
    else:
        assert env_bool("IMAGINAITION_SWITCH", False) is expected


def test_a_blank_folder_or_host_list_is_the_default_not_the_working_folder_or_nothing(monkeypatch):
    """IMAGINAITION_VAR_DIR= made a secret key, media and indexes in whatever folder a process started in;
    DJANGO_ALLOWED_HOSTS= passed the checks and refused every request."""
    monkeypatch.setenv("IMAGINAITION_SOME_DIR", " ")
    assert env_path("IMAGINAITION_SOME_DIR", Path("/srv/default")) == Path("/srv/default")
    monkeypatch.setenv("IMAGINAITION_SOME_DIR", "~/photos")
    assert env_path("IMAGINAITION_SOME_DIR", Path("/srv/default")) == Path.home() / "photos"
    monkeypatch.setenv("SOME_HOSTS", "")
    assert env_list("SOME_HOSTS", "localhost,127.0.0.1") == ["localhost", "127.0.0.1"]


@pytest.mark.parametrize("setting, value, message", [
    ("IMAGINAITION_BATCH_SIZE", "abc", "IMAGINAITION_BATCH_SIZE must be a whole number of at least 1 and at most 4096, "
                                       "not 'abc'"),
    # read when the web process names its models and device, after Django's setup: a traceback of 19 frames
    ("IMAGINAITION_DEVICE", "tpu", "IMAGINAITION_DEVICE must be one of auto, cpu, cuda, mps"),
])
def test_the_web_role_refuses_a_wrong_setting_in_one_line_and_stops(setting, value, message):
    """The documented web command (gunicorn) printed a traceback of 73 lines; with a plain exit status it
    would start its worker again and again."""
    env = {**os.environ, setting: value, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "imaginaition_site.wsgi:application", "--bind",
                           "127.0.0.1:0", "--workers", "1"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3 and "Worker failed to boot" in done.stderr
    assert any(line.startswith(f"Error: {message}") for line in done.stderr.splitlines()), done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_an_error_answer_to_a_request_with_a_body_asks_gunicorn_to_close_the_connection():
    """gunicorn drops a kept-alive connection past 64 KiB of unread body after saying "keep-alive"; only its
    Response.force_close() makes it say "close" (tests/test_multihost.py checks it on a real gunicorn)."""
    from imaginaition_site.unread_bodies import close_after_refused_bodies

    class GunicornResponse:  # what gunicorn passes as start_response: its Response's bound method
        def __init__(self):
            self.closed = False

        def force_close(self):
            self.closed = True

        def start_response(self, status, headers, exc_info=None):
            return lambda data: None

    def answering(status):
        return close_after_refused_bodies(lambda environ, start: [start(status, [])] and [b""])

    cases = [("401 Unauthorized", {"CONTENT_LENGTH": "300000"}, True),
             ("413 Request Entity Too Large", {"CONTENT_LENGTH": "9"}, True),
             ("400 Bad Request", {"HTTP_TRANSFER_ENCODING": "chunked"}, True),
             ("201 Created", {"CONTENT_LENGTH": "300000"}, False),
             ("404 Not Found", {"CONTENT_LENGTH": "0"}, False),
             ("404 Not Found", {}, False)]
    for status, environ, closes in cases:
        response = GunicornResponse()
        answering(status)(environ, response.start_response)
        assert response.closed is closes, (status, environ)
    answering("401 Unauthorized")({"CONTENT_LENGTH": "5"}, lambda status, headers, exc_info=None: None)  # runserver
