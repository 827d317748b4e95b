"""An uploaded image looked at before (or without) adding it: kept for an hour, keyed in the visitor's
session; its bytes in the file storage (staging/<token>.upload), its facts, segmentation state and masks
in the database, so whichever web or worker host handles the next request sees them. It can be searched
with (retrieval.search) or added to the gallery (gallery.services.image_add).

Its labels and masks come from the segmenter, which the web process never loads (it is the largest
model, and query-time search does not need it): staging an upload asks an *interactive* worker for
them (a short task on its own django-q cluster, so it never waits behind an import), and the page
shows that it is working until they are there. A search by an API upload's region asks the same way
and waits for the answer. IMAGINAITION_SEGMENT_UPLOADS_INLINE=1 runs that task in the calling process
instead (a one-process setup, and tests that need no worker).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypedDict, cast

import numpy as np
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django_q.models import OrmQ
from django_q.tasks import async_task

from gallery.errors import Refused
from gallery.imaging import decode_for_models, picture_for_models, png_to_probability, probability_to_png
from gallery.services import stored_name
from gallery.storage import STORAGE_ERRORS, storage_failure_reason, stored_delete, stored_read
from retrieval.encoders.registry import active_models, get_model
from retrieval.models import StagedUploadMask, StagedUploadRecord

logger = logging.getLogger(__name__)
SESSION_KEY = "staged_upload"
MAX_AGE_SECONDS = 3600
MAX_WAITING = 32  # uploads waiting for their labels at once, all sessions together
# Staged uploads kept at once, all sessions together: a new one past it ends the oldest early. A public
# gallery's visitors (a session each) kept any number, each up to the upload limit, for an hour.
MAX_STAGED = 100
INTERACTIVE_CLUSTER = "interactive"  # Q_CLUSTER_NAME of the worker that answers pages (settings.Q_CLUSTER)
SegmentationState = Literal["working", "ready", "failed"]
# A worker that died on the picture (its one attempt) leaves no trace here but the time: said among the causes.
_NO_WORKER = (f"No worker found the picture's labels within {{timeout:g}} s: the interactive worker "
              f"(Q_CLUSTER_NAME={INTERACTIVE_CLUSTER} manage.py qcluster; `make run` starts it) is not running, "
              f"is busy, or stopped while working on it (its log says).")
# A running interactive cluster takes a queued task within a poll, or is busy with one it took: a task
# still waiting this long while no task is taken means no such worker is running. Say so now rather
# than after the whole timeout.
UNCLAIMED_SECONDS = 10.0
_TIMED_OUT_FOR_PEOPLE = ("Your picture's labels were not found in time: the service is busy, or its picture worker "
                         "is stopped or stopped while working on it; loading the picture again may work.")
_NOT_RUNNING = (f"No interactive worker took the picture within {{seconds:g}} s: start it (Q_CLUSTER_NAME="
                f"{INTERACTIVE_CLUSTER} manage.py qcluster; `make run` starts it) and try again.")


class StagedLabel(TypedDict):
    class_index: int
    label: str
    area_fraction: float


class SegmentationUnavailable(Refused):
    """No interactive worker segmented the picture in time (503)."""

    status_code = 503


class UploadReplaced(Refused):
    """A page acted on the picture it showed, but the session has staged another since (409)."""

    status_code = 409


@dataclass(frozen=True)
class StagedUpload:
    token: str
    name: str
    file_name: str  # in the file storage
    labels: list[StagedLabel]
    size: tuple[int, int] = (0, 0)  # as displayed: EXIF orientation applied
    state: SegmentationState = "ready"  # of its segmentation
    error: str = ""  # why segmentation failed
    timed_out: bool = False  # failed because no worker answered in time

    @property
    def shown_error(self) -> str:
        """Why it failed, in a visitor's words: a timeout's `error` tells an operator which worker to start."""
        return _TIMED_OUT_FOR_PEOPLE if self.timed_out else self.error

    def data(self) -> bytes:
        """The uploaded bytes; FileNotFoundError when the upload expired meanwhile."""
        return stored_read(self.file_name)

    def mask_png(self, class_index: int) -> bytes | None:
        mask = StagedUploadMask.objects.filter(upload__token=self.token, class_index=class_index).first()
        return bytes(mask.probability_png) if mask is not None else None

    def masks(self) -> dict[str, np.ndarray]:
        """label -> soft mask (the picture's size, in [0, 1]) of every label found."""
        pngs = dict(StagedUploadMask.objects.filter(upload__token=self.token)
                    .values_list("class_index", "probability_png"))
        return {label["label"]: png_to_probability(bytes(pngs[label["class_index"]])) for label in self.labels
                if label["class_index"] in pngs}


STAGING = "staging"


def _file_name(token: str) -> str:
    return f"{STAGING}/{token}.upload"


def _valid_token(token: object) -> bool:
    return isinstance(token, str) and bool(token) and all(c in "0123456789abcdef" for c in token)


def _stored_staging_files() -> list[str]:
    try:
        return [f"{STAGING}/{name}" for name in default_storage.listdir(STAGING)[1]]
    except FileNotFoundError:  # nothing staged yet on a fresh local folder
        return []


def staged_clear_all() -> None:
    """Forget every staged upload (a gallery reset starts from nothing)."""
    _records_delete(StagedUploadRecord.objects.all())
    try:
        stored_delete(_stored_staging_files())
    except STORAGE_ERRORS as exc:  # the records are gone: files no record names go at a later cleanup
        logger.warning("staged uploads forgotten, but the media storage failed removing their files: %s",
                       storage_failure_reason(exc))


def _cleanup() -> None:
    """Uploads older than MAX_AGE_SECONDS go, and files no record names (left by a crash) once as old."""
    limit = timezone.now() - timedelta(seconds=MAX_AGE_SECONDS)
    newest_first = StagedUploadRecord.objects.order_by("-created_at", "-pk").values_list("token", "created_at")
    # Expired, or past the newest MAX_STAGED - 1 (room for the one being staged).
    gone = {token for index, (token, created) in enumerate(newest_first) if created < limit or index >= MAX_STAGED - 1}
    _delete(*gone)
    live = {_file_name(token) for token, _ in newest_first if token not in gone}
    stored_delete([name for name in _stored_staging_files()
                   if name not in live and default_storage.get_modified_time(name) < limit])


def _stage(*, data: bytes, name: str) -> StagedUpload:
    """Validate (ImageRejected for bad input), keep the bytes, ask for the segmentation."""
    _refuse_when_busy()
    decoded = decode_for_models(data)  # the full check every stored image passes, without a full-size copy
    _cleanup()
    token = secrets.token_hex(12)
    file_name = default_storage.save(_file_name(token), ContentFile(data))
    try:
        StagedUploadRecord.objects.create(token=token, name=stored_name(name),  # the name it would be stored under
                                          width=decoded.width, height=decoded.height, state="working")
    except BaseException:
        stored_delete([file_name])  # no file without its record
        raise
    async_task("retrieval.tasks.staged_segment", token, task_name=_task_name(token), group="uploads",
               cluster=INTERACTIVE_CLUSTER, sync=settings.IMAGINAITION_SEGMENT_UPLOADS_INLINE)
    staged = staged_read(token)
    if staged is None:
        raise Refused("The upload disappeared while it was staged; try again.", status_code=409)
    return staged


def _refuse_when_busy() -> None:
    """One interactive worker finds every upload's labels in turn: past MAX_WAITING uploads waiting,
    a new one would wait past its timeout anyway, and a public gallery's visitors (each a session of
    their own) could hold up everyone's. Only uploads still within their timeout count."""
    recent = timezone.now() - timedelta(seconds=settings.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT)
    waiting = StagedUploadRecord.objects.filter(state="working", updated_at__gte=recent).count()
    if waiting >= MAX_WAITING:
        raise SegmentationUnavailable(f"The service is finding the labels of {waiting} other pictures; try again "
                                      "in a minute.")


def staged_add(*, data: bytes, name: str, session: SessionBase) -> StagedUpload:
    """Stage an upload for this session (replacing the previous one); its labels follow (state)."""
    previous = session.get(SESSION_KEY)
    staged = _stage(data=data, name=name)
    if isinstance(previous, str) and _valid_token(previous):
        _delete(previous)
    session[SESSION_KEY] = staged.token
    return staged


def staged_read(token: str) -> StagedUpload | None:
    if not _valid_token(token):
        return None
    record = StagedUploadRecord.objects.filter(token=token).first()
    if record is None:
        return None
    state, error = cast(SegmentationState, record.state), record.error
    timeout = settings.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT
    waited = (timezone.now() - record.updated_at).total_seconds()
    timed_out = state == "working" and waited > timeout
    if timed_out:
        state, error = "failed", _NO_WORKER.format(timeout=timeout)
    elif state == "working" and waited > UNCLAIMED_SECONDS and _nobody_took(token, seconds=UNCLAIMED_SECONDS):
        timed_out, state, error = True, "failed", _NOT_RUNNING.format(seconds=UNCLAIMED_SECONDS)
    return StagedUpload(token=token, name=record.name, file_name=_file_name(token), labels=record.labels,
                        size=(record.width, record.height), state=state, error=error, timed_out=timed_out)


def _nobody_took(token: str, *, seconds: float) -> bool:
    """Whether the upload's task has waited in the interactive queue for `seconds` while no worker holds
    any of its tasks. The ORM broker stamps a queued task with the time it was queued and a taken one
    with a time to come (until it is done and removed)."""
    now = timezone.now()
    queue = OrmQ.objects.filter(key=INTERACTIVE_CLUSTER)
    if queue.filter(lock__gt=now).exists():  # a worker is busy with a task: it will come to this one
        return False
    return any(task.name() == _task_name(token) for task in queue.filter(lock__lt=now - timedelta(seconds=seconds)))


def _task_name(token: str) -> str:
    return f"segment-upload-{token}"


def _kept_for_people() -> str:
    return f"uploads are kept for {MAX_AGE_SECONDS // 60} minutes, at most {MAX_STAGED} at once for everyone"


def staged_get(*, session: SessionBase, token: str = "") -> StagedUpload | None:
    """The session's staged upload. A session holds one, so a page names the one it showed (`token`):
    if another tab or window has staged another since, UploadReplaced, rather than acting on a
    picture the page does not show."""
    current = staged_read(session.get(SESSION_KEY, ""))
    if token and (current is None or current.token != token):
        if current is None:
            raise UploadReplaced(f"The picture this page showed is no longer uploaded ({_kept_for_people()}: it "
                                 "expired or newer uploads pushed it out, or it was added or replaced in another tab "
                                 "or window, or an administrator reset the gallery); choose the file again.")
        raise UploadReplaced(f"The picture this page showed was replaced by {current.name}, chosen in another tab "
                             "or window; nothing was done with it.")
    return current


def staged_missing_message(*, session: SessionBase | None) -> str:
    """Why a session has no staged upload to search with: it never had one, or it expired."""
    if session is None or not session.get(SESSION_KEY):
        return "Nothing is uploaded yet: choose a file first."
    return f"Your upload has expired ({_kept_for_people()}); choose the file again."


def staged_segment(token: str) -> SegmentationState | None:
    """Segment a staged picture and store its masks with it (the interactive worker's task).
    Returns the state reached; None when the upload is gone (replaced or expired)."""
    staged = staged_read(token)
    if staged is None:
        return None
    try:
        masks = get_model(active_models().segmenter).segment([picture_for_models(staged.data())])[0]
    except FileNotFoundError:
        return None  # removed while it waited
    except Exception as exc:  # noqa: BLE001 - any model error: the page says so instead of waiting forever
        logger.exception("segmenting staged upload %s failed", token)
        StagedUploadRecord.objects.filter(token=token).update(
            labels=[], state="failed", error=f"Finding its labels failed: {exc}", updated_at=timezone.now())
        return "failed"
    labels = [StagedLabel(class_index=m.class_index, label=m.label, area_fraction=m.area_fraction) for m in masks]
    with transaction.atomic():
        record = StagedUploadRecord.objects.select_for_update().filter(token=token).first()
        if record is None:  # cleared meanwhile: nothing to store
            return None
        StagedUploadMask.objects.bulk_create(
            [StagedUploadMask(upload=record, class_index=m.class_index,
                              probability_png=probability_to_png(m.probability)) for m in masks],
            update_conflicts=True, unique_fields=["upload", "class_index"], update_fields=["probability_png"])
        record.labels, record.state, record.error = labels, "ready", ""
        record.save(update_fields=["labels", "state", "error", "updated_at"])
    return "ready"


def upload_masks(*, data: bytes, name: str, timeout: float | None = None) -> dict[str, np.ndarray]:
    """label -> soft mask of an uploaded picture that is not kept (a search by an API upload's region):
    staged under a token no session holds, segmented by the interactive worker, then removed.
    SegmentationUnavailable when no worker answers within `timeout` seconds."""
    staged = _stage(data=data, name=name)
    timeout = settings.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT if timeout is None else timeout
    deadline, pause = time.monotonic() + timeout, 0.05
    try:
        while True:
            current = staged_read(staged.token)
            if current is not None and current.state == "ready":
                return current.masks()
            if current is not None and current.timed_out:
                raise SegmentationUnavailable(current.error)
            if time.monotonic() >= deadline:
                raise SegmentationUnavailable(_NO_WORKER.format(timeout=timeout) + " Try again.")
            if current is None:  # only a reset clears uploads no session holds (gallery_emptied)
                raise Refused("The gallery was reset while this picture's labels were being found, which "
                              "removed it; send it again.", status_code=409)
            if current.state == "failed":
                raise Refused(current.error, status_code=500)
            # Quick answers come quickly; a long wait (a busy or absent worker) reads the row 2-4 times a
            # second, not 20, for as long as the request waits.
            time.sleep(pause)
            pause = min(pause * 1.5, 0.4)
    finally:
        _delete(staged.token)


def _records_delete(records: QuerySet[StagedUploadRecord]) -> None:
    """Delete the records with their masks. Locked first: a worker storing a record's masks holds the
    same lock until they are committed, so none can come between Django collecting the masks and
    deleting the record (a mask committed there was a foreign-key violation: a 500 for "Add to database")."""
    with transaction.atomic():
        locked = list(records.select_for_update().values_list("pk", flat=True))
        StagedUploadRecord.objects.filter(pk__in=locked).delete()  # their masks go with them


def _delete(*tokens: str) -> None:
    if tokens:
        _records_delete(StagedUploadRecord.objects.filter(token__in=tokens))
        stored_delete([_file_name(token) for token in tokens])


def staged_clear(*, session: SessionBase) -> None:
    token = session.pop(SESSION_KEY, None)
    if isinstance(token, str) and _valid_token(token):
        _delete(token)
