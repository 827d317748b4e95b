"""Processing: embeddings and masks for the gallery's pending images, batched through the models.

A task for one image claims up to a batch of pending images, so images waiting in the queue go
through the models together, in one forward pass per model per batch. It embeds the batch and
writes the vectors (the images are searchable from then on), then segments the same images from the
same decoded pictures: each file is read once, and models built on one network pass a picture once.
Claims are PostgreSQL session advisory locks, one per (kind of work, image): embedding and segmentation of the same
image never block each other, two workers never take the same image, and a worker that dies
drops its connection and with it its claims. Models run outside any transaction; the results are
written in one short transaction (rows locked in id order, so two writers cannot deadlock). A
worker killed at any point leaves nothing half-written, and the images stay pending for the next
task or the retry of this one. Writes are upserts: running a task twice leaves the same rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef, Q
from django_q.tasks import async_task
from PIL import Image as PILImage

from gallery.imaging import ImageRejected, picture_for_models, png_to_probability, probability_to_png
from gallery.models import Image, Mask, ProcessingStatus
from gallery.services import Progress
from gallery.storage import STORAGE_ERRORS, storage_failure_reason
from gallery.storage_check import storage_root_check, storage_settings_named
from retrieval.encoders.base import SoftMask, shared_passes
from retrieval.encoders.devices import batch_size as device_batch_size
from retrieval.encoders.devices import cpu_threads
from retrieval.encoders.registry import ActiveModels, WeightsUnreadable, active_models, get_model
from retrieval.helper_threads import map_on_threads
from retrieval.integrity import missing_indexes_build
from retrieval.models import DeletedMask, Embedding, RegionEmbedding
from retrieval.regions import large_enough_for_a_region, region_picture
from retrieval.serving import keys_in_use
from retrieval.spaces import Space
from retrieval.work_locks import claim_key

logger = logging.getLogger(__name__)

Loaded = tuple[Image, PILImage.Image]  # an image and the picture the models see


def processing_enqueue(image_ids: Sequence[int]) -> None:
    """Queue each image's processing for the workers (`process_batch` with the image first)."""
    for image_id in image_ids:
        async_task("retrieval.tasks.process_images", image_id, task_name=f"process-{image_id}", group="process")


@dataclass(frozen=True)
class BatchReport:
    processed: list[int]
    failed: list[int]


AfterWrite = Callable[[BatchReport], object]


def indexes_build_after(report: BatchReport) -> None:
    """After a stage that wrote vectors: build every index that does not exist yet, so that the first
    import's images are searchable once embedded and its indexes are there when it ends, without a
    query (later vectors are caught up by the processes that search)."""
    if report.processed:
        missing_indexes_build()


@contextlib.contextmanager
def _claimed(*, status_field: str, first_ids: Sequence[int], batch_size: int) -> Iterator[list[Image]]:
    """Up to batch_size pending images (those of `first_ids` that are pending first, then the oldest),
    claimed for the duration of the block. Masks wait for the embedding: the task embedding an image
    segments it next from the same decoded picture, so another task taking it meanwhile would only
    read and pass it a second time."""
    pending = Image.objects.filter(**{status_field: ProcessingStatus.PENDING})
    if status_field == "masks_status":
        pending = pending.exclude(status=ProcessingStatus.PENDING)
    preferred = set(pending.filter(pk__in=first_ids).values_list("pk", flat=True)) if first_ids else set()
    candidates = [pk for pk in dict.fromkeys(first_ids) if pk in preferred]
    candidates += [pk for pk in pending.order_by("pk").values_list("pk", flat=True)[: batch_size * 4]
                   if pk not in preferred]
    claimed: list[int] = []
    with connection.cursor() as cursor:
        try:
            for image_id in candidates:
                if len(claimed) == batch_size:
                    break
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [claim_key(status_field, image_id)])
                if cursor.fetchone()[0]:
                    claimed.append(image_id)
            # Re-read after claiming: another worker may have finished one just before.
            images = list(pending.filter(pk__in=claimed))
            images.sort(key=lambda image: claimed.index(image.pk))
            yield images
        finally:
            for image_id in claimed:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [claim_key(status_field, image_id)])


# image id -> the picture the models see, or why there is none: shared by the stages of one batch (a file
# missing was looked for, and logged, by each stage: two identical warnings for each try)
Decoded = dict[int, PILImage.Image | str]


