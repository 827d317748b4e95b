"""The media storage failing under the service (an S3 endpoint stopped or hung, a folder unmounted): what
was done stays done and is said truly, what needs a file answers 503 naming the storage, a worker marks
the image failed (Retry works), and a hung endpoint holds a thread seconds, not minutes."""

import logging
import math
import re
import threading
import time
from datetime import timedelta
from unittest import mock

import pytest
from botocore.exceptions import EndpointConnectionError
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from gallery import storage, thumbnails
from gallery.models import Image
from gallery.reset import reset_run, reset_start
from gallery.storage import STORAGE_ERRORS, AtomicFileSystemStorage
from imaginaition_site.storage_settings import media_storage
from retrieval.models import StagedUploadRecord
from retrieval.pipeline import embed_batch
from tests.gallery.factories import make_image
from tests.retrieval.test_pipeline import jpeg, offline, upload  # noqa: F401 - offline: a fixture
from tests.site.test_object_storage import BUCKET, bucket_keys, moto_s3  # noqa: F401 - moto_s3: a fixture

S3_SETTINGS_NAMED = "IMAGINAITION_S3_ENDPOINT_URL, IMAGINAITION_S3_BUCKET and the credentials (AWS_ACCESS_KEY_ID"


@pytest.fixture
def s3_storage(settings, tmp_path, moto_s3):
    """The gallery's files in moto's bucket, with a short timeout (what settings.py makes of this env)."""
    settings.STORAGES = {**settings.STORAGES, "default": media_storage({**moto_s3.env, "IMAGINAITION_S3_TIMEOUT": "1"})}
    settings.MEDIA_ROOT = tmp_path / "not-used"
    return moto_s3


def test_the_s3_client_times_out_and_retries_little_as_imaginaition_s3_timeout_says():
    env = {"IMAGINAITION_STORAGE": "s3", "IMAGINAITION_S3_BUCKET": "photos"}
    config = media_storage(env)["OPTIONS"]["client_config"]
    assert (config.connect_timeout, config.read_timeout) == (10, 10)
    assert config.retries["total_max_attempts"] == 2
    config = media_storage({**env, "IMAGINAITION_S3_TIMEOUT": " 2.5 "})["OPTIONS"]["client_config"]
    assert (config.connect_timeout, config.read_timeout) == (2.5, 2.5)
    for wrong in ("abc", "0", "-3", "nan", "inf"):
        with pytest.raises(ImproperlyConfigured, match=f"IMAGINAITION_S3_TIMEOUT must be .* not '{wrong}'"):
            media_storage({**env, "IMAGINAITION_S3_TIMEOUT": wrong})


def test_a_hung_endpoint_fails_a_request_within_the_timeout_not_minutes(s3_storage):
    s3_storage.stop(hang=True)  # the port still accepts connections; nothing answers
    outcome: list[BaseException | bool] = []

    def ask() -> None:
        try:
            outcome.append(default_storage.exists("images/ab/cd/some.png"))
        except BaseException as exc:  # noqa: BLE001 - what the storage raised is the point
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=ask, daemon=True)  # botocore's defaults held it ~3 minutes
    thread.start()
    thread.join(timeout=15)
    assert not thread.is_alive(), "the storage call still waits after 15 s"
    assert isinstance(outcome[0], STORAGE_ERRORS) and time.monotonic() - started < 10


@pytest.mark.django_db(transaction=True)
def test_deleting_while_the_bucket_is_down_succeeds_and_leaves_the_files_to_storage_check(
        client, user, s3_storage, caplog):
    client.force_login(user)
    by_api, by_page = (upload(client, name) for name in ("chelsea", "coffee"))
    names = {f"gallery/{image.file.name}" for image in Image.objects.all()}
    assert names <= bucket_keys(s3_storage.s3)
    s3_storage.stop()

    with caplog.at_level(logging.WARNING, logger="gallery.storage_check"):
        assert client.delete(reverse("api-image", args=[by_api])).status_code == 204
        response = client.post(reverse("pages:delete", args=[by_page]))
    assert response.status_code == 302 and not Image.objects.exists()
    warnings = [record.getMessage() for record in caplog.records if record.name == "gallery.storage_check"]
    assert len(warnings) == 2 and all("storage_check --delete" in text for text in warnings)
    assert all(any(name.removeprefix("gallery/") in text for text in warnings) for name in names)

    s3_storage.start_again()
    assert names <= bucket_keys(s3_storage.s3)  # left behind; storage_check finds and removes them
    call_command("storage_check", "--delete", "--older-than", "1", stdout=mock.MagicMock())  # younger: kept
    from gallery.storage_check import storage_check, storage_orphans_delete
    report = storage_check(min_age=timedelta(0))
    assert {f"gallery/{stored.name}" for stored in report.orphans} == names
    storage_orphans_delete(report)
    assert not bucket_keys(s3_storage.s3)


