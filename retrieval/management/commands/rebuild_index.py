from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from retrieval.encoders.registry import MODELS, active_models
from retrieval.indexes import index_rebuild
from retrieval.vector_io import count_vectors


class Command(BaseCommand):
    help = "Rebuild the FAISS indexes of the active models from the vectors stored in PostgreSQL."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all-models", action="store_true",
                            help="also rebuild indexes of registered models that are not active")

    def handle(self, *args: Any, all_models: bool, **options: Any) -> None:
        active = active_models()
        targets = [("semantic", active.semantic), ("content", active.content)]
        if all_models:
            targets = [(spec.role, spec.key) for spec in MODELS.values() if spec.role in ("semantic", "content")]
        for space, key in targets:
            total = count_vectors(model_key=key, space=space)
            dim = MODELS[key].dim
            assert dim is not None  # an embedding model (only segmenters have none)
            with tqdm(total=total, desc=f"{space} {key}", unit="vec", disable=None) as bar:
                report = index_rebuild(space=space, model_key=key, dim=dim, progress=bar.update)
            chosen = "".join(f", {name} {value}" for name, value in report.params.items())
            self.stdout.write(f"{space} {key}: {report.count} vectors, {report.kind}{chosen}, "
                              f"version {report.version}, {report.seconds:.2f} s")
