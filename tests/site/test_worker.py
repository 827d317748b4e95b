"""A task enqueued from a request is executed by a real `manage.py qcluster` process."""

import os
import time

import pytest
from django.urls import reverse

from tests.conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("save_limit", ["1000", "-1"])  # -1: no successes kept, but this one is asked for
def test_request_enqueues_a_task_that_a_real_worker_runs_and_stores(client, user, start_worker, save_limit):
    worker = start_worker(IMAGINAITION_TASK_SAVE_LIMIT=save_limit)
    client.force_login(user)

    response = client.post(reverse("api-worker-check"))
    assert response.status_code == 202
    task_id = response.json()["task_id"]

    def finished():
        body = client.get(reverse("api-worker-check-result", args=[task_id])).json()
        if worker.process.poll() is not None:
            pytest.fail(f"qcluster exited early:\n{worker.log()}")
        return body if body["done"] else None

    body = wait_for(finished, timeout=90, message=f"the worker to run the task; log:\n{worker.log()}")
    assert body["success"] is True
    assert body["result"]["pid"] != os.getpid()  # ran in another process: the worker
    assert body["result"]["at"].endswith("Z") and body["stopped"].endswith("Z")  # as created_at: "+00:00" was
    from django_q.models import Success

    assert Success.objects.filter(id=task_id, func="retrieval.tasks.worker_ping").exists()


def test_worker_check_needs_an_authenticated_user(client, db):
    assert client.post(reverse("api-worker-check")).status_code in (401, 403)


def test_each_enqueued_task_is_not_a_log_line_but_a_worker_s_work_still_is(caplog):
    import logging

    queue_log = logging.getLogger("django-q")
    with caplog.at_level(logging.INFO):
        queue_log.info("Enqueued [imaginaition] 1234")  # once per file of an import: 10,000 lines for 10,000 files
        queue_log.info("Process-1 processing images-1234 'retrieval.tasks.process_images'")
        queue_log.warning("Enqueued [imaginaition] 1235")  # not what django-q2 says at INFO: kept
    assert [record.getMessage() for record in caplog.records] == [
        "Process-1 processing images-1234 'retrieval.tasks.process_images'", "Enqueued [imaginaition] 1235"]


@pytest.mark.django_db
def test_a_worker_check_result_shows_pings_only_by_their_id(client, user):
    from django.utils import timezone
    from django_q.models import Task

    now = timezone.now()
    for task_id, name, group in [("a" * 32, "images-7", "images"), ("b" * 32, "worker-check", "worker-check"),
                                 ("c" * 32, "worker-check", "worker-check")]:
        Task.objects.create(id=task_id, name=name, func="f", group=group, started=now, stopped=now, success=True,
                            result={"secret": task_id})
    client.force_login(user)

    def read(task_id: str) -> dict:
        response = client.get(reverse("api-worker-check-result", args=[task_id]))
        assert response.status_code == 200  # two pings share a name: that used to be a 500
        return response.json()

    assert read("a" * 32) == {"done": False}  # another kind of task: not shown
    assert read("images-7") == {"done": False} and read("worker-check") == {"done": False}  # names are not ids
    assert read("b" * 32)["result"] == {"secret": "b" * 32}
    assert read("b" * 32)["stopped"] == now.isoformat().replace("+00:00", "Z")  # UTC, as every time the API writes


@pytest.mark.django_db
def test_worker_checks_are_limited_per_user_with_a_clear_429(client, user, django_user_model):
    from django.core.cache import caches
    from django.db import connection
    from django_q.models import OrmQ

    caches["shared"].clear()  # the throttle's history lives in the shared cache
    client.force_login(user)
    answers = [client.post(reverse("api-worker-check")) for _ in range(10)]
    caches["default"].clear()  # another web process or host: its own memory holds none of those ten
    answers.append(client.post(reverse("api-worker-check")))
    assert [answer.status_code for answer in answers] == [202] * 10 + [429]  # counted once for the service
    assert "throttled" in answers[-1].json()["detail"]
    assert OrmQ.objects.count() == 10  # the refused one queued nothing
    with connection.cursor() as cursor:  # the count is a row in the database that every process reads
        cursor.execute("SELECT count(*) FROM imaginaition_shared_cache WHERE cache_key LIKE %s",
                       ["%throttle_worker_check%"])
        assert cursor.fetchone()[0] == 1
    other = django_user_model.objects.create_user("other-pinger", password="Another-pass-123")
    client.force_login(other)
    assert client.post(reverse("api-worker-check")).status_code == 202  # per user, not for everyone


@pytest.mark.parametrize("text, accepted", [("10/minute", True), ("3/s", True), ("100/day", True), ("", True),
                                            ("abc", False), ("10", False), ("ten/minute", False), ("10/week", False)])
