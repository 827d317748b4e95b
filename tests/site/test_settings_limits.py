"""Number settings with an upper bound, or one that must stay above its minimum, are refused at start by name."""

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from imaginaition_site.env import env_number
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
], ids=["batch-size-huge", "recall-above-1", "recall-0"])
def test_a_setting_out_of_its_range_stops_a_command_in_one_line(setting, value, message):
    env = {**os.environ, setting: value, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 1
    assert done.stderr.strip() == message, done.stderr[-3000:]
