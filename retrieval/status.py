"""What the service is running with and how healthy it is (status API, page banner)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from django.conf import settings
from django.db import connection
from django_q.models import OrmQ
from django_q.tasks import async_task, fetch

from gallery.models import Image, ProcessingStatus
from retrieval.encoders.registry import active_models


@dataclass(frozen=True)
class ServiceStatus:
    profile: str
    models: dict[str, str]
    database: str
    pgvector_version: str | None
    images: dict[str, int]
    masks_pending: int
    queued_tasks: int
    integrity: dict

    def as_dict(self) -> dict:
        return asdict(self)


def service_status(*, check_files: bool = False) -> ServiceStatus:
    """check_files also stats every stored file (slow on big galleries: on request only)."""
    from retrieval.integrity import integrity_check

    active = active_models()
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    counts = {status: 0 for status in ProcessingStatus.values}
    for status, count in _status_counts():
        counts[status] = count
    return ServiceStatus(
        profile=active.profile,
        models={"semantic": active.semantic, "content": active.content, "segmenter": active.segmenter},
        database="embedded" if settings.DATABASES["default"]["ENGINE"].endswith("db_embedded") else "external",
        pgvector_version=row[0] if row else None,
        images=counts,
        masks_pending=Image.objects.filter(masks_status=ProcessingStatus.PENDING).count(),
        queued_tasks=OrmQ.objects.count(),
        integrity=integrity_check(check_files=check_files).as_dict(),
    )


def _status_counts():
    from django.db.models import Count

    return Image.objects.values_list("status").annotate(n=Count("id")).order_by()


def worker_check_start() -> str:
    """Enqueue a ping for the workers; returns the task id to poll with worker_check_result."""
    return async_task("retrieval.tasks.worker_ping", task_name="worker-check", group="worker-check")


def worker_check_result(task_id: str) -> dict | None:
    """The ping's answer once a worker ran it, else None."""
    task = fetch(task_id)
    if task is None:
        return None
    return {"success": task.success, "result": task.result, "stopped": task.stopped.isoformat()}


def heal_start() -> str:
    """Rebuild missing or stale indexes in a worker."""
    return async_task("retrieval.tasks.rebuild_indexes", task_name="heal-indexes", group="indexes")
