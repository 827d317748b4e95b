import os
import sys

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class RetrievalConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "retrieval"
    verbose_name = "Retrieval"

    def ready(self) -> None:
        # Imported here, as Django asks: receivers import models, which need the app registry.
        from django.conf import settings

        from imaginaition_site.malloc import reuse_large_blocks
        from retrieval import checks, indexes, receivers, uploads  # noqa: F401 - checks registers itself
        from retrieval.encoders.devices import threads_configure
        from retrieval.encoders.registry import log_active_models

        receivers.connect()
        # A web host whose index folder lacks a version published by another host builds its own copy.
        indexes.manager.copy_builder = indexes.index_copy_build
        post_migrate.connect(receivers.ensure_hnsw_indexes, sender=self)
        # Each process takes its share of the cores for torch (the workers fork from the cluster
        # process and inherit it): cores / worker processes, or cores / web processes.
        if "qcluster" in sys.argv:
            # The interactive cluster's one worker runs briefly, while a person waits: all the cores.
            interactive = os.environ.get("Q_CLUSTER_NAME") == uploads.INTERACTIVE_CLUSTER
            threads_configure(1 if interactive else settings.IMAGINAITION_WORKERS)
            reuse_large_blocks()  # before the cluster forks its workers: they inherit it
            log_active_models()
        elif "runserver" in sys.argv or "gunicorn" in sys.argv[0]:
            threads_configure(settings.IMAGINAITION_WEB_PROCESSES)
