from django.core.management.base import BaseCommand, CommandError, CommandParser

from gallery.folders import FolderRefused, import_folder_check
from gallery.management.arguments import at_least, batch_size_with_sync
from gallery.management.output import command_output, progress_bar
from gallery.management.processing import process_pending_here, waiting_handed_to_workers
from gallery.services import StorageFailed, folder_files, folder_import, names_shortened


class Command(BaseCommand):
    help = ("Add every image in a folder (under IMAGINAITION_IMPORT_ROOTS). Duplicates (same bytes) are skipped, bad files are reported "
            "and skipped; embeddings and masks are computed by the workers, or here with --sync.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="the folder (relative to where the command runs, or absolute)")
        parser.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
        parser.add_argument("--sync", action="store_true",
                            help="compute embeddings and masks in this process, batched (fast first load); this also "
                                 "finishes images an earlier, interrupted run left waiting")
        parser.add_argument("--batch-size", type=at_least(1), default=None,
                            help="images per model forward pass (--sync)")

    def handle(self, *args: str, path: str, recursive: bool, sync: bool, batch_size: int | None, verbosity: int,
               **options: object) -> None:
        batch_size_with_sync(batch_size, sync=sync)
        try:
            folder = import_folder_check(path, require_absolute=False)
        except FolderRefused as exc:
            raise CommandError(str(exc)) from None
        total, read = 0, 0

        def counted(files: int) -> None:
            nonlocal read
            read += files
            bar.update(files)

        try:
            total = len(folder_files(root=folder, recursive=recursive)[0])
            with progress_bar(total=total, desc="adding", unit="file", disable=None if verbosity else True) as bar:
                report = folder_import(root=folder, recursive=recursive, enqueue=not sync, progress=counted)
        except StorageFailed as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:  # the folder, or whatever else failed (named by the error when it names a file)
            raise CommandError(f"{exc.filename or folder}: {exc.strerror or exc}") from exc
        except KeyboardInterrupt:
            left = f" {waiting_handed_to_workers()}" if sync else ""  # without --sync, each added file is queued
            # How far it got: piped to a file, without the bar, the operator saw nothing of it.
            raise CommandError(f"Interrupted after {read} of {total} files. Every file added so far is stored whole; "
                               f"run the same command again to add the rest.{left}") from None

        say, warn = command_output(self, verbosity)
        say(f"added: {len(report.added)}, duplicates: {len(report.duplicates)}, rejected: {len(report.rejected)}")
        for relative, reason in report.rejected:
            warn(f"  rejected {relative}: {reason}")
        if verbosity > 1:
            for relative in report.duplicates:
                say(f"  duplicate {relative}: the same bytes are already stored")
        if report.folders_not_read:
            say(f"sub-folders not read (add --recursive to import them too): "
                f"{names_shortened(report.folders_not_read)}")
        if report.rejected and not report.added and not report.duplicates:
            raise CommandError(f"None of the {len(report.rejected)} files could be added (the reasons are above).")
        if sync:
            process_pending_here(self, batch_size=batch_size, verbosity=verbosity)
