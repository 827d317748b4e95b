"""Staged uploads: bytes in the file storage, facts and masks in the database; an hour later both go."""

import os
import time
from datetime import timedelta

import pytest
from django.contrib.sessions.backends.db import SessionStore
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
    assert uploads.staged_missing_message(session=session) == "Your upload has expired; choose the file again."
    assert uploads.staged_missing_message(session=SessionStore()) == "Nothing is uploaded yet: choose a file first."
    assert fresh.data() == jpeg("coffee") and set(fresh.masks()) == {label["label"] for label in fresh.labels}


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
