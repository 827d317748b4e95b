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
