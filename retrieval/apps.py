from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_hnsw_indexes(sender, **kwargs) -> None:
    from retrieval.encoders.registry import MODELS
    from retrieval.pgvector_store import hnsw_indexes_for_registry

    hnsw_indexes_for_registry(MODELS.values())


class RetrievalConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "retrieval"
    verbose_name = "Retrieval"

    def ready(self) -> None:
        # After `migrate` (and test-database creation): one pgvector HNSW index per registered model.
        post_migrate.connect(_ensure_hnsw_indexes, sender=self)
