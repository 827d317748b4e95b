import sys

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RetrievalConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "retrieval"
    verbose_name = "Retrieval"

    def ready(self) -> None:
        # Imported here, as Django asks: receivers import models, which need the app registry.
        from retrieval import receivers
        from retrieval.encoders.registry import log_active_models

        receivers.connect()
        post_migrate.connect(receivers.ensure_hnsw_indexes, sender=self)
        if "qcluster" in sys.argv:
            log_active_models()
