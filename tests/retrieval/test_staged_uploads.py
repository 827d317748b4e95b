"""Staged uploads: bytes in the file storage, facts and masks in the database; an hour later both go."""

import os
import re
import threading
import time
from datetime import timedelta

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from retrieval import uploads
from retrieval.models import StagedUploadMask, StagedUploadRecord
from tests.retrieval.test_pipeline import jpeg


@pytest.mark.django_db
def test_expired_uploads_and_orphan_files_are_removed_and_fresh_ones_kept(media_root, settings):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    session = SessionStore()
    old = uploads.staged_add(data=jpeg("chelsea"), name="chelsea.jpg", session=session)
    assert old.state == "ready" and StagedUploadMask.objects.filter(upload__token=old.token).exists()
    StagedUploadRecord.objects.filter(token=old.token).update(
        created_at=timezone.now() - timedelta(seconds=uploads.MAX_AGE_SECONDS + 5))
    orphan = media_root / "staging" / "0123abcd.upload"  # left by a process that died before its row
    orphan.write_bytes(b"bytes without a record")
    recent_orphan = media_root / "staging" / "4567abcd.upload"  # may be a row being written right now
    recent_orphan.write_bytes(b"bytes whose record may be on its way")
    an_hour_ago = time.time() - uploads.MAX_AGE_SECONDS - 5
    os.utime(orphan, (an_hour_ago, an_hour_ago))

    fresh = uploads.staged_add(data=jpeg("coffee"), name="coffee.jpg", session=SessionStore())

    assert list(StagedUploadRecord.objects.values_list("token", flat=True)) == [fresh.token]
    assert not StagedUploadMask.objects.filter(upload__token=old.token).exists()
    remaining = sorted(path.name for path in (media_root / "staging").iterdir())
    assert remaining == sorted([f"{fresh.token}.upload", recent_orphan.name])
    assert uploads.staged_get(session=session) is None  # the old session's upload has expired
    assert uploads.staged_missing_message(session=session) == ("Your upload has expired (uploads are kept for 60 "
                                                                "minutes, at most 100 at once for everyone); choose "
                                                                "the file again.")
    assert uploads.staged_missing_message(session=SessionStore()) == "Nothing is uploaded yet: choose a file first."
    assert fresh.data() == jpeg("coffee") and set(fresh.masks()) == {label["label"] for label in fresh.labels}


@pytest.mark.django_db(transaction=True)
def test_clearing_an_upload_while_a_worker_commits_its_masks_deletes_both(media_root):
    """"Add to database" (which clears the staged upload) while the interactive worker was storing its
    masks: Django collected no mask, the worker committed its masks, and deleting the record broke
    their foreign key (a 500). The worker holds the record locked while it stores them; so does a delete."""
    token = "ab" * 12
    record = StagedUploadRecord.objects.create(token=token, name="x.jpg", width=4, height=4, state="working")
    session = SessionStore()
    session[uploads.SESSION_KEY] = token
    masks_stored, committed, errors = threading.Event(), threading.Event(), []

    def worker_storing_masks() -> None:
        try:
            with transaction.atomic():  # as staged_segment stores them
                StagedUploadRecord.objects.select_for_update().get(token=token)
                StagedUploadMask.objects.create(upload=record, class_index=15, probability_png=b"png")
                masks_stored.set()
                time.sleep(0.5)  # the page's click comes now
        finally:
            committed.set()
            connection.close()

    def clearing() -> None:
        masks_stored.wait(10)
        try:
            uploads.staged_clear(session=session)
        except Exception as exc:  # noqa: BLE001 - what the page's request would have answered 500 with
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker_storing_masks), threading.Thread(target=clearing)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert committed.is_set() and not errors, errors
    assert not StagedUploadRecord.objects.exists() and not StagedUploadMask.objects.exists()


