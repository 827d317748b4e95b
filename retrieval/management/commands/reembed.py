from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from tqdm import tqdm

from retrieval.pipeline import images_reembed_for_active_models, process_all_pending
from retrieval.encoders.registry import active_models


class Command(BaseCommand):
    help = ("After a model change (profile or weights): queue every image that lacks an embedding by the "
            "active models. Their old vectors stay; --sync computes here instead of in the workers.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sync", action="store_true", help="compute in this process, batched")

    def handle(self, *args: Any, sync: bool, **options: Any) -> None:
        models = active_models()
        ids = images_reembed_for_active_models(enqueue=not sync)
        self.stdout.write(f"active models ({models.profile}): {models.semantic}, {models.content}; "
                          f"{len(ids)} images to embed")
        if sync and ids:
            with tqdm(total=len(ids), desc="embedding", unit="image", disable=None) as bar:
                process_all_pending(progress=bar.update)
