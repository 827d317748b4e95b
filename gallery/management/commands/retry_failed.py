from django.core.management.base import BaseCommand, CommandParser

from gallery import selectors
from gallery.management.arguments import at_least, batch_size_with_sync
from gallery.management.output import command_output
from gallery.management.processing import process_pending_here
from gallery.models import Image
from gallery.services import images_retry_failed, names_shortened
from gallery.storage_check import stored_file_missing


class Command(BaseCommand):
    help = ("Process again every image whose vectors or masks failed, once the cause is fixed (e.g. the weights "
            "fetched with fetch_weights): by the workers, or here with --sync.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sync", action="store_true", help="process them in this process, batched")
        parser.add_argument("--batch-size", type=at_least(1), default=None,
                            help="images per model forward pass (--sync)")

    def handle(self, *args: str, sync: bool, batch_size: int | None, verbosity: int, **options: object) -> None:
        batch_size_with_sync(batch_size, sync=sync)
        # An image whose stored file is gone fails again at once (it was queued at every run): adding the same
        # file again restores it, as its page says.
        failed = list(Image.objects.filter(selectors.FAILED).only("pk", "file", "original_name").order_by("pk"))
        lost = [image for image in failed if stored_file_missing(image)]
        ids = images_retry_failed(ids=[image.pk for image in failed if image not in lost], enqueue=not sync)
        say, warn = command_output(self, verbosity)
        say(f"{len(ids)} failed image{'s' if len(ids) != 1 else ''} "
            f"{'to process here' if sync else 'queued for the workers'}")
        if lost:
            named = names_shortened([f"{image.original_name} (image {image.pk})" for image in lost])
            warn(f"{len(lost)} left as they are: the stored file is missing ({named}); adding the same file again "
                 "restores it (`storage_check` lists them)")
        if sync:
            process_pending_here(self, batch_size=batch_size, verbosity=verbosity)
