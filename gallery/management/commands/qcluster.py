import logging
import os
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django_q.management.commands.qcluster import Command as QclusterCommand

from gallery.work_resume import work_cut_short_resume

logger = logging.getLogger("gallery.work_resume")


class Command(QclusterCommand):
    """django-q2's `qcluster`, which first takes up the work a stopped cluster cut short (gallery.work_resume)
    when it serves the main queue. It overrides django_q's command: gallery is listed before django_q."""

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
        super().handle(*args, **options)
