"""Work that a stopped worker cluster cut short (a reset, a batch of images), taken up as soon as a
cluster of the main queue starts (`manage.py qcluster`: gallery/management/commands/qcluster.py), and
every 5 minutes by a schedule ("Take up work cut short", migration 0016): what a process outside the
workers cut short too, an `import_folder --sync` killed with SIGKILL, whose images waited while their
pages said "being processed".

The ORM broker hands a task whose worker stopped or died out again only after its retry time
(IMAGINAITION_TASK_RETRY, 12 min), and until then that work waits while its pages say "Running" or
"pending". Handing it out twice is safe: a reset's second copy finds the run alive or ended and
returns, and an image's task claims only images still waiting (its own first, then the oldest)."""

from __future__ import annotations

from dataclasses import dataclass

from gallery import selectors
from gallery.reset import reset_active, reset_resume_cut_short
from gallery.services import images_schedule


@dataclass(frozen=True)
class ResumeReport:
    resets: list[int]  # reset jobs handed to the workers again
    images: list[int]  # waiting images queued again


def work_cut_short_resume() -> ResumeReport:
    resets = reset_resume_cut_short()
    if resets or reset_active():  # a reset processes its folder's images in its own task
        return ResumeReport(resets=resets, images=[])
    return ResumeReport(resets=resets, images=images_waiting_resume())


def images_waiting_resume() -> list[int]:
    """Queue the oldest waiting images again, one for each image beyond the tasks that wait in the
    queue: a stopped worker's taken tasks (or a cut-short `import_folder --sync`) left them with no
    task that will come soon. Every task claims a batch of waiting images, so extra ones end at once."""
    waiting = selectors.images_pending_ids()
    queued = selectors.main_queue_untaken().count()
    uncovered = waiting[: max(len(waiting) - queued, 0)]
    if uncovered:
        images_schedule(uncovered)
    return uncovered


def work_cut_short_resume_scheduled() -> str:
    """The schedule's task: what it took up, in the words of its task result."""
    resumed = work_cut_short_resume()
    return f"taken up again: {len(resumed.resets)} reset job(s), {len(resumed.images)} waiting image(s)"