FILE_MISSING = "The stored file is missing."
FILE_CHANGED = ("The stored file is not the one that was added (its SHA-256 differs: damaged or replaced on disk). "
                "Restore it from a backup, or delete the image and add the picture again.")


def _read_picture(image: Image) -> PILImage.Image | str:
    """The image's picture for the models, or why there is none. It runs on helper threads, so it asks
    the database nothing (a helper thread would keep its own connection open for as long as it lives)."""
    data = b""
    try:
        with image.file.open("rb") as fh:
            data = fh.read()
        return picture_for_models(data)
    except FileNotFoundError:
        return FILE_MISSING  # _missing_files_reasons, in the calling thread, says why
    except ImageRejected as exc:
        # It decoded when it was added: "damaged or truncated" read as a bad upload, and the log said nothing.
        if hashlib.sha256(data).hexdigest() != image.sha256:
            logger.warning("image %s: its stored file %s is not the one that was added (its SHA-256 differs): "
                           "damaged or replaced on disk", image.pk, image.file.name)
            return FILE_CHANGED
        return exc.message
    except STORAGE_ERRORS as exc:  # the storage failing, not the file: failed (not pending for ever), so Retry works
        return _storage_failed_reason(image, exc)
    except Exception as exc:  # a fault of ours with this one file: it fails alone, the batch goes on
        logger.exception("image %s: reading its stored file for the models failed", image.pk)
        return f"Reading the stored file failed: {type(exc).__name__}: {exc}"


def _storage_failed_reason(image: Image, exc: BaseException) -> str:
    logger.warning("image %s: its stored file could not be read: %r", image.pk, exc)
    return (f"The stored file could not be read: {storage_failure_reason(exc)}; it is retried by Retry or "
            "`manage.py retry_failed` once the media storage is reachable.")


def _missing_files_reasons(images: Sequence[Image]) -> dict[int, str]:
    """Why each of these images' stored file is missing: asked once for the batch (one query, one look at
    the storage itself), not once an image (a misnamed bucket makes every file of a batch missing)."""
    if not images:
        return {}
    alive = set(Image.objects.filter(pk__in=[image.pk for image in images]).values_list("pk", flat=True))
    storage_failed: BaseException | None = None
    try:
        storage_root_check()  # a bucket that is not there: the storage's fault, not the files'
    except STORAGE_ERRORS as exc:
        storage_failed = exc
    reasons = {}
    for image in images:
        if image.pk not in alive:
            reasons[image.pk] = "The image was deleted while it was being processed."  # nothing to tell the operator
        elif storage_failed is not None:
            reasons[image.pk] = _storage_failed_reason(image, storage_failed)
        else:
            # For the operator (not on the image's page): a host whose storage settings point elsewhere (another
            # bucket or prefix, another folder) finds every file missing, and only the log can say where it looked.
            logger.warning("image %s: its stored file %s is not in the media storage; if every image says so, check "
                           "this host's %s", image.pk, image.file.name, storage_settings_named())
            reasons[image.pk] = FILE_MISSING
    return reasons


def _load_pictures(images: Sequence[Image], decoded: Decoded | None = None) -> tuple[list[Loaded], dict[int, str]]:
    """Each image's picture for the models: taken from `decoded` when an earlier stage of the same batch
    read it, else read and decoded (and put there for the next stage). Decoding runs on the process's
    CPU threads: Pillow decodes and resizes outside Python's lock, and the models wait meanwhile."""
    wanted = [image for image in images if decoded is None or image.pk not in decoded]
    read = dict(zip([image.pk for image in wanted], map_on_threads(_read_picture, wanted, cpu_threads()), strict=True))
    read.update(_missing_files_reasons([image for image in wanted if read[image.pk] == FILE_MISSING]))
    if decoded is not None:
        decoded.update(read)
    loaded: list[Loaded] = []
    errors: dict[int, str] = {}
    for image in images:
        picture = decoded[image.pk] if decoded is not None and image.pk in decoded else read[image.pk]
        if isinstance(picture, str):
            errors[image.pk] = picture
        else:
            loaded.append((image, picture))
    return loaded, errors


def _masks_png(found: list[list[SoftMask]]) -> list[list[bytes]]:
    """Each mask as stored (an 8-bit PNG), encoded on the process's CPU threads (zlib works outside
    Python's lock)."""
    flat = map_on_threads(lambda mask: probability_to_png(mask.probability),
                          [mask for masks in found for mask in masks], cpu_threads())
    pngs = iter(flat)
    return [[next(pngs) for _ in masks] for masks in found]