@pytest.mark.django_db(transaction=True)
def test_a_reset_while_the_bucket_is_down_deletes_nothing_and_says_so(staff_user, settings, tmp_path, s3_storage):
    """It emptied the gallery, then failed storing the folder's first file: the user lost both."""
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    old = [make_image(name=f"old{i}.png", color=(10 * i, 0, 0)) for i in range(2)]
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(jpeg("chelsea"))
    job = reset_start(folder=str(folder), recursive=False, user=staff_user)
    s3_storage.stop()

    job = reset_run(job_id=job.pk)
    assert job.state == "failed" and job.deleted_images == 0
    assert sorted(Image.objects.values_list("pk", flat=True)) == sorted(image.pk for image in old)
    assert job.error.startswith("The reset did not start. The media storage (where the gallery's files are kept) "
                                "could not be reached: ") and job.error.endswith("Nothing was deleted.")
    assert S3_SETTINGS_NAMED in job.error
    s3_storage.start_again()
    assert not [key for key in bucket_keys(s3_storage.s3) if "probe" in key]  # the check leaves nothing behind
    job = reset_run(job_id=reset_start(folder=str(folder), recursive=False, user=staff_user).pk)
    assert job.state == "done" and job.deleted_images == 2 and job.imported == 1
    assert not [key for key in bucket_keys(s3_storage.s3) if "probe" in key]


@pytest.mark.django_db(transaction=True)
def test_a_reset_whose_bucket_stops_after_the_check_empties_the_gallery_and_says_so(staff_user, settings, tmp_path,
                                                                                   s3_storage, caplog):
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    old = [make_image(name=f"old{i}.png", color=(10 * i, 0, 0)) for i in range(2)]
    StagedUploadRecord.objects.create(token="ab" * 12, name="someone.jpg", width=1, height=1, state="ready")
    s3_storage.s3.put_object(Bucket=BUCKET, Key=f"gallery/staging/{'ab' * 12}.upload", Body=b"staged")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(jpeg("chelsea"))
    job = reset_start(folder=str(folder), recursive=False, user=staff_user)
    real_check = storage.storage_write_check

    def check_then_stop(folder: str) -> None:
        real_check(folder)
        s3_storage.stop()

    with caplog.at_level(logging.WARNING), mock.patch("gallery.reset.storage_write_check", check_then_stop):
        job = reset_run(job_id=job.pk)
    assert not Image.objects.exists() and not StagedUploadRecord.objects.exists()
    assert job.deleted_images == 2 and job.state == "failed" and job.phase == "importing files"
    # What it says is what happened: the gallery was emptied, then storing the first file failed.
    assert "Storing the file failed" in job.error and "Nothing was deleted" not in job.error
    assert job.error.startswith("cat.jpg: Storing the file failed")  # no class name ("StorageFailed: …")
    left = [record.getMessage() for record in caplog.records if record.name == "gallery.storage_check"]
    assert any("2 images were deleted" in text and "storage_check --delete" in text
               and any(image.file.name in text for image in old) for text in left)


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_cannot_read_a_stored_file_marks_it_failed_and_retry_works(client, user, media_root, offline):
    client.force_login(user)
    before, image_id, after = (upload(client, name) for name in ("chelsea", "coffee", "rocket"))
    unreadable = Image.objects.get(pk=image_id).file.name
    real_open = AtomicFileSystemStorage._open

    def storage_fails_for_one(self, name, mode="rb"):
        if name == unreadable:
            raise EndpointConnectionError(endpoint_url="http://s3.example.org")
        return real_open(self, name, mode)

    with mock.patch.object(AtomicFileSystemStorage, "_open", storage_fails_for_one):
        embed_batch()  # one batch: the others in it are done
    image = Image.objects.get(pk=image_id)
    assert image.status == "failed" and image.error == (
        'The stored file could not be read: Could not connect to the endpoint URL: "http://s3.example.org"; '
        "it is retried by Retry or `manage.py retry_failed` once the media storage is reachable.")
    assert set(Image.objects.filter(pk__in=[before, after]).values_list("status", flat=True)) == {"ready"}

    assert client.post(reverse("api-image-retry", args=[image_id])).json()["status"] == "pending"
    embed_batch()
    image.refresh_from_db()
    assert image.status == "ready" and image.error == ""


