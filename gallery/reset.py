"""Reset / initialize the gallery from a server-side folder (the original app's feature).

Everything stored goes (images, masks, files, and through the signals everything derived from them:
vectors, indexes), then the folder is imported and processed in the worker that runs the job, while
a progress page follows it. The deletion is one transaction: a query during a reset sees the old
gallery or an empty one, never half of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

from django.conf import settings
from django.core.cache import caches
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone
from django_q.tasks import async_task

from gallery import events, selectors
from gallery.errors import Refused
from gallery.folders import FolderRefused, import_folder_check
from gallery.models import ACTIVE_RESET_STATES, Image, Mask, ProcessingStatus, ResetJob
from gallery.services import (ImportReport, ImportStopped, User, folder_files, folder_import, images_process_here,
                              images_schedule, names_shortened, subfolders_not_read)
from gallery.storage import STORAGE_ERRORS, storage_write_check
from gallery.storage_check import IMAGE_FOLDER, deleted_images_files_remove, storage_unreachable_message
from gallery.thumbnails import thumbnail_names

if TYPE_CHECKING:
    from django.contrib.auth.models import User as UserModel  # what AUTH_USER_MODEL names

logger = logging.getLogger(__name__)
PROGRESS_EVERY = 5  # files between progress writes
RESET_LOCK = 0x696D_6167_7265_7374  # PostgreSQL advisory lock key ("imagrest"): held by the running reset
RESET_START_LOCK = 0x696D_6167_7374_7274  # ("imagstrt"): held while a start checks for an active job


class ResetRefused(Exception):
    """A reset cannot start (bad folder, or another reset is running)."""


@dataclass(frozen=True)
class ResetPreview:
    folder: Path
    recursive: bool
    images: int
    masks: int
    derived: list[tuple[int, str]]  # what the layer above computed from the images, and will drop too
    stored_files: int
    files_to_import: int
    folders_not_read: list[str]  # the folder's sub-folders, when they are not imported

    @property
    def folders_not_read_named(self) -> str:
        return names_shortened(self.folders_not_read)


def reset_folder_check(*, folder: str) -> Path:
    """The folder as a resolved path under the import roots; ResetRefused with a readable reason otherwise."""
    try:
        return import_folder_check(folder)
    except FolderRefused as exc:
        raise ResetRefused(str(exc)) from None


def reset_preview(*, folder: str, recursive: bool) -> ResetPreview:
    path = reset_folder_check(folder=folder)
    try:
        files, _ = folder_files(root=path, recursive=recursive)
        folders_not_read = subfolders_not_read(path, recursive=recursive)
    except OSError as exc:  # e.g. changed since the check
        raise ResetRefused(f"{path} cannot be read by the server: {exc.strerror or exc}.") from None
    responses = events.derived_data_counted.send(sender=Image)
    # The stubs type a receiver's response as str | None; these receivers return [(count, "what")].
    derived = [pair for _, pairs in responses for pair in cast("list[tuple[int, str]]", pairs)]
    return ResetPreview(folder=path, recursive=recursive, images=Image.objects.count(), masks=Mask.objects.count(),
                        derived=derived, stored_files=Image.objects.exclude(file="").count(),
                        files_to_import=len(files), folders_not_read=folders_not_read)


def reset_start(*, folder: str, recursive: bool, user: User) -> ResetJob:
    """Create the job and hand it to a worker after commit. Only one reset at a time."""
    path = reset_folder_check(folder=folder)
    with transaction.atomic():
        # Serialize starts (a double-click posts twice): row locks cannot, as there is no active job
        # to lock, so a transaction lock does; the second start then sees the first one's job.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [RESET_START_LOCK])
        active = list(ResetJob.objects.select_for_update().filter(state__in=ACTIVE_RESET_STATES))
        running = [job for job in active if job.state == ResetJob.State.RUNNING]
        if running:
            with _run_lock() as nobody_runs_it:
                if nobody_runs_it:  # its worker died before a retry picked it up: it no longer blocks
                    for job in running:
                        _end_abandoned(job)
                    active = [job for job in active if job not in running]
        if active:
            raise ResetRefused("A reset is already in progress; wait for it to finish.")
        # Started from admin pages: `user` is a signed-in staff member, an instance of the user model.
        job = ResetJob.objects.create(folder=str(path), recursive=recursive, created_by=cast("UserModel", user))
        transaction.on_commit(lambda: _enqueue(job.pk))
    return job


def _enqueue(job_id: int) -> None:
    # Its own time limit: a large folder takes longer than a batch. The queue hands a long run out
    # again after its retry time; that copy finds the run alive (the lock below) and returns.
    async_task("gallery.reset.reset_run_task", job_id, task_name=f"reset-{job_id}", group="reset",
               timeout=settings.IMAGINAITION_RESET_TIMEOUT)


@contextmanager
def _run_lock() -> Iterator[bool]:
    """Whether this process now holds the reset lock (released on exit). A PostgreSQL session lock: the
    process running a reset holds it, and it goes with that process's connection, however the
    process ends, so "running, and nobody holds the lock" means its worker died."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [RESET_LOCK])
        held = bool(cursor.fetchone()[0])
    try:
        yield held
    finally:
        if held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [RESET_LOCK])


