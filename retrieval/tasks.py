"""Background tasks of the retrieval app (run by django-q2 workers: `manage.py qcluster`)."""

from __future__ import annotations

import os
import socket

from django.utils import timezone


def worker_ping() -> dict:
    """Proves a worker picked up a task: who ran it and when (shown by the status endpoint)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "at": timezone.now().isoformat()}


def rebuild_indexes() -> list[str]:
    """Heal: rebuild the active models' indexes that are missing or stale."""
    from retrieval.integrity import integrity_check, integrity_heal

    return integrity_heal(integrity_check(check_files=False))