def _infer_isolating_failures(items: list[Loaded], infer: Callable[[list[Loaded]], list[Any]],
                              errors: dict[int, str]) -> list[tuple[Loaded, Any]]:
    """infer(items) -> one output per item. If the batch raises, run each item alone, so one bad
    image fails alone (its error recorded) and the others still get their results."""
    try:
        return list(zip(items, infer(items), strict=True))
    except WeightsUnreadable as exc:  # the model's file, not an image: all fail alike, said once, no traceback
        logger.error("batch of %d failed: %s", len(items), exc)
        errors.update({item[0].pk: f"Processing failed: {exc}" for item in items})
        return []
    except Exception as exc:  # noqa: BLE001 - any model error: retry one by one to find the culprit
        if len(items) == 1:  # the culprit, or a model that cannot load: failed as in a batch (retry_failed)
            logger.exception("image %s failed", items[0][0].pk)
            errors[items[0][0].pk] = f"Processing failed: {exc}"
            return []
        logger.exception("batch of %d failed; retrying images one by one", len(items))
    done: list[tuple[Loaded, Any]] = []
    for item in items:
        try:
            done += list(zip([item], infer([item]), strict=True))
        except Exception as exc:  # noqa: BLE001
            errors[item[0].pk] = f"Processing failed: {exc}"
    return done


def _write(*, status_field: str, error_field: str, results: dict[int, Any], errors: dict[int, str],
           write_all: Callable[[list[tuple[Image, Any]]], None]) -> list[int]:
    """In one short transaction: lock the images still present (id order), store the batch's results
    together (a few statements for the batch, not a few per image), set statuses. When the database
    refuses the rows (IntegrityError), the batch's images fail with why (added to `errors`)."""
    try:
        with transaction.atomic():
            images = list(Image.objects.select_for_update().filter(pk__in=[*results, *errors]).order_by("pk"))
            done = [image for image in images if image.pk in results]
            if done:
                write_all([(image, results[image.pk]) for image in done])
                Image.objects.filter(pk__in=[image.pk for image in done]).update(
                    **{status_field: ProcessingStatus.READY, error_field: ""})
            for image in images:
                if image.pk not in results:
                    Image.objects.filter(pk=image.pk).update(
                        **{status_field: ProcessingStatus.FAILED, error_field: errors[image.pk]})
    except IntegrityError as exc:
        # Not the pictures but the database (e.g. a backup restored into the gallery's own database set its id
        # sequences back): left pending, the images waited for ever with no task and no word; failed, they say
        # why and retry_failed takes them once it is fixed.
        logger.exception("storing the results of images %s failed", sorted(results))
        said = " ".join(str(exc).split()).rstrip(".")  # psycopg's words, on one line, its last full stop ours
        reason = f"Storing the results failed in the database: {said}. Once the cause is fixed (docs/DEPLOYMENT.md, " \
                 "Backups), retry it."
        errors.update(dict.fromkeys(results, reason))
        for image_id, error in errors.items():  # the batch's other failures were rolled back with it
            Image.objects.filter(pk=image_id).update(**{status_field: ProcessingStatus.FAILED, error_field: error})
        return []
    return [image.pk for image in done]


def _process_batch(*, status_field: str, error_field: str, first_ids: Sequence[int], batch_size: int | None,
                   infer: Callable[[list[Loaded]], list[Any]], write_all: Callable[[list[tuple[Image, Any]]], None],
                   decoded: Decoded | None = None, after_write: AfterWrite | None = None) -> BatchReport:
    """Claim a batch of pending images, run the model outside any transaction, write the results;
    after_write(report) runs while the images are still claimed (work_locks.work_in_flight)."""
    with _claimed(status_field=status_field, first_ids=first_ids,
                  batch_size=batch_size or device_batch_size()) as images:
        if not images:
            return BatchReport(processed=[], failed=[])
        loaded, errors = _load_pictures(images, decoded)
        results = {image.pk: out for (image, _), out in _infer_isolating_failures(loaded, infer, errors)}
        processed = _write(status_field=status_field, error_field=error_field, results=results, errors=errors,
                           write_all=write_all)
        report = BatchReport(processed=processed, failed=sorted(errors))
        if after_write is not None:
            after_write(report)
    return report


