from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gallery.management.arguments import at_least
from gallery.management.output import progress_bar
from gallery.storage import STORAGE_ERRORS, storage_failure_reason
from gallery.storage_check import (
    StorageReport,
    storage_check,
    storage_orphans_delete,
    storage_settings_named,
)

LISTED = 20  # names shown of each kind; the counts are complete


class Command(BaseCommand):
    help = ("Check stored files against the gallery's images, both ways: files no image refers to (left by a "
            "process killed while adding an image; --delete removes them) and images whose file is gone.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--delete", action="store_true", help="delete the files no image refers to")
        parser.add_argument("--force", action="store_true",
                            help="with --delete: delete them even when more stored originals are referred to by no "
                                 "image than by one (refused otherwise: that is a check against the wrong database)")
        parser.add_argument("--older-than", type=at_least(1), default=60, metavar="MINUTES",
                            help="only files older than this count (60): a younger one may be an image being "
                                 "added right now, its row not yet committed")

    def handle(self, *args: str, delete: bool, force: bool, older_than: int, **options: object) -> None:
        if force and not delete:  # else a check, the --force ignored without a word
            raise CommandError("--force is an option of --delete: add --delete to remove the files no image refers to")
        try:
            with progress_bar(desc="checking stored files", unit="file", disable=None) as bar:
                report = storage_check(min_age=timedelta(minutes=older_than), progress=bar.update)
        except STORAGE_ERRORS as exc:
            raise storage_failed("Checking the stored files", exc) from exc
        self._report(report, delete=delete, force=force, older_than=older_than)

    def _report(self, report: StorageReport, *, delete: bool, force: bool, older_than: int) -> None:
        # Files restored from a backup keep their times: "0 referred to by no image" within the hour of a
        # restore hid the files of images the dump did not have.
        young = (f"; {report.young} more referred to by no image {'is' if report.young == 1 else 'are'} younger "
                 f"than {older_than} minute{'s' if older_than != 1 else ''}: not judged (maybe being added now; "
                 "--older-than)") if report.young else ""
        self.stdout.write(f"{report.checked} stored files checked, {len(report.orphans)} referred to by no image "
                          f"({report.orphan_bytes / 1e6:.1f} MB){young}")
        for stored in report.orphans[:LISTED]:
            self.stdout.write(f"  no image: {stored.name} ({stored.size} bytes)")
        if len(report.orphans) > LISTED:
            self.stdout.write(f"  ... and {len(report.orphans) - LISTED} more")
        if delete and report.orphans and report.looks_like_another_database and not force:
            database = settings.DATABASES["default"]
            raise CommandError(
                f"Nothing was deleted: {report.orphaned_originals} stored originals are referred to by no image "
                f"(and {report.referenced} by one) in database {database['NAME']!r}"
                f"{' at ' + database['HOST'] if database.get('HOST') else ''}. Is it the gallery's (DATABASE_URL, "
                "IMAGINAITION_DATABASE_NAME)? Deleting would remove the gallery's pictures; --force deletes them "
                "anyway.")
        if delete and report.orphans:
            try:
                deleted = storage_orphans_delete(report)
            except STORAGE_ERRORS as exc:
                raise storage_failed("Deleting the files referred to by no image", exc) from exc
            self.stdout.write(f"deleted {deleted} files referred to by no image")
        elif report.orphans:
            self.stdout.write("run again with --delete to remove them")
        if report.missing:
            shown = ", ".join(str(image_id) for image_id in report.missing[:LISTED])
            more = f" and {len(report.missing) - LISTED} more" if len(report.missing) > LISTED else ""
            raise CommandError(f"{len(report.missing)} image(s) whose file is gone: {shown}{more}. Put the files back "
                               "(from a backup of the media folder), or delete these images.")


def storage_failed(what: str, exc: BaseException) -> CommandError:
    """One line that names the storage and why it failed, not botocore's traceback."""
    return CommandError(f"{what} failed: the media storage could not be reached: {storage_failure_reason(exc)}. "
                        f"Check {storage_settings_named()}, then run it again.")
