"""How retrieval reacts to what the gallery tells it (gallery.events); connected in RetrievalConfig.ready."""

from __future__ import annotations

from collections.abc import Sequence

from django.contrib import messages
from django.contrib.auth.signals import user_logged_in
from django.db import transaction
from django.http import HttpRequest
from django.template.defaultfilters import pluralize

from gallery import events
from gallery.services import Progress, User
from retrieval import pipeline, uploads
from retrieval.encoders.registry import MODELS
from retrieval.index_snapshots import manager
from retrieval.indexes import index_drop_all
from retrieval.integrity import indexes_rebuild_in_use
from retrieval.models import DeletedImage, Embedding, RegionEmbedding
from retrieval.pgvector_store import hnsw_indexes_for_registry
from retrieval.preferences import preferences_keep_from_session


def enqueue_processing(sender: object, image_ids: Sequence[int], **kwargs: object) -> None:
    pipeline.processing_enqueue(image_ids)


def forget_deleted_images(sender: object, image_ids: Sequence[int], **kwargs: object) -> None:
    """Tombstones (same transaction as the delete) tell every process; this one forgets once the delete is
    committed: before, its other threads saw an index without rows the database still had ("count mismatch"
    on the status of a service deleting images), and a delete rolled back would have lost them until a rebuild.
    A search in between drops the deleted ids, as it does those that other processes have yet to forget."""
    DeletedImage.objects.bulk_create([DeletedImage(image_id=image_id) for image_id in image_ids])
    forgotten = set(image_ids)
    transaction.on_commit(lambda: manager.forget_images(forgotten))


def drop_indexes_and_staged_uploads(sender: object, **kwargs: object) -> None:
    index_drop_all()
    uploads.staged_clear_all()


def process_here(sender: object, progress: Progress | None = None, batch_size: int | None = None,
                 **kwargs: object) -> None:
    pipeline.process_all_pending(progress=progress, batch_size=batch_size)


def rebuild_after_reload(sender: object, **kwargs: object) -> None:
    indexes_rebuild_in_use()


def count_vectors(sender: object, **kwargs: object) -> list[tuple[int, str]]:
    embeddings, regions = Embedding.objects.count(), RegionEmbedding.objects.count()
    return [(embeddings, f"embedding{pluralize(embeddings)}, and the search indexes"),
            (regions, f"region vector{pluralize(regions)}")]


def ensure_hnsw_indexes(sender: object, **kwargs: object) -> None:
    """After `migrate` (and test-database creation): one pgvector HNSW index per registered model."""
    hnsw_indexes_for_registry(MODELS.values())


def keep_session_preferences(sender: object, request: HttpRequest, user: User, **kwargs: object) -> None:
    if preferences_keep_from_session(user=user, session=request.session):  # over the account's: said, not silent
        messages.info(request, "The search preferences you chose before signing in are now your account's "
                               "(Preferences shows them).", fail_silently=True)


def connect() -> None:
    user_logged_in.connect(keep_session_preferences, dispatch_uid="retrieval-keep-session-preferences")
    events.images_added.connect(enqueue_processing, dispatch_uid="retrieval-enqueue")
    events.images_deleted.connect(forget_deleted_images, dispatch_uid="retrieval-forget-deleted")
    events.gallery_emptied.connect(drop_indexes_and_staged_uploads, dispatch_uid="retrieval-drop-indexes")
    events.processing_wanted.connect(process_here, dispatch_uid="retrieval-process-here")
    events.gallery_reloaded.connect(rebuild_after_reload, dispatch_uid="retrieval-rebuild")
    events.derived_data_counted.connect(count_vectors, dispatch_uid="retrieval-count-vectors")
