"""An uploaded image looked at before (or without) adding it: kept for an hour under MEDIA_ROOT/staging,
keyed in the visitor's session. It can be searched with (retrieval.search) or added to the gallery
(gallery.services.image_add).

Its labels and masks come from the segmenter, which the web process never loads (it is the largest
model, and query-time search does not need it): staging an upload asks an *interactive* worker for
them (a short task on its own django-q cluster, so it never waits behind an import), and the page
shows that it is working until they are there. A search by an API upload's region asks the same way
and waits for the answer. IMAGINAITION_SEGMENT_UPLOADS_INLINE=1 runs that task in the calling process
instead (a one-process setup, and tests that need no worker).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django_q.tasks import async_task

from gallery.errors import Refused
from gallery.imaging import decode_image, picture_for_models, png_to_probability, probability_to_png
from retrieval.encoders.registry import active_models, get_model

logger = logging.getLogger(__name__)
SESSION_KEY = "staged_upload"
MAX_AGE_SECONDS = 3600
INTERACTIVE_CLUSTER = "interactive"  # Q_CLUSTER_NAME of the worker that answers pages (settings.Q_CLUSTER)
SegmentationState = Literal["working", "ready", "failed"]
_NO_WORKER = (f"No worker found the picture's labels within {{timeout:g}} s: the interactive worker "
              f"(Q_CLUSTER_NAME={INTERACTIVE_CLUSTER} manage.py qcluster; `make run` starts it) is not running or "
              f"is busy.")


class StagedLabel(TypedDict):
    class_index: int
    label: str
    area_fraction: float


class SegmentationUnavailable(Refused):
    """No interactive worker segmented the picture in time (503)."""

    status_code = 503


@dataclass(frozen=True)
class StagedUpload:
    token: str
    name: str
    path: Path
    labels: list[StagedLabel]
    size: tuple[int, int] = (0, 0)  # as displayed: EXIF orientation applied
    state: SegmentationState = "ready"  # of its segmentation
    error: str = ""  # why segmentation failed
    timed_out: bool = False  # failed because no worker answered in time

    def data(self) -> bytes:
        return self.path.read_bytes()

    def mask_path(self, class_index: int) -> Path:
        return self.path.with_name(f"{self.token}-mask-{int(class_index)}.png")

    def masks(self) -> dict[str, np.ndarray]:
        """label -> soft mask (the picture's size, in [0, 1]) of every label found."""
        return {label["label"]: png_to_probability(self.mask_path(label["class_index"]).read_bytes())
                for label in self.labels}


def _folder() -> Path:
    folder = Path(settings.MEDIA_ROOT) / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _valid_token(token: object) -> bool:
    return isinstance(token, str) and bool(token) and all(c in "0123456789abcdef" for c in token)


def staged_clear_all() -> None:
    """Forget every staged upload (a gallery reset starts from nothing)."""
    shutil.rmtree(Path(settings.MEDIA_ROOT) / "staging", ignore_errors=True)


def _cleanup() -> None:
    limit = time.time() - MAX_AGE_SECONDS
    for path in _folder().iterdir():
        if path.stat().st_mtime < limit:
            path.unlink(missing_ok=True)


def _meta_write(staged: StagedUpload) -> None:
    """The upload's facts, replaced atomically (a reader sees the old or the new file, never half)."""
    meta = staged.path.with_suffix(".json")
    partial = meta.with_suffix(".json.partial")
    partial.write_text(json.dumps({"name": staged.name, "labels": staged.labels, "size": list(staged.size),
                                   "state": staged.state, "error": staged.error}))
    partial.replace(meta)


def _stage(*, data: bytes, name: str) -> StagedUpload:
    """Validate (ImageRejected for bad input), keep the bytes, ask for the segmentation."""
    picture = decode_image(data).picture  # the full check every stored image passes
    _cleanup()
    token = secrets.token_hex(12)
    path = _folder() / f"{token}.upload"
    path.write_bytes(data)
    staged = StagedUpload(token=token, name=Path(name).name[:255] or "upload", path=path, labels=[],
                          size=picture.size, state="working")
    _meta_write(staged)
    async_task("retrieval.tasks.staged_segment", token, task_name=f"segment-upload-{token}", group="uploads",
               cluster=INTERACTIVE_CLUSTER, sync=settings.IMAGINAITION_SEGMENT_UPLOADS_INLINE)
    return staged_read(token) or staged


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
    path = _folder() / f"{token}.upload"
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        return None
    info = json.loads(meta.read_text())
    width, height = info["size"]
    state, error = info.get("state", "ready"), info.get("error", "")
    timeout = settings.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT
    timed_out = state == "working" and time.time() - meta.stat().st_mtime > timeout
    if timed_out:
        state, error = "failed", _NO_WORKER.format(timeout=timeout)
    return StagedUpload(token=token, name=info["name"], path=path, labels=info["labels"], size=(width, height),
                        state=state, error=error, timed_out=timed_out)


def staged_get(*, session: SessionBase) -> StagedUpload | None:
    return staged_read(session.get(SESSION_KEY, ""))


def staged_segment(token: str) -> SegmentationState | None:
    """Segment a staged picture and store its masks beside it (the interactive worker's task).
    Returns the state reached; None when the upload is gone (replaced or expired)."""
    staged = staged_read(token)
    if staged is None:
        return None
    try:
        masks = get_model(active_models().segmenter).segment([picture_for_models(staged.data())])[0]
    except Exception as exc:  # noqa: BLE001 - any model error: the page says so instead of waiting forever
        logger.exception("segmenting staged upload %s failed", token)
        _meta_write(replace(staged, labels=[], state="failed", error=f"Finding its labels failed: {exc}"))
        return "failed"
    for mask in masks:
        staged.mask_path(mask.class_index).write_bytes(probability_to_png(mask.probability))
    labels = [StagedLabel(class_index=m.class_index, label=m.label, area_fraction=m.area_fraction) for m in masks]
    if not staged.path.exists():  # cleared meanwhile: leave no masks behind
        _delete(token)
        return None
    _meta_write(replace(staged, labels=labels, state="ready"))
    return "ready"


def upload_masks(*, data: bytes, name: str, timeout: float | None = None) -> dict[str, np.ndarray]:
    """label -> soft mask of an uploaded picture that is not kept (a search by an API upload's region):
    staged under a token no session holds, segmented by the interactive worker, then removed.
    SegmentationUnavailable when no worker answers within `timeout` seconds."""
    staged = _stage(data=data, name=name)
    timeout = settings.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    try:
        while True:
            current = staged_read(staged.token)
            if current is not None and current.state == "ready":
                return current.masks()
            if (current is not None and current.timed_out) or time.monotonic() >= deadline:
                raise SegmentationUnavailable(_NO_WORKER.format(timeout=timeout) + " Try again.")
            if current is None or current.state == "failed":
                raise Refused(current.error if current else "The upload disappeared while it was segmented.",
                              status_code=500)
            time.sleep(0.05)
    finally:
        _delete(staged.token)


def _delete(token: str) -> None:
    for path in _folder().glob(f"{token}*"):
        path.unlink(missing_ok=True)


def staged_clear(*, session: SessionBase) -> None:
    token = session.pop(SESSION_KEY, None)
    if isinstance(token, str) and _valid_token(token):
        _delete(token)