@pytest.mark.django_db(transaction=True)
def test_with_the_bucket_down_what_needs_a_file_answers_503_naming_the_storage(
        client, staff_user, s3_storage, offline):
    client.force_login(staff_user)
    image_id = upload(client, "chelsea")
    token = "cd" * 12
    StagedUploadRecord.objects.create(token=token, name="coffee.jpg", width=600, height=400, state="ready")
    s3_storage.s3.put_object(Bucket=BUCKET, Key=f"gallery/staging/{token}.upload", Body=jpeg("coffee"))
    session = client.session
    session["staged_upload"] = token
    session.save()
    s3_storage.stop()

    def refused_page(response):
        text = response.content.decode()
        assert response.status_code == 503 and "Media storage unavailable" in text, text[:3000]
        assert "could not be reached" in text and S3_SETTINGS_NAMED in text

    def refused_api(response):
        assert response.status_code == 503, response.content[:3000]
        detail = response.json()["detail"]
        assert "media storage" in detail and S3_SETTINGS_NAMED in detail

    refused_page(client.get(reverse("gallery:image-file", args=[image_id])))
    refused_page(client.get(reverse("gallery:image-thumbnail", args=[image_id])))
    refused_page(client.get(reverse("pages:staged-file"), {"upload": token}))
    refused_page(client.post(reverse("pages:staged-add"), {"upload": token}))
    refused_page(client.post(reverse("pages:home"), {"file": SimpleUploadedFile("rocket.jpg", jpeg("rocket"))}))
    refused_page(client.get(reverse("pages:search"), {"upload": token}))
    whole = client.post(reverse("api-search"), {"image": SimpleUploadedFile("rocket.jpg", jpeg("rocket"))})
    assert whole.status_code == 200  # needs no stored file
    refused_api(client.post(reverse("api-search"), {"image": SimpleUploadedFile("rocket.jpg", jpeg("rocket")),
                                                    "label": "cat"}))

    embed_batch()  # a worker: the image it cannot read ends failed, not pending for ever
    image = Image.objects.get(pk=image_id)
    assert image.status == "failed" and image.error.startswith("The stored file could not be read: Could not connect")

    status = client.get(reverse("api-status"), {"check_files": "1"})
    assert status.status_code == 200 and status.json()["integrity"]["state"] == "storage unreachable"
    with pytest.raises(CommandError, match=f"media storage could not be reached: .*{re.escape(S3_SETTINGS_NAMED)}"):
        call_command("storage_check", stdout=mock.MagicMock(), stderr=mock.MagicMock())


@pytest.mark.django_db
def test_a_local_media_folder_failing_under_a_page_is_a_503_naming_imaginaition_media_root(client, user, media_root):
    image = make_image()
    client.force_login(user)
    with mock.patch.object(AtomicFileSystemStorage, "_open", side_effect=PermissionError(13, "Permission denied")):
        response = client.get(reverse("gallery:image-thumbnail", args=[image.pk]))
        api = client.get(f"/api/images/{image.pk}/")  # no file read: answers as ever
    assert response.status_code == 503 and "Permission denied" in response.content.decode()
    assert "IMAGINAITION_MEDIA_ROOT" in response.content.decode() and api.status_code == 200
    assert response["Retry-After"] == "30"  # an outage: a client may ask again, not at once


def test_a_full_media_disk_still_shows_thumbnails_and_says_so_once(client, user, media_root, caplog, monkeypatch):
    """Each thumbnail of a gallery page was a 503 (two log lines each) when it could not be kept, though the
    originals it is made from read fine."""
    monkeypatch.setattr(thumbnails, "_last_warned", -math.inf)  # as in a process that has not said it yet
    images = [make_image(name=f"{i}.png") for i in range(3)]
    client.force_login(user)
    with mock.patch.object(AtomicFileSystemStorage, "_save", side_effect=OSError(28, "No space left on device")), \
            caplog.at_level("WARNING"):
        answers = [client.get(reverse("gallery:image-thumbnail", args=[image.pk])) for image in images]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert all(answer["Content-Type"] == "image/webp" and answer.content for answer in answers)
    assert not [path for path in (media_root / "thumbs").rglob("*") if path.is_file()]  # not kept
    said = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(said) == 1 and "thumbnails are served but not kept" in said[0] and "No space left" in said[0]


def test_pages_say_for_a_while_that_the_media_storage_failed(client, user, media_root, monkeypatch):
    """Pictures that did not show and adds that failed said nothing of why on the other pages."""
    image = make_image()
    client.force_login(user)
    assert 'id="banner-storage"' not in client.get(reverse("pages:gallery")).content.decode()
    with mock.patch.object(AtomicFileSystemStorage, "_open", side_effect=PermissionError(13, "Permission denied")):
        assert client.get(reverse("gallery:image-thumbnail", args=[image.pk])).status_code == 503
    page = client.get(reverse("pages:gallery")).content.decode()
    assert 'id="banner-storage"' in page and "(Permission denied): pictures may not show" in page
    monkeypatch.setattr(storage, "STORAGE_TROUBLE_SHOWN_SECONDS", 0)  # a while later
    assert 'id="banner-storage"' not in client.get(reverse("pages:gallery")).content.decode()


def test_the_apis_storage_refusals_say_when_to_try_again():
    from gallery.api import api_exception_handler
    from gallery.imaging import ImageRejected
    from gallery.services import StorageFailed

    failed = api_exception_handler(OSError(5, "Input/output error"), {})
    stored = api_exception_handler(StorageFailed("Storing the file failed."), {})
    refused = api_exception_handler(ImageRejected("The file is empty (0 bytes)."), {})
    assert (failed.status_code, failed["Retry-After"]) == (503, "30")
    assert (stored.status_code, stored["Retry-After"]) == (503, "30")
    assert refused.status_code == 400 and "Retry-After" not in refused  # the caller's to fix, not to wait for
