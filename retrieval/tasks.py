"""Background tasks of the retrieval app (run by django-q2 workers: `manage.py qcluster`).
Thin: each loads what it needs by id and calls a service."""

from __future__ import annotations

import os
import socket

import torch
from django.conf import settings
from django.utils import timezone

from gallery.database_outage import run_through_database_outage
from retrieval import uploads
from retrieval.encoders.devices import model_device
from retrieval.encoders.registry import loaded_precisions
from retrieval.index_purge import deleted_vectors_purge
from retrieval.integrity import integrity_check, integrity_heal
from retrieval.pipeline import process_batch
from retrieval.status import api_time


def _outage_wait(cluster_timeout: int) -> float:
    """How long a task waits out a database outage: half its cluster's timeout (a longer outage is left to
    the queue's retry, which hands the task out again)."""
    return cluster_timeout / 2


def process_images(image_id: int) -> dict[str, list[int]]:
    """Embed a batch of pending images, this one first, then segment the same batch (with the masks'
    region vectors); after each stage, build the indexes that do not exist yet (`process_batch`).
    Through a database restart: run again once it is back (a batch claims only what is still pending)."""
    embedded, segmented = run_through_database_outage(
        lambda: process_batch(first_id=image_id), wait_at_most=_outage_wait(settings.Q_CLUSTER["timeout"]))
    return {"processed": embedded.processed, "failed": embedded.failed,
            "masks_processed": segmented.processed, "masks_failed": segmented.failed}


# Tasks queued by earlier versions (an embedding and a segmentation task per image) do the same.
def embed_images(image_id: int) -> dict[str, list[int]]:
    return process_images(image_id)


def segment_images(image_id: int) -> dict[str, list[int]]:
    return process_images(image_id)


def staged_segment(token: str) -> str | None:
    """Labels and masks of a picture a page or an API search is waiting on (the interactive cluster)."""
    timeout = settings.Q_CLUSTER["ALT_CLUSTERS"]["interactive"]["timeout"]
    return run_through_database_outage(lambda: uploads.staged_segment(token), wait_at_most=_outage_wait(timeout))


def worker_ping() -> dict[str, object]:
    """Proves a worker picked up a task: who ran it and when, with how many torch threads and on
    which device its models run (shown by the status endpoint)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "at": api_time(timezone.now()),
            "torch_threads": torch.get_num_threads(), "device": str(model_device()),
            "precision": loaded_precisions()}


def purge_deleted_from_indexes() -> list[str]:
    """Daily: index files rebuilt without the vectors of images deleted since, old tombstones removed."""
    return deleted_vectors_purge()


def rebuild_indexes() -> list[str]:
    """Heal: rebuild the active models' indexes that are missing or stale."""
    return integrity_heal(integrity_check(check_files=False))
