import logging
import os
import signal
from types import FrameType
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django_q.cluster import Cluster
from django_q.management.commands.qcluster import Command as QclusterCommand

from gallery.work_resume import work_cut_short_resume

logger = logging.getLogger("gallery.work_resume")
SENTINEL_GRACE_S = 0.5  # how long a signal to the whole group takes to end the sentinel, at most


class GroupStopCluster(Cluster):
    """django-q2's cluster, which also stops when SIGTERM reaches its whole process group (systemd's
    default stop, `timeout`, `kill -- -PGID`), not only its main process. Its sentinel dies at once on
    SIGTERM (django-q2 sets the default action there), and the main process then waited for ever in
    `stop()` for the dead sentinel's answer to the stop event. Work cut short is taken up at the next
    start (gallery.work_resume) or after the queue's retry time."""

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
        name = options.get("cluster_name") or os.environ.get("Q_CLUSTER_NAME") or settings.Q_CLUSTER["name"]
        if name == settings.Q_CLUSTER["name"]:  # the interactive cluster's tasks are short and not retried
            try:
                resumed = work_cut_short_resume()
            except DatabaseError as exc:  # e.g. not migrated yet: the cluster says so itself
                logger.warning("could not look for work cut short: %s", exc)
            else:
                if resumed.resets or resumed.images:
                    logger.info("taken up again: %d reset job(s), %d waiting image(s)",
                                len(resumed.resets), len(resumed.images))
        # django-q2's handle, with the cluster above.
        settings.SECRET_KEY  # noqa: B018 - it signs tasks: fail here when it is missing
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = GroupStopCluster()
        cluster.start()
        if options.get("run_once", False):
            cluster.stop()
