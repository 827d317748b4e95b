from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from gallery.management.output import command_output
from gallery.management.processing import process_pending_here
from gallery.selectors import images_failed_count
from retrieval.encoders.registry import active_models
from retrieval.pipeline import images_reembed_for_active_models


class Command(BaseCommand):
    help = ("After a model change (profile, weights or segmenter): queue every image that lacks a vector of "
            "the active models, or whose masks another segmenter made. Old vectors stay; --sync computes here "
            "instead of in the workers.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sync", action="store_true", help="compute in this process, batched")

    def handle(self, *args: Any, sync: bool, verbosity: int, **options: Any) -> None:
        models = active_models()
        plan = images_reembed_for_active_models(enqueue=not sync)
        say = command_output(self, verbosity).say
        say(f"active models ({models.profile}): semantic {models.semantic}, content {models.content}, "
            f"segmenter {models.segmenter}; {len(plan.embed)} images to embed, {len(plan.segment)} to "
            f"segment again ({len(plan.ids)} in all)")
        if sync:  # these, and any an interrupted run left waiting (it had already put them back in the queue)
            process_pending_here(self, batch_size=None, verbosity=verbosity)
        if failed := images_failed_count():  # e.g. under models whose weights were missing: not retried by this
            say(f"{failed} image{'s' if failed != 1 else ''} failed earlier; once the cause is fixed "
                "(e.g. after a model change back), `python manage.py retry_failed` processes them again")