def embed_batch(*, first_id: int | None = None, batch_size: int | None = None, models: ActiveModels | None = None,
                decoded: Decoded | None = None, after_write: AfterWrite | None = None) -> BatchReport:
    """Compute the active semantic and content embeddings for one batch of pending images, and,
    while a model change re-embeds the gallery, the serving (previous) models' too: images added
    meanwhile stay findable by the models that answer queries."""
    models = models or active_models()
    space_of = {key: space for space, key in keys_in_use(active=models)}
    serving_only = [key for key in space_of if key not in (models.semantic, models.content)]

    def infer(items: list[Loaded]) -> list[dict[str, Any]]:
        # The serving models' vectors only for images that lack them (those added during the change): a
        # re-embedded image has them already, and encoding it again took half as long again as the change.
        held = set(Embedding.objects.filter(image__in=[image for image, _ in items], model_key__in=serving_only)
                   .values_list("image_id", "model_key")) if serving_only else set()
        vectors: list[dict[str, Any]] = [{} for _ in items]
        for key in space_of:
            rows = [row for row, (image, _) in enumerate(items) if (image.pk, key) not in held]
            if rows:
                for row, vector in zip(rows, get_model(key).encode_images([items[row][1] for row in rows]), strict=True):
                    vectors[row][key] = vector
        return vectors

    def write_all(done: list[tuple[Image, dict[str, Any]]]) -> None:
        # One upsert for the batch: a rerun (retry, re-embed) replaces the vector of the same model.
        Embedding.objects.bulk_create(
            [Embedding(image=image, space=space_of[key], model_key=key, vector=vector)
             for image, vectors in done for key, vector in vectors.items()],
            update_conflicts=True, unique_fields=["image", "space", "model_key"], update_fields=["vector"])

    return _process_batch(status_field="status", error_field="error", first_ids=_ids(first_id),
                          batch_size=batch_size, infer=infer, write_all=write_all, decoded=decoded,
                          after_write=after_write)


@dataclass(frozen=True)
class SegmentedMask:
    mask: SoftMask
    png: bytes
    region_vectors: dict[tuple[Space, str], Any]  # (space, model key) -> vector; empty below the minimum area


@dataclass(frozen=True)
class RegionsAdded:
    """An image whose masks the active segmenter made already (a semantic or content model changed, not the
    segmenter): its masks, and their ids, stay; only the region vectors they lack are computed."""
    vectors: list[tuple[int, tuple[Space, str], Any]]  # (mask id, (space, model key), vector)


def _masks_kept(images: Sequence[Image], segmenter: str) -> dict[int, list[Mask]]:
    """The images (of `images`) whose masks `segmenter` made, each with its masks (none: it found nothing)."""
    ids = [image.pk for image in images if image.segmented_by == segmenter]
    others = set(Mask.objects.filter(image_id__in=ids).exclude(segmenter=segmenter).values_list("image_id", flat=True))
    kept: dict[int, list[Mask]] = {pk: [] for pk in ids if pk not in others}
    for mask in Mask.objects.filter(image_id__in=list(kept)).order_by("pk"):
        kept[mask.image_id].append(mask)
    return kept


