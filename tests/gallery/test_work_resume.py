"""Work a stopped worker cluster cut short is taken up when the next cluster starts (gallery.work_resume),
not after the queue's retry time."""

from datetime import timedelta

import pytest
from django.core.management import get_commands
from django.utils import timezone
from django_q.models import OrmQ

from gallery.models import Image
from gallery.services import images_schedule
from gallery.work_resume import images_waiting_resume
from tests.gallery.factories import make_image


def _waiting_images(count: int) -> list[int]:
    """Images added as an import adds them: waiting, each with its task in the queue."""
    ids = [make_image(color=(10 * i, 40, 90), name=f"waiting{i}.png", status="pending").pk for i in range(count)]
    images_schedule(ids)
    return ids


def _queued_now() -> list[str]:
    return sorted(entry.task["name"] for entry in OrmQ.objects.filter(lock__lte=timezone.now()))


@pytest.mark.django_db(transaction=True)
def test_waiting_images_whose_tasks_a_stopped_worker_took_are_queued_again(media_root):
    ids = _waiting_images(3)
    # A worker took every task (each locked until its retry time) and stopped.
    assert len(_queued_now()) == 3
    OrmQ.objects.update(lock=timezone.now() + timedelta(seconds=720))

    assert images_waiting_resume() == ids
    assert _queued_now() == sorted(f"process-{image_id}" for image_id in ids)


@pytest.mark.django_db(transaction=True)
def test_images_that_tasks_still_wait_for_are_not_queued_twice(media_root):
    ids = _waiting_images(3)
    assert len(_queued_now()) == 3  # their own tasks, not taken yet
    assert images_waiting_resume() == []

    OrmQ.objects.filter(pk=OrmQ.objects.order_by("pk").first().pk).update(
        lock=timezone.now() + timedelta(seconds=720))  # one taken by a worker that stopped
    assert images_waiting_resume() == ids[:1]  # one more task, for the oldest waiting image
    assert len(_queued_now()) == 3

    OrmQ.objects.all().delete()
    done = make_image(name="done.png")
    Image.objects.filter(pk=done.pk).update(masks_status="ready")  # vectors and masks: nothing to do
    assert images_waiting_resume() == ids


def test_the_qcluster_command_is_the_one_that_takes_work_up_first():
    assert get_commands()["qcluster"] == "gallery"


@pytest.mark.django_db(transaction=True)  # the scheduler closes the connection
def test_images_a_killed_sync_import_left_waiting_are_queued_by_the_main_workers_within_minutes(media_root):
    """`import_folder --sync` adds images without tasks and processes them itself: killed (SIGKILL), it left
    them waiting, with no task, while their pages said "being processed", until a cluster started again."""
    from importlib import import_module

    from django.apps import apps
    from django.utils.module_loading import import_string
    from django_q.models import Schedule
    from django_q.scheduler import scheduler
    from django_q.signing import SignedPackage

    ids = [make_image(color=(10 * i, 40, 90), name=f"cut{i}.png", status="pending").pk for i in range(2)]
    assert not OrmQ.objects.exists()
    # Made by a migration; a transactional test before this one may have emptied the table: made again.
    import_module("gallery.migrations.0016_take_up_work_cut_short_every_5_minutes").schedule_resume(apps, None)
    schedule = Schedule.objects.get(name="Take up work cut short")
    assert (schedule.schedule_type, schedule.minutes, schedule.cluster) == (Schedule.MINUTES, 5, None)
    Schedule.objects.filter(pk=schedule.pk).update(next_run=timezone.now() - timedelta(seconds=1))
    Schedule.objects.exclude(pk=schedule.pk).update(next_run=timezone.now() + timedelta(hours=1))  # not theirs
    scheduler()  # what the main cluster's guard runs every 30 s

    queued = [SignedPackage.loads(task.payload) for task in OrmQ.objects.all()]
    assert [task["func"] for task in queued] == [schedule.func]
    OrmQ.objects.all().delete()
    said = import_string(queued[0]["func"])(*queued[0]["args"], **queued[0]["kwargs"])  # as a worker runs it
    assert said == "taken up again: 0 reset job(s), 2 waiting image(s)"
    assert _queued_now() == sorted(f"process-{image_id}" for image_id in ids)
    assert Schedule.objects.get(pk=schedule.pk).next_run > timezone.now() + timedelta(minutes=4)
