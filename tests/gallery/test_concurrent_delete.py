"""Deleting an image while other work still touches it: a worker writing its masks, a page making its
thumbnail. The delete wins cleanly: no error, no row or file left behind."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from gallery import services, thumbnails
from gallery.models import Image, Mask
from tests.gallery.factories import add_mask, make_image


def in_thread(work) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.mark.django_db(transaction=True)
def test_a_delete_waits_for_a_worker_writing_the_images_masks_then_removes_them_too(media_root):
    image = make_image()
    writing, written = threading.Event(), threading.Event()

    def worker_writes_a_mask() -> None:  # as pipeline._write does: the image row locked, then its rows
        with transaction.atomic():
            Image.objects.select_for_update().get(pk=image.pk)
            add_mask(image, label="cat")
            writing.set()
            written.wait(10)

    worker, worker_errors = in_thread(worker_writes_a_mask)
    assert writing.wait(10)
    deleter, delete_errors = in_thread(lambda: services.image_delete(image=Image.objects.get(pk=image.pk)))
    time.sleep(0.5)  # the delete is now waiting on the worker's lock (before the fix: it had listed no mask)
    written.set()
    worker.join(10)
    deleter.join(10)

    assert worker_errors == [] and delete_errors == []
    assert not Image.objects.filter(pk=image.pk).exists() and not Mask.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_thumbnail_made_while_its_image_is_deleted_is_not_left_behind(media_root, monkeypatch):
    image = make_image(size=(300, 200))
    real_write = thumbnails.stored_write_once

    def deleted_just_before_the_write(name, data):
        services.image_delete(image=Image.objects.get(pk=image.pk))  # its files go, none of this size yet
        return real_write(name, data)

    monkeypatch.setattr(thumbnails, "stored_write_once", deleted_just_before_the_write)
    assert thumbnails.thumbnail_bytes(image=image, size=128)[:4] == b"RIFF"  # the caller still gets it
    assert [path for path in media_root.rglob("*") if path.is_file()] == []