def segment_batch(*, first_id: int | None = None, batch_size: int | None = None, models: ActiveModels | None = None,
                  decoded: Decoded | None = None, after_write: AfterWrite | None = None) -> BatchReport:
    """Compute the active segmenter's masks for one batch of images whose masks are pending, and each
    mask's region vectors (the models in use, as for whole images) from the same decoded picture.
    Images whose masks the active segmenter made already (a model change re-embeds their regions) keep
    them: only the region vectors they lack are computed (a content model change re-segmented the whole
    gallery, and every mask's id changed).
    Images `decoded` holds (an earlier stage's batch) are taken first, then first_id, then the oldest."""
    models = models or active_models()
    keys = keys_in_use(active=models)
    batch_size = batch_size or device_batch_size()

    def encoded(regions: list[PILImage.Image], key: str) -> list[Any]:
        # In groups of the batch's size: one pass over every region of a batch (up to ~80 for 16 photos)
        # peaked at ~17 MB a region, and the heap kept that peak for the worker's life (reuse_large_blocks).
        return [vector for start in range(0, len(regions), batch_size)
                for vector in get_model(key).encode_images(regions[start:start + batch_size])]

    def infer(items: list[Loaded]) -> list[list[SegmentedMask] | RegionsAdded]:
        kept = _masks_kept([image for image, _ in items], models.segmenter)
        segmented = iter(segment([item for item in items if item[0].pk not in kept]))
        added = iter(regions_add([item for item in items if item[0].pk in kept], kept))
        return [next(added) if image.pk in kept else next(segmented) for image, _ in items]

    def regions_add(items: list[Loaded], kept: dict[int, list[Mask]]) -> list[RegionsAdded]:
        masks = [mask for image, _ in items for mask in kept[image.pk]]
        held = set(RegionEmbedding.objects.filter(mask__in=masks).values_list("mask_id", "space", "model_key"))
        wanted: list[tuple[int, int, PILImage.Image, list[tuple[Space, str]]]] = []  # (row, mask id, region, pairs)
        for row, (image, picture) in enumerate(items):
            for mask in kept[image.pk]:
                lacking = [(space, key) for space, key in keys if (mask.pk, space, key) not in held]
                if lacking and large_enough_for_a_region(mask.area_fraction) and (
                        region := region_picture(picture, png_to_probability(mask.probability_png))) is not None:
                    wanted.append((row, mask.pk, region, lacking))
        added: list[RegionsAdded] = [RegionsAdded(vectors=[]) for _ in items]
        for pair in keys:
            asked = [(row, mask_id, region) for row, mask_id, region, lacking in wanted if pair in lacking]
            for (row, mask_id, _), vector in zip(asked, encoded([region for _, _, region in asked], pair[1]),
                                                 strict=True):
                added[row].vectors.append((mask_id, pair, vector))
        return added

    def segment(items: list[Loaded]) -> list[list[SegmentedMask]]:
        if not items:
            return []
        pictures = [picture for _, picture in items]
        found = get_model(models.segmenter).segment(pictures)
        regions = [(row, column, region) for row, (picture, masks) in enumerate(zip(pictures, found, strict=True))
                   for column, mask in enumerate(masks) if large_enough_for_a_region(mask.area_fraction)
                   and (region := region_picture(picture, mask.probability)) is not None]
        vectors = {(space, key): encoded([region for _, _, region in regions], key) for space, key in keys}
        by_mask: dict[tuple[int, int], dict[tuple[Space, str], Any]] = {
            (row, column): {pair: vectors[pair][n] for pair in vectors} for n, (row, column, _) in enumerate(regions)}
        # PNG-encode here, outside the write transaction, which should hold its row locks briefly.
        pngs = _masks_png(found)
        return [[SegmentedMask(mask, pngs[row][column], by_mask.get((row, column), {}))
                 for column, mask in enumerate(masks)] for row, masks in enumerate(found)]

    def write_all(results: list[tuple[Image, list[SegmentedMask] | RegionsAdded]]) -> None:
        RegionEmbedding.objects.bulk_create(
            [RegionEmbedding(mask_id=mask_id, image=image, space=space, model_key=key, vector=vector)
             for image, result in results if isinstance(result, RegionsAdded)
             for mask_id, (space, key), vector in result.vectors],
            update_conflicts=True, unique_fields=["mask", "space", "model_key"], update_fields=["vector"])
        done = [(image, result) for image, result in results if not isinstance(result, RegionsAdded)]
        if not done:
            return
        # Replace each image's masks wholesale (their region vectors go with them): a rerun leaves
        # exactly one set, and after a segmenter change the old segmenter's masks go (kept, each label
        # would show twice, and their regions would lack the new models' vectors).
        replaced = Mask.objects.filter(image__in=[image for image, _ in done])
        # Tombstones in the same transaction: every process's region index drops the old masks' vectors.
        DeletedMask.objects.bulk_create([DeletedMask(mask_id=mask_id) for mask_id in replaced.values_list("pk", flat=True)])
        replaced.delete()
        Image.objects.filter(pk__in=[image.pk for image, _ in done]).update(segmented_by=models.segmenter)
        made = [(image, s) for image, segmented in done for s in segmented]
        rows = Mask.objects.bulk_create([
            Mask(image=image, segmenter=models.segmenter, label=s.mask.label, class_index=s.mask.class_index,
                 probability_png=s.png, area_fraction=s.mask.area_fraction)
            for image, s in made
        ])
        RegionEmbedding.objects.bulk_create([
            RegionEmbedding(mask=row, image=image, space=space, model_key=key, vector=vector)
            for row, (image, s) in zip(rows, made, strict=True) for (space, key), vector in s.region_vectors.items()
        ])

    return _process_batch(status_field="masks_status", error_field="masks_error",
                          first_ids=[*(decoded or {}), *_ids(first_id)], batch_size=batch_size, infer=infer,
                          write_all=write_all, decoded=decoded, after_write=after_write)


