import sys

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_hnsw_indexes(sender, **kwargs) -> None:
    from retrieval.encoders.registry import MODELS
    from retrieval.pgvector_store import hnsw_indexes_for_registry

    hnsw_indexes_for_registry(MODELS.values())


def _forget_deleted_images(sender, image_ids, **kwargs) -> None:
    """Tombstones (same transaction as the delete) tell every process; this one forgets at once."""
    from retrieval.indexes import manager
    from retrieval.models import DeletedImage

    DeletedImage.objects.bulk_create([DeletedImage(image_id=image_id) for image_id in image_ids])
    manager.forget_images(set(image_ids))


class RetrievalConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "retrieval"
    verbose_name = "Retrieval"

    def ready(self) -> None:
        from gallery import events

        # After `migrate` (and test-database creation): one pgvector HNSW index per registered model.
        post_migrate.connect(_ensure_hnsw_indexes, sender=self)
        events.images_deleted.connect(_forget_deleted_images, dispatch_uid="retrieval-forget-deleted")
        if "qcluster" in sys.argv:
            from retrieval.encoders.registry import log_active_models

            log_active_models()
