from __future__ import annotations

import itertools
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from gallery.management.output import progress_bar
from retrieval.encoders.registry import MODELS, model_dim
from retrieval.index_build import recall_shortfall
from retrieval.indexes import index_rebuild
from retrieval.serving import keys_in_use
from retrieval.spaces import VECTOR_OWNERS
from retrieval.vector_io import count_vectors


class Command(BaseCommand):
    help = ("Rebuild the FAISS indexes (image and region vectors) of the models in use from the vectors "
            "stored in PostgreSQL.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all-models", action="store_true",
                            help="also rebuild indexes of registered models that are not active")

    def handle(self, *args: Any, all_models: bool, **options: Any) -> None:
        in_use: list[tuple[str, str]] = [(str(space), key) for space, key in keys_in_use()]
        targets = in_use
        if all_models:
            targets = [(spec.role, spec.key) for spec in MODELS.values() if spec.role in ("semantic", "content")]
        for owner, (space, key) in itertools.product(VECTOR_OWNERS, targets):
            total = count_vectors(model_key=key, space=space, owner=owner)
            if not total and (owner == "region" or (space, key) not in in_use):
                continue  # no vectors by a model no search asks: nothing to build (an empty index would be a file)
            label = f"{'region ' if owner == 'region' else ''}{space} {key}"
            with progress_bar(total=total, desc=label, unit="vec", disable=None) as bar:
                report = index_rebuild(space=space, model_key=key, dim=model_dim(key), progress=bar.update, owner=owner)
            chosen = "".join(f", {name} {value}" for name, value in report.params.items())
            self.stdout.write(f"{label}: {report.count} vectors, {report.kind}{chosen}, "
                              f"version {report.version}, {report.seconds:.2f} s")
            shortfall = recall_shortfall(kind=report.kind, params=report.params, count=report.count)
            if shortfall:  # usable, so the command succeeds; but the operator should see it
                self.stderr.write(f"{label}: warning: {shortfall}", style_func=self.style.WARNING)