def _ids(first_id: int | None) -> list[int]:
    return [] if first_id is None else [first_id]


def process_batch(*, first_id: int | None = None, batch_size: int | None = None, models: ActiveModels | None = None,
                  masks: bool = True, after_each_stage: AfterWrite | None = indexes_build_after,
                  ) -> tuple[BatchReport, BatchReport]:
    """One batch through both stages in this process: embed a batch of pending images (first_id first)
    and write it, so the images are searchable before segmentation starts; then segment the same images
    first (or, where they are already done or claimed, other pending ones). Each file is read and decoded
    once for the two, and models built on one network (the offline profile's) pass each picture once.
    masks=False embeds only (segmentation then reports nothing done). after_each_stage(report) runs
    after each stage's write, its images still claimed: by default it builds the indexes that do not
    exist yet. Returns the two stages' reports."""
    models = models or active_models()
    decoded: Decoded = {}
    with shared_passes():
        embedded = embed_batch(first_id=first_id, batch_size=batch_size, models=models, decoded=decoded,
                               after_write=after_each_stage)
        if not masks:
            return embedded, BatchReport(processed=[], failed=[])
        segmented = segment_batch(first_id=first_id, batch_size=batch_size, models=models, decoded=decoded,
                                  after_write=after_each_stage)
    return embedded, segmented


def process_all_pending(*, batch_size: int | None = None, progress: Progress | None = None,
                        masks: bool = True) -> None:
    """Embed and segment every pending image in this process (import_folder --sync, reset), batch by
    batch (`process_batch`: the first indexes are built as a worker builds them).

    masks=False embeds only (the masks stay pending): `evaluate` needs no masks.
    """
    models = active_models()
    while True:
        embedded, segmented = process_batch(batch_size=batch_size, models=models, masks=masks)
        done = len(embedded.processed) + len(embedded.failed)
        if progress is not None and done:
            progress(done)
        if not done and not (segmented.processed or segmented.failed):
            break


@dataclass(frozen=True)
class ReembedPlan:
    """What a model change asks of the gallery: images to embed again, images to segment again."""

    embed: list[int]
    segment: list[int]

    @property
    def ids(self) -> list[int]:
        return sorted({*self.embed, *self.segment})


def images_reembed_for_active_models(*, enqueue: bool = True) -> ReembedPlan:
    """After a model change: put every image lacking the active models' vectors back in the queue:
    its embedding step when the whole image lacks them, its segmentation step (which writes masks and
    region vectors) when another segmenter made its masks (or found none in it), or one of its masks
    large enough to be a region lacks either space's vector.

    Vectors of other models stay (each row records its model key), so switching back needs no work.
    """
    models = active_models()
    pairs = ((Space.SEMANTIC, models.semantic), (Space.CONTENT, models.content))
    has_all = [Exists(Embedding.objects.filter(image=OuterRef("pk"), space=space, model_key=key))
               for space, key in pairs]
    embed_ids = set(Image.objects.filter(status=ProcessingStatus.READY)
                    .exclude(has_all[0] & has_all[1]).values_list("pk", flat=True))
    region_has_all = [Exists(RegionEmbedding.objects.filter(mask=OuterRef("pk"), space=space, model_key=key))
                      for space, key in pairs]
    # (the bar of large_enough_for_a_region, in SQL)
    region_lacking = Mask.objects.filter(image=OuterRef("pk"), area_fraction__gte=settings.IMAGINAITION_REGION_MIN_AREA)\
        .exclude(region_has_all[0] & region_has_all[1])
    other_segmenter = Mask.objects.filter(image=OuterRef("pk")).exclude(segmenter=models.segmenter)
    # segmented_by reaches the images another segmenter found nothing in (or that no record says
    # which segmenter saw): they have no mask to say so.
    segment_ids = set(Image.objects.filter(masks_status=ProcessingStatus.READY)
                      .filter(Exists(region_lacking) | Exists(other_segmenter) | ~Q(segmented_by=models.segmenter))
                      .values_list("pk", flat=True))
    plan = ReembedPlan(embed=sorted(embed_ids), segment=sorted(segment_ids))
    ids = plan.ids
    if ids:
        with transaction.atomic():
            Image.objects.filter(pk__in=embed_ids).update(status=ProcessingStatus.PENDING, error="")
            Image.objects.filter(pk__in=segment_ids).update(masks_status=ProcessingStatus.PENDING, masks_error="")
            if enqueue:
                transaction.on_commit(lambda: processing_enqueue(ids))
    return plan
