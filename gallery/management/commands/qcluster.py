import logging
import os
import queue
import signal
import time
from types import FrameType
from typing import Any

import django_q.cluster
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from django_q.brokers.orm import ORM
from django_q.cluster import Cluster, Sentinel
from django_q.models import OrmQ
from django_q.management.commands.qcluster import Command as QclusterCommand

from gallery.work_resume import work_cut_short_resume

logger = logging.getLogger("gallery.work_resume")
SENTINEL_GRACE_S = 0.5  # how long a signal to the whole group takes to end the sentinel, at most
STUCK_CHECKS = 3  # guard cycles in a row with a task waiting and the read lock held, before it is freed
LOCK_WAIT_S = 0.2  # how long a check waits for the read lock: a live holder reads a waiting task at once
# A worker killed in the middle of a task (kill -9, the out-of-memory killer): the waiting images are queued
# again at once, at most this often in this window (a picture that kills every worker that reads it must not
# kill one every few seconds: beyond it, the queue's retry time applies).
TAKE_UP_AFTER_DEATH_MAX, TAKE_UP_AFTER_DEATH_WINDOW_S = 3, 600.0
_serves_main_queue = False  # set by the command before the cluster (and its sentinel, a child process) starts


def _lock_free_for_the_dead(lock: Any) -> bool:
    """Release `lock` if it is held: called only when the one process that could hold it has died
    (multiprocessing's Lock is a semaphore without an owner: any process may release it)."""
    if lock.acquire(block=False):
        lock.release()
        return False
    lock.release()
    return True


def work_cut_short_take_up(*, occasion: str, level: int, said_when_none: bool) -> None:
    """gallery.work_resume's take-up, logged (as a cluster starts, and after a worker died mid-task)."""
    try:
        resumed = work_cut_short_resume()
    except DatabaseError as exc:  # e.g. not migrated yet: the cluster says so itself
        logger.warning("%scould not look for work cut short: %s", occasion, exc)
        return
    if resumed.resets or resumed.images or said_when_none:
        logger.log(level, "%staken up again: %d reset job(s), %d waiting image(s)", occasion,
                   len(resumed.resets), len(resumed.images))


