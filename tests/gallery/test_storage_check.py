"""`manage.py storage_check`: stored files against image rows, both ways."""

import os
import time

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command

from gallery.models import Image
from gallery.thumbnails import thumbnail_bytes, thumbnail_names
from tests.gallery.factories import make_image

SHA = "ab" * 32


def _store(name: str, data: bytes, *, age_s: float) -> str:
    saved = default_storage.save(name, ContentFile(data))
    stamp = time.time() - age_s
    os.utime(default_storage.path(saved), (stamp, stamp))
    return saved


@pytest.mark.django_db
def test_files_no_image_refers_to_are_listed_then_deleted_and_the_gallery_keeps_its_own(media_root, capsys):
    kept = make_image(name="kept.png")
    thumbnail_bytes(image=kept, size=128)
    # What killed processes leave, two hours ago: a file whose row never committed, a half-written
    # file, the thumbnail of an image deleted since.
    left = [_store(f"images/ab/ab/{SHA}.png", b"x" * 10, age_s=7200),
            _store("images/ab/ab/.partial-k3j2", b"y" * 5, age_s=7200),
            _store(f"thumbs/cd/{'cd' * 32}-256.webp", b"z" * 7, age_s=7200)]
    being_added = _store(f"images/ef/ef/{'ef' * 32}.jpg", b"w", age_s=5)  # its row may commit any moment

    call_command("storage_check")
    out = capsys.readouterr().out
    assert ("6 stored files checked, 3 referred to by no image (0.0 MB); 1 more referred to by no image is younger "
            "than 60 minutes: not judged (maybe being added now; --older-than)") in out
    assert all(f"no image: {name}" in out for name in left) and being_added not in out
    assert all(default_storage.exists(name) for name in left)  # only listed without --delete

    call_command("storage_check", "--delete")
    assert "deleted 3 files referred to by no image" in capsys.readouterr().out
    assert not any(default_storage.exists(name) for name in left)
    assert default_storage.exists(being_added)
    assert default_storage.exists(kept.file.name) and default_storage.exists(thumbnail_names(image=kept)[0])

    call_command("storage_check", "--older-than", "1")  # even at a minute, the 5 s old file is left alone
    assert "3 stored files checked, 0 referred to by no image" in capsys.readouterr().out


@pytest.mark.django_db
def test_an_orphan_whose_image_came_back_since_the_check_is_not_deleted(media_root):
    from datetime import timedelta

    from gallery.storage_check import storage_check, storage_orphans_delete

    image = make_image(name="back.png")
    name = image.file.name
    Image.objects.filter(pk=image.pk).delete()  # its file stays: an orphan
    os.utime(default_storage.path(name), (time.time() - 7200,) * 2)
    report = storage_check(min_age=timedelta(hours=1))
    assert [stored.name for stored in report.orphans] == [name]

    image.pk = None
    image.save()  # the same bytes added again meanwhile: the content-addressed name is its file again
    assert storage_orphans_delete(report) == 0 and default_storage.exists(name)


@pytest.mark.django_db
def test_images_whose_file_is_gone_are_named_and_the_command_fails(media_root):
    whole = make_image(name="whole.png")
    lost = make_image(color=(0, 90, 0), name="lost.png")
    default_storage.delete(lost.file.name)

    with pytest.raises(CommandError, match=rf"^1 image\(s\) whose file is gone: {lost.pk}\. Put the files back"):
        call_command("storage_check")
    assert default_storage.exists(whole.file.name)


@pytest.mark.django_db
def test_the_status_integrity_check_names_the_same_images_whose_file_is_gone(media_root, settings, tmp_path):
    from retrieval.integrity import integrity_check

    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    make_image(name="whole.png")
    lost = make_image(color=(0, 90, 0), name="lost.png")
    default_storage.delete(lost.file.name)

    report = integrity_check(check_files=True)
    assert report.missing_files == [lost.pk] and report.state == "stored file missing"
    assert integrity_check(check_files=False).missing_files == []


@pytest.mark.django_db
def test_deleting_is_refused_when_most_originals_are_orphans_a_check_against_the_wrong_database(media_root, capsys):
    """An empty database (a mistyped DATABASE_URL, one forgotten after a restore) made every stored
    original an orphan, and --delete removed the whole gallery's pictures without a word."""
    pictures = [_store(f"images/{n}{n}/{n}{n}/{f'{n}{n}' * 32}.jpg", b"p" * 20, age_s=7200) for n in "abc"]

    recent = _store(f"images/dd/dd/{'dd' * 32}.jpg", b"r" * 20, age_s=60)  # too young to count as an orphan
    with pytest.raises(CommandError, match=r"Nothing was deleted: 3 stored originals are referred to by no image "
                                           r"\(and 0 by one\) in database '.+'\. Is it the gallery's \(DATABASE_URL"):
        call_command("storage_check", "--delete")
    assert all(default_storage.exists(name) for name in pictures)
    with pytest.raises(CommandError, match="--force is an option of --delete"):  # a check ran, the option ignored
        call_command("storage_check", "--force")

    call_command("storage_check", "--delete", "--force")
    assert "deleted 3 files referred to by no image" in capsys.readouterr().out
    assert not any(default_storage.exists(name) for name in pictures) and default_storage.exists(recent)


@pytest.mark.django_db
def test_one_picture_checked_against_an_empty_database_is_not_deleted(media_root):
    lone = _store(f"images/ee/ee/{'ee' * 32}.jpg", b"q" * 20, age_s=7200)
    with pytest.raises(CommandError, match="Nothing was deleted: 1 stored originals"):
        call_command("storage_check", "--delete")
    assert default_storage.exists(lone)