def reset_resume_cut_short() -> list[int]:
    """Hand the active reset to the workers again now if nobody runs it (its worker stopped or died):
    the queue would hand its task out again only after the retry time (IMAGINAITION_TASK_RETRY, 12
    min), its page saying "Running" meanwhile. Asked when a worker cluster starts, and every 5 minutes. A
    job whose task waits in the queue untaken is left to it; a copy that finds the run alive or ended
    returns (reset_run), so handing out one too many is harmless."""
    with transaction.atomic():
        active = list(ResetJob.objects.select_for_update().filter(state__in=ACTIVE_RESET_STATES))
        if not active:
            return []
        with _run_lock() as nobody_runs_it:
            if not nobody_runs_it:
                return []
        waiting = {str(task.name()) for task in selectors.main_queue_untaken()}
        # A job whose task no worker has taken yet is not cut short: it waits its turn (the 5-minute schedule
        # handed each such job a second task and logged that its worker had stopped).
        active = [job for job in active if f"reset-{job.pk}" not in waiting]
        for job in active:
            logger.warning("reset job %s: handed to the workers again (%s when its worker stopped)",
                           job.pk, job.phase or job.state)
            transaction.on_commit(partial(_enqueue, job.pk))
    return [job.pk for job in active]


def reset_resume_if_abandoned(job: ResetJob) -> bool:
    """Asked by the progress page as it polls: a running job whose worker died (nobody holds the run
    lock) is handed out again now, not after the queue's retry time (12 min). Then not again for a
    minute by any web process (the shared cache): a copy that finds the run alive returns, but a
    stopped cluster would collect one a poll."""
    cache = caches[settings.SHARED_CACHE]
    handed_out = f"imaginaition-reset-resumed-{job.pk}"
    if job.state != ResetJob.State.RUNNING or cache.get(handed_out):
        return False
    if job.pk not in reset_resume_cut_short():
        return False
    cache.set(handed_out, True, 60)
    return True


def reset_active() -> bool:
    return ResetJob.objects.filter(state__in=ACTIVE_RESET_STATES).exists()


def reset_run_task(job_id: int) -> str:
    return reset_run(job_id=job_id).state


def _delete_everything() -> int:
    with transaction.atomic():
        rows = list(Image.objects.select_for_update().values_list("id", "file", "sha256"))
        Image.objects.all().delete()  # masks and vectors go with them (cascade)
        events.images_deleted.send(sender=Image, image_ids=[image_id for image_id, _, _ in rows])
        selectors.labels_changed()
    files = [(sha256, ([file_name] if file_name else []) + thumbnail_names(image=Image(sha256=sha256)))
             for _, file_name, sha256 in rows]
    deleted_images_files_remove(files, deleted=f"reset: the gallery's {len(rows)} images were deleted")
    events.gallery_emptied.send(sender=Image)
    return len(rows)


def _end_abandoned(job: ResetJob) -> None:
    job.state, job.finished_at = ResetJob.State.FAILED, timezone.now()
    job.error = (f"Stopped while {job.phase or 'starting'}: the worker running it ended (restarted or "
                 "killed) and another reset was started instead.")
    job.save()


def _processing_counted(job: ResetJob) -> None:
    """The emptied gallery's images (the folder's and any added meanwhile) and those done with, ready or
    failed, counted in the database: workers busy with another import take the reset's images too (counting
    this run's batches, a reset ended at "Processed: 18 of 30" with all 30 processed), and the images added
    meanwhile are processed with it (counting the folder's alone, it ended at "110 of 30"), and images deleted
    meanwhile are not (it ended at "34 of 40" with the 34 left all processed)."""
    done = Q(status__in=(ProcessingStatus.READY, ProcessingStatus.FAILED))
    counts = Image.objects.aggregate(done=Count("pk", filter=done), all=Count("pk"))
    job.embedded, job.to_process = counts["done"], counts["all"]


def reset_run(*, job_id: int) -> ResetJob:
    """Run a queued job to the end; any error ends it `failed` with the message (never stuck running).
    A job left `running` by a worker that died is resumed when its task is handed out again: the
    phases after the deletion only add what is missing (a second copy of a live run returns)."""
    job = ResetJob.objects.get(pk=job_id)
    if not job.active:
        return job  # ended: a late copy never takes the lock while the next job's task looks for it
    with _run_lock() as held:
        job.refresh_from_db()
        if not held or not job.active:
            return job
        return _run(job)


def _imports_counted(job: ResetJob, report: ImportReport, *, resuming: bool) -> None:
    """The job's imported, duplicate and rejected files, from the folder's import."""
    job.imported, job.duplicates = len(report.added), len(report.duplicates)
    if resuming:  # what the dead run had imported counts as imported, not as a duplicate
        accepted = job.imported + job.duplicates
        job.imported = min(Image.objects.count(), accepted)  # the gallery was emptied for this folder
        job.duplicates = accepted - job.imported
    job.rejected = [list(pair) for pair in report.rejected] + [
        [name, "a sub-folder: not read (\"Include sub-folders\" was off)"] for name in report.folders_not_read]