def test_the_worker_check_rate_setting_is_read_or_refused_by_name(monkeypatch, text, accepted):
    from django.core.exceptions import ImproperlyConfigured

    from imaginaition_site.env import env_rate

    monkeypatch.setenv("IMAGINAITION_WORKER_CHECK_RATE", text)
    if accepted:
        assert env_rate("IMAGINAITION_WORKER_CHECK_RATE", "10/minute") == (text or "10/minute")
    else:
        with pytest.raises(ImproperlyConfigured, match=f"IMAGINAITION_WORKER_CHECK_RATE must be .* not '{text}'"):
            env_rate("IMAGINAITION_WORKER_CHECK_RATE", "10/minute")


def test_a_cluster_stops_when_sigterm_reaches_its_whole_process_group(start_worker):
    """systemd's default stop (every process of the service), `timeout` and `kill -- -PGID` send SIGTERM
    to the sentinel and workers too: the sentinel died at once, and the main process waited for it for
    ever."""
    import signal
    import subprocess

    worker = start_worker()
    wait_for(lambda: "running." in worker.log(), timeout=90, message=f"the cluster to run; log:\n{worker.log()}")
    os.killpg(worker.process.pid, signal.SIGTERM)
    try:
        worker.process.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        pytest.fail(f"the cluster hung after SIGTERM to its process group; log:\n{worker.log()}")

    def group_gone() -> bool:
        try:
            os.killpg(worker.process.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(group_gone, timeout=15, message="every process of the cluster to end")
    assert "stopped by the same signal" in worker.log()


@pytest.mark.django_db(transaction=True)
def test_worker_checks_sent_at_once_are_counted_one_by_one(django_user_model):
    """DRF reads the count, then writes it back: 30 requests sent at once passed a limit of 10 27 times."""
    import threading
    from types import SimpleNamespace

    from django.core.cache import caches
    from django.db import connections

    from gallery.api import SharedScopedRateThrottle
    from tests.conftest import run_in_threads

    caches["shared"].clear()
    user = django_user_model.objects.create_user("burst", password="Burst-pass-123")
    view = SimpleNamespace(throttle_scope="worker_check")
    start, allowed, lock = threading.Barrier(20), [], threading.Lock()

    def ask() -> None:
        try:
            start.wait(10)
            answer = SharedScopedRateThrottle().allow_request(SimpleNamespace(user=user, META={}), view)
            with lock:
                allowed.append(answer)
        finally:
            connections.close_all()

    run_in_threads(ask, 20)
    assert len(allowed) == 20 and allowed.count(True) == 10  # the rate: 10 a minute
    caches["shared"].clear()


def test_a_cluster_goes_on_working_after_its_idle_processes_are_killed(start_worker):
    """SIGKILL (the kernel's out-of-memory killer, `kill -9`) of an idle worker: it was waiting for a task
    while holding the task queue's read lock, which no process then released: the replacement and every
    other worker waited on it for ever (nothing was processed until a restart). The monitor (the result
    queue's only reader) and the pusher (the task queue's only writer) hold their queue's lock alike."""
    import signal
    import subprocess

    from django_q.tasks import async_task, result

    worker = start_worker(IMAGINAITION_WORKERS="2")

    def answered(task_id: str):
        if worker.process.poll() is not None:
            pytest.fail(f"qcluster exited early:\n{worker.log()}")
        return result(task_id) is not None

    first = async_task("math.floor", 2.5)
    wait_for(lambda: answered(first), timeout=90, message=f"the cluster's first task; log:\n{worker.log()}")
    wait_for(lambda: worker.log().count("ready for work at") >= 2, timeout=30, message="both workers to idle")
    children = lambda pid: [int(child) for child in subprocess.run(  # noqa: E731 - a one-line helper
        ["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    [sentinel] = children(worker.process.pid)
    killed = children(sentinel)  # pusher, monitor and both workers, all idle: one worker holds the read lock
    assert len(killed) == 4
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: worker.log().count("reincarnated") >= 4, timeout=30, message=f"replacements; log:\n{worker.log()}")

    for number in (3.5, 4.5):
        task_id = async_task("math.floor", number)
        wait_for(lambda: answered(task_id), timeout=60,
                 message=f"a task after the idle processes were killed; log:\n{worker.log()}")
        assert result(task_id) == int(number)
    assert "freed the" in worker.log()


def test_a_cluster_whose_idle_worker_was_killed_stops_cleanly_with_nothing_queued(start_worker):
    """Killed while idle, nothing queued afterwards (the lock check still pending): a stop (Ctrl-C) then
    ended the sentinel on a traceback ("handle is closed": the stop had closed the queue it checked)."""
    import signal
    import subprocess

    worker = start_worker(IMAGINAITION_WORKERS="2")
    wait_for(lambda: worker.log().count("ready for work at") >= 2, timeout=90, message=f"workers; log:\n{worker.log()}")
    [sentinel] = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(worker.process.pid)], capture_output=True,
                                                     text=True).stdout.split()]
    workers = subprocess.run(["pgrep", "-P", str(sentinel)], capture_output=True, text=True).stdout.split()
    log_before = worker.log()
    for pid in workers:  # pusher and monitor too: every idle process
        os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: worker.log().count("reincarnated") >= len(workers), timeout=30, message="replacements")
    assert "reincarnated" not in log_before
    os.kill(worker.process.pid, signal.SIGINT)
    worker.process.wait(60)
    assert "Traceback" not in worker.log() and "has stopped" in worker.log(), worker.log()