@pytest.mark.django_db
def test_past_the_most_kept_at_once_a_new_upload_ends_the_oldest(media_root, settings, monkeypatch):
    """A public gallery's visitors (a fresh session each) kept any number of uploads, each up to the upload
    limit, for an hour: 10 anonymous posts of 6.8 MB left 65 MB in staging."""
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    monkeypatch.setattr(uploads, "MAX_STAGED", 3)
    sessions = [SessionStore() for _ in range(4)]
    staged = [uploads.staged_add(data=jpeg(name), name=f"{name}.jpg", session=session)
              for name, session in zip(("chelsea", "coffee", "astronaut", "rocket"), sessions, strict=True)]
    kept = sorted(StagedUploadRecord.objects.values_list("token", flat=True))
    assert kept == sorted(upload.token for upload in staged[1:])
    assert sorted(path.name for path in (media_root / "staging").iterdir()) == [f"{token}.upload" for token in kept]
    assert not StagedUploadMask.objects.filter(upload__token=staged[0].token).exists()
    # Its visitor is told why it went: it had not been an hour, nor was anything done in another tab.
    why = "uploads are kept for 60 minutes, at most 3 at once for everyone"
    assert why in uploads.staged_missing_message(session=sessions[0])
    with pytest.raises(uploads.UploadReplaced, match=why):
        uploads.staged_get(session=sessions[0], token=staged[0].token)


@pytest.mark.django_db
def test_a_picture_that_is_not_an_image_stages_nothing(media_root):
    from gallery.imaging import ImageRejected

    with pytest.raises(ImageRejected):
        uploads.staged_add(data=b"not a picture", name="x.jpg", session=SessionStore())
    assert not StagedUploadRecord.objects.exists()
    assert not (media_root / "staging").exists() or not any((media_root / "staging").iterdir())


@pytest.mark.django_db
def test_past_the_waiting_limit_a_new_upload_is_refused_until_the_queue_moves(media_root, settings, monkeypatch):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    monkeypatch.setattr(uploads, "MAX_WAITING", 3)
    for index in range(3):  # uploads whose labels are still being found, from other sessions
        StagedUploadRecord.objects.create(token=f"{index:024x}", name=f"{index}.jpg", width=1, height=1,
                                          state="working")
    with pytest.raises(uploads.SegmentationUnavailable, match="finding the labels of 3 other pictures"):
        uploads.staged_add(data=jpeg("chelsea"), name="chelsea.jpg", session=SessionStore())
    assert StagedUploadRecord.objects.count() == 3 and not (media_root / "staging").exists()
    # One of them timed out long ago: it no longer holds a place.
    StagedUploadRecord.objects.filter(token=f"{0:024x}").update(
        updated_at=timezone.now() - timedelta(seconds=settings.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT + 1))
    assert uploads.staged_add(data=jpeg("chelsea"), name="chelsea.jpg", session=SessionStore()).state == "ready"


@pytest.mark.django_db
def test_a_refused_upload_names_its_file_and_the_picture_still_shown(client, user, media_root, settings):
    """The search page said "The image is damaged or truncated: ..." alone, above "Your image: <the file
    loaded before>" and its "Add to database": which file was refused, and which one that button adds?"""
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    client.force_login(user)
    refused = client.post(reverse("pages:home"), {"file": SimpleUploadedFile("notes.png", b"hello")})
    assert "notes.png was not loaded: The file is not an image we can read" in refused.content.decode()
    assert "still" not in refused.content.decode()

    assert client.post(reverse("pages:home"), {"file": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea"))}
                       ).status_code == 302
    truncated = jpeg("coffee")[:3000]
    page = client.post(reverse("pages:home"), {"file": SimpleUploadedFile("coffee.jpg", truncated)}).content.decode()
    assert re.search(r"coffee\.jpg was not loaded: The image is damaged or truncated: [^<]*\. The picture below is "
                     r"still chelsea\.jpg, loaded before\.", page)


@pytest.mark.django_db
def test_an_upload_and_words_are_named_without_the_controls_that_reversed_the_page(client, user, media_root, settings):
    """A U+202E in a loaded picture's name ("invoice\u202egpj.exe.png") or in the words read "Images similar
    to invoicegnp.exe.jpg" and was in the file's Content-Disposition: a stored image's name never keeps it."""
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    staged = uploads.staged_add(data=jpeg("chelsea"), name="photos/invoice\u202egpj.exe\tjpg", session=SessionStore())
    assert staged.name == "invoicegpj.exe jpg" == StagedUploadRecord.objects.get(token=staged.token).name
    client.force_login(user)
    page = client.get(reverse("pages:search"), {"text": "\u202ea red cat"}).content.decode()
    assert "Images similar to “a red cat”" in page and "\u202e" not in page