class LockFreeingSentinel(Sentinel):
    """django-q2's sentinel, which also frees the queue locks of a process killed by SIGKILL (the kernel's
    out-of-memory killer, `kill -9`). A process waiting on a multiprocessing queue holds the queue's read
    lock, and a killed one never releases it: django-q2 started a replacement on the same queue, and the
    replacement and every other worker waited on that lock for ever (nothing was processed until a
    restart). The monitor is the result queue's only reader and the pusher the task queue's only writer:
    their locks are freed when they die. A worker is one of several readers: after an idle one died
    (a busy one holds no lock), the lock is freed once it has stayed held over several guard cycles
    while a task waits in the queue, which a living holder would have read at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.idle_worker_died = False
        self.stuck_checks = 0
        self.taken_up_after_deaths: list[float] = []
        super().__init__(*args, **kwargs)  # runs the guard loop: the attributes above come first

    def reincarnate(self, process: Any) -> None:
        died_mid_task = process in self.pool and process.timer.value > 0  # 0: its timeout, which fails the task
        if process is self.monitor and _lock_free_for_the_dead(self.result_queue._rlock):
            logger.warning("freed the result queue's read lock that the dead monitor held")
        elif process is self.pusher and self.task_queue._wlock and _lock_free_for_the_dead(self.task_queue._wlock):
            logger.warning("freed the task queue's write lock that the dead pusher held")
        elif process in self.pool and process.timer.value == -1:  # idle: maybe the one waiting in the queue
            self.idle_worker_died = True
        super().reincarnate(process)
        if died_mid_task and _serves_main_queue:
            self._take_up_after_death()

    def _take_up_after_death(self) -> None:
        """The dead worker's task is handed out again only after its retry time (12 min), and its images (its
        claims ended with its connection) waited that long unless another task came: queued again now."""
        now = time.monotonic()
        self.taken_up_after_deaths = [at for at in self.taken_up_after_deaths
                                      if now - at < TAKE_UP_AFTER_DEATH_WINDOW_S]
        if len(self.taken_up_after_deaths) >= TAKE_UP_AFTER_DEATH_MAX:
            logger.warning("a worker died in the middle of a task again (%d times in %d minutes): its work is taken "
                           "up after the queue's retry time", len(self.taken_up_after_deaths) + 1,
                           TAKE_UP_AFTER_DEATH_WINDOW_S // 60)
            return
        self.taken_up_after_deaths.append(now)
        work_cut_short_take_up(occasion="a worker died in the middle of a task: ", level=logging.WARNING,
                               said_when_none=True)

    def stop(self) -> None:
        """django-q2's stop, but the tasks the pusher had already taken from the broker (up to the queue
        limit) are handed back first: the workers then find their STOP right after the task they are on
        (they ran every fetched task first, until make run's stop timeout killed them mid-task), and the
        next cluster to start takes those tasks at once (not after their retry time)."""
        self.event_out.set()  # the pusher takes no more (django-q2's stop sets it again and waits likewise)
        # Taken out while the pusher ends: it waits to put the rest of its last fetch into a full queue, and
        # the workers took those, one after another, before it could see the stop (10 s and more).
        fetched = []
        while True:
            pusher_alive = self.pusher.is_alive()  # before the read: once it is gone, an empty read is the end
            try:  # a busy worker holds no lock; an idle one holds the read lock only while nothing waits
                fetched.append(self.task_queue.get(timeout=LOCK_WAIT_S))
            except queue.Empty:
                if not pusher_alive:
                    break
        ack_ids = [task["ack_id"] for task in fetched if isinstance(task, dict) and "ack_id" in task]
        if ack_ids and isinstance(self.broker, ORM):
            try:
                OrmQ.objects.filter(pk__in=ack_ids).update(lock=timezone.now())
            except DatabaseError:
                logger.warning("could not hand back %d fetched tasks: they are taken up after the retry time",
                               len(ack_ids), exc_info=True)
            else:
                logger.info("handed back %d fetched tasks for the next start", len(ack_ids))
        super().stop()

    def status(self) -> str:
        # django-q2's guard loop asks for the status once a cycle (to store it): its one per-cycle hook.
        if self.idle_worker_died:
            self._task_queue_lock_check()
        return str(super().status())

    def _task_queue_lock_check(self) -> None:
        lock = self.task_queue._rlock
        if lock.acquire(timeout=LOCK_WAIT_S):  # free: the dead worker did not hold it
            lock.release()
            self.idle_worker_died, self.stuck_checks = False, 0
            return
        # Stopping closes the sentinel's end of the queue right after putting one STOP in it for each worker.
        reader = self.task_queue._reader
        if not (reader.closed or reader.poll(0)):  # nothing waiting: a living worker may be the one waiting
            self.stuck_checks = 0
            return
        self.stuck_checks += 1
        if self.stuck_checks >= STUCK_CHECKS:
            lock.release()
            self.idle_worker_died, self.stuck_checks = False, 0
            logger.warning("freed the task queue's read lock that a dead worker held (tasks waited, none was read)")


class GroupStopCluster(Cluster):
    """django-q2's cluster, which also stops when SIGTERM reaches its whole process group (systemd's
    default stop, `timeout`, `kill -- -PGID`), not only its main process. Its sentinel dies at once on
    SIGTERM (django-q2 sets the default action there), and the main process then waited for ever in
    `stop()` for the dead sentinel's answer to the stop event. Work cut short is taken up at the next
    start (gallery.work_resume) or after the queue's retry time. Its sentinel frees the queue locks of
    killed processes (LockFreeingSentinel)."""

    def start(self) -> int:
        # Cluster.start spawns the sentinel by its module's name `Sentinel`: this cluster's is the one above.
        django_q.cluster.Sentinel = LockFreeingSentinel
        return int(super().start())

    def sig_handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM and self.sentinel is not None:
            self.sentinel.join(SENTINEL_GRACE_S)  # the same signal may be ending it right now
            if not self.sentinel.is_alive():
                logger.warning("the cluster's processes were stopped by the same signal (sent to its whole process "
                               "group): the tasks they were on are taken up when a cluster starts")
                self.start_event = self.stop_event = None
                return
        super().sig_handler(signum, frame)


class Command(QclusterCommand):
    """django-q2's `qcluster`, which first takes up the work a stopped cluster cut short (gallery.work_resume)
    when it serves the main queue, and stops on a SIGTERM to its whole process group (GroupStopCluster). It
    overrides django_q's command: gallery is listed before django_q."""

    help = QclusterCommand.help + " First takes up work that a stopped cluster cut short (a reset, a batch)."

    def handle(self, *args: Any, **options: Any) -> None:
        global _serves_main_queue
        name = options.get("cluster_name") or os.environ.get("Q_CLUSTER_NAME") or settings.Q_CLUSTER["name"]
        _serves_main_queue = name == settings.Q_CLUSTER["name"]
        if _serves_main_queue:  # the interactive cluster's tasks are short and not retried
            work_cut_short_take_up(occasion="", level=logging.INFO, said_when_none=False)
        # django-q2's handle, with the cluster above.
        settings.SECRET_KEY  # noqa: B018 - it signs tasks: fail here when it is missing
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = GroupStopCluster()
        cluster.start()
        if options.get("run_once", False):
            cluster.stop()
