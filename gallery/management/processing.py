"""What the commands that process images here (import_folder --sync, retry_failed --sync) share."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from gallery import selectors
from gallery.management.output import command_output, progress_bar
from gallery.services import images_process_here
from gallery.work_resume import images_waiting_resume


def process_pending_here(command: BaseCommand, *, batch_size: int | None, verbosity: int = 1) -> None:
    """--sync: compute what every waiting image lacks, this run's and any an earlier run left (an
    interrupted import, a reset without workers), then name the images that failed (CommandError; with
    verbosity 0 nothing else is written, and the failed images go to stderr)."""
    waiting = selectors.images_pending_ids()
    if not waiting:
        return
    say, warn = command_output(command, verbosity)
    say(f"processing {len(waiting)} waiting image{'s' if len(waiting) != 1 else ''} here")
    here = 0
    try:
        with progress_bar(total=len(waiting), desc="embedding", unit="image",
                          disable=None if verbosity else True) as bar:
            def done_here(count: int) -> None:
                nonlocal here
                here += count
                bar.update(count)

            images_process_here(progress=done_here, batch_size=batch_size)
    except KeyboardInterrupt:
        raise CommandError(f"Interrupted while processing. {waiting_handed_to_workers()}") from None
    failed = selectors.images_failed(ids=waiting)
    say(_summary(waiting, failed=len(failed), here=here))
    for image in failed[:20]:
        warn(f"  failed {image.original_name} (image {image.pk}): {image.error or image.masks_error}")
    if failed:
        more = f" ({len(failed) - 20} more not listed)" if len(failed) > 20 else ""
        raise CommandError(f"{len(failed)} of {len(waiting)} images could not be processed{more}; once the cause "
                           "is fixed, `manage.py retry_failed --sync` processes them again.")


def _summary(waiting: list[int], *, failed: int, here: int) -> str:
    """What became of the waiting images, counted in the database: it said "processed: 12" of 12 when 6 were
    deleted meanwhile, and two runs at once each claimed all 30 of the same folder."""
    there, still_waiting = selectors.images_still_there(ids=waiting)
    parts = [f"processed: {there - still_waiting - failed}", f"failed: {failed}"]
    if here != there - still_waiting:  # (done counts failed images too)
        parts.append(f"done by this run: {here}, the rest by workers or another run")
    if still_waiting:
        parts.append(f"still being processed elsewhere: {still_waiting}")
    if len(waiting) > there:
        parts.append(f"deleted meanwhile: {len(waiting) - there}")
    return ", ".join(parts)


def waiting_handed_to_workers() -> str:
    """After Ctrl-C: queue the images left waiting, so that a running worker cluster takes them now (one that
    starts later would too, but a running one never looks for them), and say so."""
    handed = images_waiting_resume()
    if not selectors.images_pending_count():
        return "No image is left waiting."
    queued = f" ({len(handed)} queued now)" if handed else ""
    return ("The images left waiting are the workers' to finish" + queued + ": a running `manage.py qcluster` "
            "takes them at once, or the same command with --sync finishes them here.")
