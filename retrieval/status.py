"""What the service is running with and how healthy it is (status API, page banner)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

import torch
from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.db.models import Count
from django_q.models import OrmQ, Task
from django_q.tasks import async_task

from gallery.models import Image, ProcessingStatus
from gallery.selectors import images_failed_count, images_pending_count
from retrieval.encoders.devices import model_device
from retrieval.encoders.registry import ActiveModels, active_models, loaded_precisions
from retrieval.integrity import integrity_check
from retrieval.models import RegionEmbedding
from retrieval.serving import serving_models
from retrieval.weights import weights_status

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    profile: str
    models: dict[str, str]
    serving: dict[str, str]  # the models answering queries: the active ones unless a model change is re-embedding
    device: str  # where this process runs its models (IMAGINAITION_DEVICE)
    torch_threads: int
    precision: dict[str, str]  # per model loaded in this (web) process: fp32, bf16 or fp16, and the check
    database: str
    pgvector_version: str | None
    images: dict[str, int]
    masks_pending: int
    masks_failed: int  # images whose segmentation failed (their vectors may be ready): retry_failed
    region_vectors: dict[str, int]  # per space, by the active models (search by region)
    queued_tasks: int
    integrity: dict[str, Any]
    weights: list[dict[str, Any]]  # the active models' weight files: present, and whether they match their SHA-256

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def service_status(*, check_files: bool = False) -> ServiceStatus:
    """check_files also stats every stored file (slow on big galleries: on request only)."""
    active = active_models()
    serving = serving_models(active=active)
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    counts, masks = _images_by_status("status"), _images_by_status("masks_status")
    return ServiceStatus(
        profile=active.profile,
        models={"semantic": active.semantic, "content": active.content, "segmenter": active.segmenter},
        serving={"semantic": serving.semantic, "content": serving.content},
        device=str(model_device()), torch_threads=torch.get_num_threads(), precision=loaded_precisions(),
        database="embedded" if settings.DATABASES["default"]["ENGINE"].endswith("db_embedded") else "external",
        pgvector_version=row[0] if row else None,
        images=counts,
        masks_pending=masks[ProcessingStatus.PENDING], masks_failed=masks[ProcessingStatus.FAILED],
        region_vectors={space: RegionEmbedding.objects.filter(space=space, model_key=key).count()
                        for space, key in (("semantic", active.semantic), ("content", active.content))},
        queued_tasks=OrmQ.objects.count(),
        integrity=integrity_check(check_files=check_files).as_dict(),
        weights=[{"model_key": file.model_key, "filename": file.filename, "present": file.present,
                  "verified": file.hash_ok} for file in weights_status(keys=dict.fromkeys(
                      [active.semantic, active.content, active.segmenter]))],
    )


def _images_by_status(field: str) -> dict[str, int]:
    """Images per value of `field` (status or masks_status), every value present: one grouped count."""
    counts = dict.fromkeys(ProcessingStatus.values, 0)
    counts.update(Image.objects.values_list(field).annotate(n=Count("id")).order_by())
    return counts


WORKER_CHECK_GROUP = "worker-check"


def worker_check_start() -> str:
    """Enqueue a ping for the workers; returns the task id to poll with worker_check_result."""
    # save=True: its result is read back even when IMAGINAITION_TASK_SAVE_LIMIT=-1 keeps no successes.
    return async_task("retrieval.tasks.worker_ping", task_name="worker-check", group=WORKER_CHECK_GROUP, save=True)


def worker_check_result(task_id: str) -> dict[str, Any] | None:
    """The ping's answer once a worker ran it, else None. Only a ping, by its id: django-q2's fetch()
    also finds any task by its name, which showed any signed-in user other tasks' results (and two
    pings share one name)."""
    task = Task.objects.filter(pk=task_id, group=WORKER_CHECK_GROUP).first()
    if task is None:
        return None
    return {"success": task.success, "result": task.result, "stopped": api_time(task.stopped)}


def api_time(moment: datetime) -> str:
    """A time as the API writes every time: UTC, ISO 8601 ending in "Z" (as DRF writes an image's created_at)."""
    return moment.astimezone(dt_timezone.utc).isoformat().replace("+00:00", "Z")


def heal_start() -> str:
    """Rebuild missing or stale indexes in a worker."""
    return async_task("retrieval.tasks.rebuild_indexes", task_name="heal-indexes", group="indexes")


@dataclass(frozen=True)
class Banner:
    """What the banner on every page says: model profile, images waiting, index health, a model change."""

    profile: str
    pending: int | str
    index: str
    device: str = "cpu"
    # A model change under way: "old → new" per role whose old model still answers until re-embedded.
    model_change: str = ""
    # A new segmenter under way: "old → new"; each image's labels and regions are replaced in turn.
    segmenter_change: str = ""
    failed: int = 0  # images whose vectors or masks failed: they wait for a retry


BANNER_COUNT_ON_THE_PAGE_AFTER = 60.0  # seconds: an older banner's count of waiting images is not shown
_banner: Banner | None = None
_banner_at = 0.0
_banner_refreshing = False
_banner_lock = threading.Lock()


def banner_state() -> Banner:
    """The banner as last refreshed; a page never waits for the check behind it (counts, index
    load). When it is older than IMAGINAITION_BANNER_REFRESH_SECONDS, a background thread of this
    process refreshes it for the next page; when it is much older (the first page after a quiet spell),
    the page counts the images waiting itself, one indexed count: it showed 2,100 waiting from five
    minutes before, when none was."""
    global _banner_refreshing
    with _banner_lock:
        age = time.monotonic() - _banner_at
        stale = _banner is None or age > settings.IMAGINAITION_BANNER_REFRESH_SECONDS
        start = stale and not _banner_refreshing
        _banner_refreshing = _banner_refreshing or start
        shown = _banner
    if start:
        threading.Thread(target=_banner_refresh_in_background, name="banner-refresh", daemon=True).start()
    if shown is None:
        return Banner(profile=active_models().profile, pending="…", index="checking", device=str(model_device()))
    if age > max(BANNER_COUNT_ON_THE_PAGE_AFTER, settings.IMAGINAITION_BANNER_REFRESH_SECONDS):
        try:
            return replace(shown, pending=images_pending_count())
        except DatabaseError:
            return replace(shown, pending="?")
    return shown


def banner_refresh() -> Banner:
    """Check now (integrity without files, pending counts) and keep the answer for banner_state."""
    global _banner, _banner_at
    active = active_models()
    profile, device = active.profile, str(model_device())
    try:
        banner = Banner(profile=profile, pending=images_pending_count(),
                        index=integrity_check(check_files=False).state, device=device,
                        model_change=_model_change(active), segmenter_change=_segmenter_change(active),
                        failed=images_failed_count())
    except DatabaseError:
        banner = Banner(profile=profile, pending="?", index="database unavailable", device=device)
    with _banner_lock:
        _banner, _banner_at = banner, time.monotonic()
    return banner


def _model_change(active: ActiveModels) -> str:
    serving = serving_models(active=active)
    return ", ".join(f"{role} {getattr(serving, role)} → {getattr(active, role)}" for role in ("semantic", "content")
                     if getattr(serving, role) != getattr(active, role))


def _segmenter_change(active: ActiveModels) -> str:
    """A new segmenter has no serving model (an image's masks are replaced when it is segmented again):
    its change shows as images waiting to be segmented again whose masks another one made."""
    older = (Image.objects.filter(masks_status=ProcessingStatus.PENDING)
             .exclude(segmented_by__in=["", active.segmenter]).values_list("segmented_by", flat=True).first())
    return f"{older} → {active.segmenter}" if older else ""


def _banner_refresh_in_background() -> None:
    global _banner_refreshing
    try:
        banner_refresh()
    except Exception:  # noqa: BLE001 - a banner must never take a page (or a thread) down
        logger.exception("status banner refresh failed")
    finally:
        with _banner_lock:
            _banner_refreshing = False
        connections.close_all()  # this thread's own connections
