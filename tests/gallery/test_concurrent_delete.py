"""Deleting an image while other work still touches it: a worker writing its masks, a page making its
thumbnail. The delete wins cleanly: no error, no row or file left behind."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from gallery import services, storage_check, thumbnails
from gallery.models import Image, Mask
from tests.gallery.factories import add_mask, make_image, png_bytes


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


@pytest.mark.django_db(transaction=True)
def test_the_same_bytes_added_while_their_image_is_deleted_make_a_new_image(media_root):
    """An add that found the image being deleted answered "already in the gallery" with the deleted
    image (the page then said 404): it waits for the delete and adds the picture anew."""
    data = png_bytes((10, 200, 30), (40, 30))
    first = services.image_add(data=data, original_name="same.png", enqueue=False).image
    deleting, go_on = threading.Event(), threading.Event()

    def delete_slowly() -> None:  # as image_delete does, held open a moment
        with transaction.atomic():
            Image.objects.select_for_update().get(pk=first.pk).delete()
            deleting.set()
            go_on.wait(10)

    deleter, errors = in_thread(delete_slowly)
    assert deleting.wait(10)
    threading.Timer(0.5, go_on.set).start()  # the add below starts while the delete holds the row
    added = services.image_add(data=data, original_name="again.png", enqueue=False)
    deleter.join(10)
    assert errors == []
    assert added.created and added.image.pk != first.pk and added.image.original_name == "again.png"
    assert list(Image.objects.values_list("pk", flat=True)) == [added.image.pk]
    assert added.image.file.storage.exists(added.image.file.name)


@pytest.mark.django_db(transaction=True)
def test_the_same_bytes_added_while_a_deleted_images_file_is_being_removed_keep_their_file(media_root, monkeypatch):
    """The delete had committed and its file, not yet removed, was taken by an add of the same bytes (no second
    copy); then the delete removed it: an image without its file ("The stored file is missing")."""
    data = png_bytes((10, 200, 30), (40, 30))
    first = services.image_add(data=data, original_name="same.png", enqueue=False).image
    removing, go_on = threading.Event(), threading.Event()
    real_delete = storage_check.stored_delete

    def remove_slowly(names: list[str]) -> None:
        removing.set()
        go_on.wait(10)
        real_delete(names)

    monkeypatch.setattr(storage_check, "stored_delete", remove_slowly)
    deleter, errors = in_thread(lambda: services.image_delete(image=Image.objects.get(pk=first.pk)))
    assert removing.wait(10)  # the row's delete is committed, its file still stored
    threading.Timer(0.5, go_on.set).start()
    added = services.image_add(data=data, original_name="again.png", enqueue=False)
    deleter.join(10)
    assert errors == [] and added.created
    assert added.image.file.storage.exists(added.image.file.name)


@pytest.mark.django_db(transaction=True)
def test_a_removal_that_runs_after_the_same_bytes_were_added_again_leaves_their_file(media_root):
    """The other order: the add took the file first; the removal (a reset's, late) finds the picture back."""
    data = png_bytes((10, 200, 30), (40, 30))
    first = services.image_add(data=data, original_name="same.png", enqueue=False).image
    names = [first.file.name]
    Image.objects.filter(pk=first.pk).delete()  # committed; its files not removed yet
    added = services.image_add(data=data, original_name="again.png", enqueue=False)
    assert added.created and added.image.file.name == first.file.name  # the stored file taken as it was
    storage_check.deleted_images_files_remove([(first.sha256, names)], deleted="image was deleted")
    assert added.image.file.storage.exists(added.image.file.name)
    other = services.image_add(data=png_bytes((1, 2, 3), (8, 8)), original_name="other.png", enqueue=False).image
    Image.objects.filter(pk=other.pk).delete()
    storage_check.deleted_images_files_remove([(other.sha256, [other.file.name])], deleted="image was deleted")
    assert not other.file.storage.exists(other.file.name)  # one not added again: removed


@pytest.mark.django_db(transaction=True)
def test_of_two_deletes_of_one_image_the_second_is_told_it_found_nothing(media_root):
    """Two users deleting at once both read "Deleted": the second, waiting on the first's lock, deleted
    nothing. It is told so (the API answers 404, the page says it was already deleted)."""
    image = make_image()
    stale = Image.objects.get(pk=image.pk)  # the second request's copy, read before the first delete
    assert services.image_delete(image=image) is True
    assert services.image_delete(image=stale) is False
    assert not Image.objects.exists()