def test_a_stopped_cluster_finishes_the_task_it_is_on_and_hands_back_the_ones_it_had_fetched(start_worker):
    """README: "workers first finish the task they are on". They went on through every task the pusher had
    fetched (up to the queue limit) until make run's stop timeout killed them mid-task, and those tasks
    waited their retry time (12 minutes) before a new cluster could take them. More tasks than the queue
    holds: the pusher waits to put the rest of its last fetch, and the worker took those before it ended."""
    import signal

    from django.conf import settings
    from django.utils import timezone
    from django_q.models import OrmQ, Success
    from django_q.tasks import async_task

    queued = settings.Q_CLUSTER["queue_limit"] + settings.Q_CLUSTER["bulk"]
    for _ in range(queued):
        async_task("time.sleep", 1)
    worker = start_worker(IMAGINAITION_WORKERS="1")
    wait_for(lambda: OrmQ.objects.filter(lock__gt=timezone.now()).count() == queued, timeout=90, interval=0.05,
             message=f"the cluster to fetch the tasks; log:\n{worker.log()}")  # and the queue full
    worker.process.send_signal(signal.SIGTERM)  # what make run's Ctrl-C sends the cluster
    worker.process.wait(60)
    assert Success.objects.filter(func="time.sleep").count() <= 3, worker.log()[-3000:]  # the one it was on
    waiting = list(OrmQ.objects.values_list("lock", flat=True))
    assert len(waiting) >= queued - 3 and all(lock <= timezone.now() for lock in waiting), worker.log()[-3000:]
    assert "handed back" in worker.log()


def test_a_worker_killed_in_the_middle_of_a_task_has_the_waiting_images_queued_again_at_once(start_worker, media_root):
    """Its task is handed out again only after the queue's retry time (12 min): the images it had claimed waited
    that long, the other workers idle, unless another task happened to come."""
    import signal
    import subprocess

    from django.utils import timezone
    from django_q.models import OrmQ
    from django_q.tasks import async_task

    from gallery.models import Image
    from tests.gallery.factories import make_image

    worker = start_worker(IMAGINAITION_WORKERS="1", IMAGINAITION_MODEL_PROFILE="offline",
                          IMAGINAITION_MEDIA_ROOT=str(media_root))
    wait_for(lambda: "ready for work at" in worker.log(), timeout=90, message=f"the worker; log:\n{worker.log()}")
    async_task("time.sleep", 300)  # the task the worker is killed on
    wait_for(lambda: OrmQ.objects.filter(lock__gt=timezone.now()).exists(), timeout=30, interval=0.1,
             message=f"the cluster to fetch the task; log:\n{worker.log()}")
    time.sleep(2)  # taken from the cluster's queue and started
    # Waiting images with no task queued for them: as a killed batch leaves its claimed images.
    waiting = [make_image(color=(60 * i, 90, 30), name=f"claimed{i}.png", status="pending").pk for i in range(2)]
    [sentinel] = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(worker.process.pid)], capture_output=True,
                                                     text=True).stdout.split()]
    for pid in subprocess.run(["pgrep", "-P", str(sentinel)], capture_output=True, text=True).stdout.split():
        os.kill(int(pid), signal.SIGKILL)  # the busy worker (with the pusher and the monitor)
    wait_for(lambda: "a worker died in the middle of a task: taken up again: 0 reset job(s), 2 waiting image(s)"
             in worker.log(), timeout=30, message=f"the work to be queued again; log:\n{worker.log()}")
    wait_for(lambda: set(Image.objects.filter(pk__in=waiting).values_list("status", flat=True)) == {"ready"},
             timeout=180, interval=1, message=f"the waiting images to be processed; log:\n{worker.log()}")


@pytest.mark.django_db
def test_work_is_taken_up_after_a_workers_death_only_a_few_times_in_a_while(caplog):
    """A picture that kills every worker reading it (the out-of-memory killer) must not kill one every few
    seconds: after a few quick take-ups, the queue's retry time applies."""
    import logging

    from gallery.management.commands.qcluster import TAKE_UP_AFTER_DEATH_MAX, LockFreeingSentinel

    sentinel = LockFreeingSentinel.__new__(LockFreeingSentinel)  # its logic only: no processes
    sentinel.taken_up_after_deaths = []
    with caplog.at_level(logging.INFO, logger="gallery.work_resume"):
        for _ in range(TAKE_UP_AFTER_DEATH_MAX + 1):
            sentinel._take_up_after_death()
    assert caplog.text.count("died in the middle of a task: taken up again") == TAKE_UP_AFTER_DEATH_MAX
    assert "died in the middle of a task again (4 times in 10 minutes): its work is taken up after the queue's " \
           "retry time" in caplog.text
    sentinel.taken_up_after_deaths = [at - 601 for at in sentinel.taken_up_after_deaths]  # the window has passed
    sentinel._take_up_after_death()
    assert caplog.text.count("died in the middle of a task: taken up again") == TAKE_UP_AFTER_DEATH_MAX + 1
