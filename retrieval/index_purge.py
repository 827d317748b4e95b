"""Deleted images out of the index files. Between rebuilds a deletion (or masks replaced by segmenting again)
reaches every process's in-memory index through its tombstone, but the index files on disk keep the vectors
until the next rebuild: a daily task rebuilds the indexes whose files may still hold such vectors, and then
removes the tombstones that every index file is past."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import Min, Q

from retrieval.encoders.registry import MODELS, model_dim
from retrieval.index_snapshots import SYNC_SLACK
from retrieval.indexes import index_rebuild
from retrieval.models import DeletedImage, DeletedMask, IndexState
from retrieval.spaces import VectorOwner

logger = logging.getLogger(__name__)

# A tombstone outlives every index file that may hold its vectors by this much: a process that serves an
# older version while its host builds its copy of the new one (several hosts) still reads it.
TOMBSTONE_KEPT = timedelta(days=7)


def _deleted_since(state: IndexState) -> bool:
    """Whether something was deleted since the state's file was read from Postgres (a file built before
    that was recorded: whether anything was deleted at all)."""
    since = Q(deleted_at__gte=state.synced_at - SYNC_SLACK) if state.synced_at else Q()
    if DeletedImage.objects.filter(since).exists():
        return True
    return state.owner == "region" and DeletedMask.objects.filter(since).exists()


def indexes_holding_deleted() -> list[IndexState]:
    """The published indexes (of registered models) whose files may still hold deleted vectors."""
    published = IndexState.objects.exclude(file_name="").filter(model_key__in=list(MODELS)).order_by("pk")
    return [state for state in published if _deleted_since(state)]


def tombstones_prune() -> int:
    """Remove the tombstones older than every published index file (less TOMBSTONE_KEPT): none while a
    file's read time is unknown (built before it was recorded)."""
    published = IndexState.objects.exclude(file_name="")
    if published.filter(synced_at__isnull=True).exists():
        return 0
    oldest = published.aggregate(oldest=Min("synced_at"))["oldest"]
    if oldest is None:
        return 0
    cutoff = oldest - SYNC_SLACK - TOMBSTONE_KEPT
    removed, _ = DeletedImage.objects.filter(deleted_at__lt=cutoff).delete()
    removed_masks, _ = DeletedMask.objects.filter(deleted_at__lt=cutoff).delete()
    return removed + removed_masks


def deleted_vectors_purge() -> list[str]:
    """Rebuild the indexes whose files may hold deleted vectors, then prune tombstones; what it did, in words."""
    done = []
    for state in indexes_holding_deleted():
        owner: VectorOwner = "region" if state.owner == "region" else "image"
        report = index_rebuild(space=state.space, model_key=state.model_key, dim=model_dim(state.model_key),
                               owner=owner)
        done.append(f"rebuilt the {'region ' if owner == 'region' else ''}{state.space} index of {state.model_key} "
                    f"without deleted vectors: {report.count} vectors, version {report.version}")
        logger.info(done[-1])
    if pruned := tombstones_prune():
        done.append(f"removed {pruned} tombstones older than every index file")
        logger.info(done[-1])
    return done
