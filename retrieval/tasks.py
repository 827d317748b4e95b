"""Background tasks of the retrieval app (run by django-q2 workers: `manage.py qcluster`).
Thin: each loads what it needs by id and calls a service."""

from __future__ import annotations

import os
import socket

from django.utils import timezone

from retrieval.integrity import integrity_check, integrity_heal
from retrieval.pipeline import BatchReport, embed_batch, segment_batch


def _summary(report: BatchReport) -> dict[str, list[int]]:
    return {"processed": report.processed, "failed": report.failed}


def embed_images(image_id: int) -> dict[str, list[int]]:
    """Embed a batch of pending images, this one first."""
    return _summary(embed_batch(first_id=image_id))


def segment_images(image_id: int) -> dict[str, list[int]]:
    """Segment a batch of images whose masks are pending, this one first."""
    return _summary(segment_batch(first_id=image_id))


def worker_ping() -> dict[str, object]:
    """Proves a worker picked up a task: who ran it and when (shown by the status endpoint)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "at": timezone.now().isoformat()}


def rebuild_indexes() -> list[str]:
    """Heal: rebuild the active models' indexes that are missing or stale."""
    return integrity_heal(integrity_check(check_files=False))
