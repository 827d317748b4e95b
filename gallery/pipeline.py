"""Background processing: embeddings and masks for pending images, batched through the models.

A task for one image claims up to a batch of pending images (row locks, SKIP LOCKED), so images
waiting in the queue go through the models together, in one forward pass per model per batch.
Everything a batch writes is in one transaction: a worker killed mid-batch leaves nothing behind,
and the images stay pending for the next task (or the retry of this one). Writes are upserts, so
running a task twice leaves the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Case, IntegerField, Value, When

from gallery import events
from gallery.imaging import ImageRejected, decode_image, for_models, probability_to_png
from gallery.models import Embedding, Image, Mask, ProcessingStatus
from retrieval.encoders.registry import ActiveModels, active_models, get_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchReport:
    processed: list[int]
    failed: list[int]


def _claim(*, status_field: str, first_id: int | None, batch_size: int) -> list[Image]:
    """Lock up to batch_size pending images, `first_id` first (call inside a transaction)."""
    queryset = Image.objects.select_for_update(skip_locked=True).filter(**{status_field: ProcessingStatus.PENDING})
    if first_id is not None:
        queryset = queryset.annotate(_first=Case(When(pk=first_id, then=Value(0)), default=Value(1),
                                                 output_field=IntegerField())).order_by("_first", "pk")
    else:
        queryset = queryset.order_by("pk")
    return list(queryset[:batch_size])


def _load_pictures(images: Sequence[Image], *, fail: Callable[[Image, str], None]) -> list[tuple[Image, object]]:
    loaded = []
    for image in images:
        try:
            with image.file.open("rb") as fh:
                loaded.append((image, for_models(decode_image(fh.read()).picture)))
        except FileNotFoundError:
            fail(image, "The stored file is missing.")
        except ImageRejected as exc:
            fail(image, exc.message)
    return loaded


def _run_isolating_failures(items, run_batch, fail) -> list:
    """Run the batch; if it raises, run each item alone so one bad image fails alone."""
    try:
        return run_batch(items)
    except Exception:  # noqa: BLE001 - any model error: retry one by one to find the culprit
        if len(items) == 1:
            raise
        logger.exception("batch of %d failed; retrying images one by one", len(items))
    done = []
    for item in items:
        try:
            done += run_batch([item])
        except Exception as exc:  # noqa: BLE001
            fail(item[0], f"Processing failed: {exc}")
    return done


def embed_batch(*, first_id: int | None = None, batch_size: int | None = None,
                models: ActiveModels | None = None) -> BatchReport:
    """Compute the active semantic and content embeddings for one batch of pending images."""
    models = models or active_models()
    batch_size = batch_size or settings.IMAGINAITION_BATCH_SIZE
    failed: list[int] = []
    stored: list[int] = []

    def fail(image: Image, message: str) -> None:
        image.status, image.error = ProcessingStatus.FAILED, message
        image.save(update_fields=["status", "error"])
        failed.append(image.pk)

    def run(items):
        pictures = [picture for _, picture in items]
        vectors = {key: get_model(key).encode_images(pictures) for key in (models.semantic, models.content)}
        for row, (image, _) in enumerate(items):
            for key, space in ((models.semantic, "semantic"), (models.content, "content")):
                Embedding.objects.update_or_create(image=image, space=space, model_key=key,
                                                   defaults={"vector": vectors[key][row]})
            image.status, image.error = ProcessingStatus.READY, ""
            image.save(update_fields=["status", "error"])
        return [image.pk for image, _ in items]

    with transaction.atomic():
        images = _claim(status_field="status", first_id=first_id, batch_size=batch_size)
        if not images:
            return BatchReport(processed=[], failed=[])
        stored = _run_isolating_failures(_load_pictures(images, fail=fail), run, fail)

        def announce() -> None:
            for key, space in ((models.semantic, "semantic"), (models.content, "content")):
                events.embeddings_stored.send(sender=Embedding, image_ids=stored, space=space, model_key=key)

        if stored:
            transaction.on_commit(announce)
    return BatchReport(processed=stored, failed=failed)


def segment_batch(*, first_id: int | None = None, batch_size: int | None = None,
                  models: ActiveModels | None = None) -> BatchReport:
    """Compute the active segmenter's masks for one batch of images whose masks are pending."""
    models = models or active_models()
    batch_size = batch_size or settings.IMAGINAITION_BATCH_SIZE
    failed: list[int] = []

    def fail(image: Image, message: str) -> None:
        image.masks_status, image.masks_error = ProcessingStatus.FAILED, message
        image.save(update_fields=["masks_status", "masks_error"])
        failed.append(image.pk)

    def run(items):
        segmenter = get_model(models.segmenter)
        per_image = segmenter.segment([picture for _, picture in items])
        for (image, _), masks in zip(items, per_image, strict=True):
            # Replace this segmenter's masks wholesale: a rerun leaves exactly one set.
            Mask.objects.filter(image=image, segmenter=models.segmenter).delete()
            Mask.objects.bulk_create([
                Mask(image=image, segmenter=models.segmenter, label=mask.label, class_index=mask.class_index,
                     probability_png=probability_to_png(mask.probability), area_fraction=mask.area_fraction)
                for mask in masks
            ])
            image.masks_status, image.masks_error = ProcessingStatus.READY, ""
            image.save(update_fields=["masks_status", "masks_error"])
        return [image.pk for image, _ in items]

    with transaction.atomic():
        images = _claim(status_field="masks_status", first_id=first_id, batch_size=batch_size)
        if not images:
            return BatchReport(processed=[], failed=[])
        processed = _run_isolating_failures(_load_pictures(images, fail=fail), run, fail)
    return BatchReport(processed=processed, failed=failed)


def process_all_pending(*, batch_size: int | None = None, progress: Callable[[int], None] | None = None) -> None:
    """Embed, then segment, every pending image in this process (import_folder --sync, reset)."""
    models = active_models()
    for step in (embed_batch, segment_batch):
        while True:
            report = step(batch_size=batch_size, models=models)
            done = len(report.processed) + len(report.failed)
            if not done:
                break
            if progress is not None and step is embed_batch:
                progress(done)
