"""scripts/stop.sh, how `make run` stops what it started: SIGTERM, a bounded wait, then the rest of each
process tree killed (a worker busy with a long task once held Ctrl-C for as long as the task ran)."""

import subprocess
import time

from tests.conftest import REPO

BUSY_WORKER = """bash -c 'trap "" TERM INT; sleep 300 & echo "grandchild $!"; wait'"""  # ignores SIGTERM
IDLE_WORKER = """bash -c 'sleep 300 & trap "kill $!; exit 0" TERM; echo "grandchild $!"; wait'"""  # stops its child

SCRIPT = f"""
set -euo pipefail
source {REPO}/scripts/stop.sh
$WORKER &
stubborn=$!
sleep 300 &                                                               # a process that stops when asked
polite=$!
sleep 0.5
echo "children $stubborn $polite"
stop_processes "$1" "$stubborn" "$polite"
echo "stopped after $SECONDS s"
"""


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie no one has reaped yet is gone too
    except FileNotFoundError:
        return True


def test_stop_asks_then_waits_at_most_the_timeout_then_kills_whole_trees():
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", SCRIPT.replace("$WORKER", BUSY_WORKER), "stop-test", "2"],
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    stubborn, polite = map(int, lines["children"].split())
    grandchild = int(lines["grandchild"])

    assert f">> process {stubborn} still busy: stopped now" in result.stdout
    assert f">> process {polite} still busy" not in result.stdout  # it stopped when asked
    assert 2 <= elapsed < 20  # waited for the busy one, but not for its 300 s task
    deadline = time.monotonic() + 5
    while not all(map(gone, (stubborn, polite, grandchild))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(map(gone, (stubborn, polite, grandchild)))  # the busy one's own child too


def test_a_process_that_stops_when_asked_is_not_waited_for():
    result = subprocess.run(["bash", "-c", SCRIPT.replace("$WORKER", IDLE_WORKER), "stop-test", "30"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "still busy" not in result.stdout
    assert int(result.stdout.rsplit("stopped after ", 1)[1].split()[0]) < 10  # not the 30 s allowed


def test_what_a_role_leaves_in_its_process_group_when_its_first_process_dies_is_stopped_too():
    """A cluster whose sentinel was killed left its workers and monitor running (orphans, 1 GB each), and
    a second `make run` started beside them."""
    script = f"""
    set -euo pipefail
    source {REPO}/scripts/stop.sh
    setsid bash -c 'sleep 300 & echo "orphan $!"; exec sleep 300' &   # a role: its own group, a child in it
    role=$!
    sleep 0.5
    kill -KILL "$role"  # its first process dies; the child lives on
    stop_processes 5 "$role"
    """
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    orphan = int(result.stdout.split("orphan ", 1)[1].split()[0])
    assert "processes left behind by" in result.stdout
    deadline = time.monotonic() + 5
    while not gone(orphan) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(orphan)