def _run(job: ResetJob) -> ResetJob:
    resuming = job.state == ResetJob.State.RUNNING
    if resuming:
        logger.warning("reset job %s: resuming while %s (its worker stopped)", job.pk, job.phase)
    else:
        job.state, job.started_at, job.phase = ResetJob.State.RUNNING, timezone.now(), "checking the folder"
        job.save()

    def save(*fields: str) -> None:
        job.save(update_fields=[*fields, "phase"])

    nothing_deleted = "" if resuming else " Nothing was deleted."  # a resumed run's gallery is already emptied
    try:
        try:
            folder = reset_folder_check(folder=job.folder)  # the roots may have changed since it was queued
        except ResetRefused as exc:  # checked by the web host's settings when started; now by this worker's
            by_roots = (" by its own IMAGINAITION_IMPORT_ROOTS (which should name the same folders as the web "
                        "hosts')" if "IMAGINAITION_IMPORT_ROOTS" in str(exc) else "")
            raise ResetRefused(f"The worker running the reset refused the folder{by_roots}: {exc}{nothing_deleted}"
                               ) from None
        try:  # listed before anything is deleted: a folder this worker cannot read stops the reset here
            files_to_import = len(folder_files(root=folder, recursive=job.recursive)[0])
        except OSError as exc:
            raise ResetRefused(f"The worker running the reset cannot read {folder}: {exc.strerror or exc}."
                               f"{nothing_deleted}") from None
        if job.phase in ("checking the folder", "deleting the gallery"):  # one transaction: done, or to do again
            try:  # a storage that takes no file would leave an emptied gallery and the folder not imported
                storage_write_check(IMAGE_FOLDER)  # where the folder's files go (a folder of its own may refuse)
            except STORAGE_ERRORS as exc:
                raise ResetRefused(f"The reset did not start. {storage_unreachable_message(exc)}{nothing_deleted}"
                                   ) from None
            job.phase = "deleting the gallery"
            save()
            job.deleted_images = _delete_everything()
        job.total_files = files_to_import
        job.phase, job.scanned, job.embedded = "importing files", 0, 0
        save("deleted_images", "total_files", "scanned", "embedded")

        def scanned(count: int) -> None:
            job.scanned += count
            if job.scanned % PROGRESS_EVERY == 0 or job.scanned == job.total_files:
                save("scanned")

        try:
            report = folder_import(root=folder, recursive=job.recursive, user=job.created_by,
                                   enqueue=False, progress=scanned)
        except ImportStopped as exc:  # the storage failed part-way (a full disk): what it did is said too
            _imports_counted(job, exc.report, resuming=resuming)
            save("scanned", "imported", "duplicates", "rejected")
            raise
        _imports_counted(job, report, resuming=resuming)
        job.phase = "computing embeddings and masks"
        _processing_counted(job)  # (some by a dead run, if resuming)
        save("scanned", "imported", "duplicates", "rejected", "embedded", "to_process")

        def embedded(count: int) -> None:
            _processing_counted(job)
            save("embedded", "to_process")

        images_process_here(progress=embedded)
        job.phase = "building the search indexes"
        _processing_counted(job)
        save("embedded", "to_process")
        events.gallery_reloaded.send(sender=Image)
        failed = selectors.images_failed_count()  # of the emptied gallery: this folder's (and any added meanwhile)
        job.state, job.phase = ResetJob.State.DONE, (
            f"done: {job.imported} image{'s' if job.imported != 1 else ''} imported"
            + (f", {failed} failed" if failed else "") + ", the indexes built"
            if job.imported else "done: the folder held no image to import (see the rejected files)")
        if failed:  # "done" alone hid them (e.g. 41 of 50 when the storage stopped answering meanwhile)
            job.error = (f"{failed} image{'s' if failed != 1 else ''} could not be processed; each image's page says "
                         "why. Once the cause is fixed: Retry there, the image list's action \"Retry the failed "
                         "processing of the selected images\", or `python manage.py retry_failed`.")
    except (ResetRefused, Refused) as exc:  # a refusal (a storage failing, say) says what to do; no class name
        logger.warning("reset job %s refused: %s", job.pk, exc)
        job.state, job.error = ResetJob.State.FAILED, str(exc)
    except Exception as exc:  # noqa: BLE001 - recorded on the job for the operator
        logger.exception("reset job %s failed", job.pk)
        job.state, job.error = ResetJob.State.FAILED, f"{type(exc).__name__}: {exc}"
    if job.state == ResetJob.State.FAILED and job.phase not in ("checking the folder", "deleting the gallery"):
        # The images it imported (with no task: the run processes its own) go to the workers.
        waiting = selectors.images_pending_ids()
        if waiting:
            images_schedule(waiting)
            job.error += (f" The {len(waiting)} image{'s' if len(waiting) != 1 else ''} it had imported "
                          "go to the workers.")
    job.finished_at = timezone.now()
    job.save()
    return job
