"""Files live behind Django's storage API: an S3-compatible bucket (moto's S3 server, started by the test
and reached over HTTP, stands in for AWS or MinIO) or a local/shared folder written atomically. A worker
configured only by environment processes an image it never saw on its own disk."""

import html
import os
import socket
import tempfile
import threading
from typing import Any
from unittest import mock

import boto3
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from gallery.models import Image
from gallery.storage import AtomicFileSystemStorage
from imaginaition_site.embedded_db import free_port
from imaginaition_site.storage_settings import media_storage
from retrieval.models import StagedUploadRecord
from tests.conftest import wait_for
from tests.retrieval.test_interactive_worker import wait_for_staged_segmentation
from tests.retrieval.test_pipeline import jpeg, upload

BUCKET = "imaginaition-test"


class MotoS3:
    """moto's S3-compatible server in server mode on a local port, which a test may stop (an outage) and
    start again; `env` is the environment every process (this one and the workers it starts) needs to
    use it as the gallery's storage, `s3` a client of it."""

    def __init__(self, port: int) -> None:
        from moto.server import ThreadedMotoServer

        self.port, self.running = port, False
        self.s3: Any = None  # a client of it, made once the environment holds the credentials
        self.hung: socket.socket | None = None
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.env = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                    "AWS_DEFAULT_REGION": "us-east-1", "IMAGINAITION_STORAGE": "s3", "IMAGINAITION_S3_BUCKET": BUCKET,
                    "IMAGINAITION_S3_PREFIX": "gallery", "IMAGINAITION_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                    "IMAGINAITION_S3_REGION": "us-east-1"}

    def start(self) -> None:
        self.server.start()
        self.running = True

    def stop(self, *, hang: bool = False) -> None:
        """The endpoint stops answering: its port refuses connections, or (hang) accepts them (a socket
        that listens, and nothing reads it) and never answers."""
        self.server.stop()  # werkzeug closes the server's socket as it stops
        if hang:
            self.hung = socket.create_server(("127.0.0.1", self.port))
        self.running = False

    def start_again(self) -> None:
        """After stop(): a new server on the same port, with the same buckets (moto keeps them in this
        process, whatever server answers)."""
        from moto.server import ThreadedMotoServer

        if self.hung is not None:
            self.hung.close()
            self.hung = None
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.start()


@pytest.fixture
def moto_s3(monkeypatch):
    moto = MotoS3(free_port())
    moto.start()
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    moto.s3 = boto3.client("s3", endpoint_url=moto.env["IMAGINAITION_S3_ENDPOINT_URL"], region_name="us-east-1")
    moto.s3.create_bucket(Bucket=BUCKET)
    yield moto
    if not moto.running:
        moto.start_again()
    # moto keeps its buckets in this process, whatever server answered: the next test starts empty.
    for key in bucket_keys(moto.s3):
        moto.s3.delete_object(Bucket=BUCKET, Key=key)
    moto.s3.delete_bucket(Bucket=BUCKET)
    moto.server.stop()


@pytest.fixture
def moto_s3_server(moto_s3):
    """moto's S3 server: the environment that uses it as the gallery's storage, and a client of it."""
    return moto_s3.env, moto_s3.s3


def bucket_keys(s3) -> set[str]:
    return {entry["Key"] for entry in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


@pytest.mark.integration
def test_with_s3_storage_web_and_worker_share_files_only_through_the_bucket(
        client, user, settings, tmp_path, moto_s3_server, start_worker):
    env, s3 = moto_s3_server
    settings.STORAGES = {**settings.STORAGES, "default": media_storage(env)}  # what settings.py makes of env
    settings.MEDIA_ROOT = tmp_path / "web-host-disk"
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    worker_disk = tmp_path / "worker-host-disk"
    worker = start_worker(IMAGINAITION_MODEL_PROFILE="offline", IMAGINAITION_MEDIA_ROOT=str(worker_disk), **env)
    client.force_login(user)

    image_id = upload(client, "chelsea")
    image = Image.objects.get(pk=image_id)
    assert f"gallery/{image.file.name}" in bucket_keys(s3)

    def processed():
        if worker.process.poll() is not None:
            pytest.fail(f"qcluster exited:\n{worker.log()}")
        body = client.get(reverse("api-image", args=[image_id])).json()
        return body if body["status"] == "ready" and body["masks_status"] == "ready" else None

    body = wait_for(processed, timeout=240, interval=1, message="the worker to process the image from the bucket")
    assert {e["space"] for e in body["embedded_by"]} == {"semantic", "content"}

    thumbnail = client.get(reverse("gallery:image-thumbnail", args=[image_id]))
    assert thumbnail.status_code == 200 and thumbnail.content[:4] == b"RIFF"
    thumbs = {key for key in bucket_keys(s3) if key.startswith("gallery/thumbs/")}
    assert len(thumbs) == 1
    original = client.get(reverse("gallery:image-file", args=[image_id]))
    assert b"".join(original.streaming_content) == jpeg("chelsea")

    # A staged upload (search page): bytes in the bucket, facts in the database, served back.
    client.post(reverse("pages:home"), {"file": SimpleUploadedFile("coffee.jpg", jpeg("coffee"))})
    staged = StagedUploadRecord.objects.get()
    assert staged.state == "ready" and f"gallery/staging/{staged.token}.upload" in bucket_keys(s3)
    assert b"".join(client.get(reverse("pages:staged-file")).streaming_content) == jpeg("coffee")

    assert client.delete(reverse("api-image", args=[image_id])).status_code == 204
    assert not {key for key in bucket_keys(s3) if key.startswith(("gallery/images/", "gallery/thumbs/"))}
    # Neither host wrote a file of its own.
    assert not any(path.is_file() for folder in (settings.MEDIA_ROOT, worker_disk) if folder.exists()
                   for path in folder.rglob("*"))


@pytest.mark.integration
def test_with_s3_storage_the_interactive_worker_segments_an_upload_it_reads_from_the_bucket(
        client, user, settings, tmp_path, moto_s3_server, start_worker):
    """A staged upload (search page) goes to the bucket; the interactive worker, on a host with a disk of
    its own, reads it from there and stores the masks; the web process never loads the segmenter."""
    from retrieval.encoders import registry

    env, s3 = moto_s3_server
    settings.STORAGES = {**settings.STORAGES, "default": media_storage(env)}
    settings.MEDIA_ROOT = tmp_path / "web-host-disk"
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_SEGMENT_UPLOADS_INLINE = False  # the product's default
    registry.unload_all()
    worker_disk = tmp_path / "worker-host-disk"
    worker = start_worker(Q_CLUSTER_NAME="interactive", IMAGINAITION_MODEL_PROFILE="offline",
                          IMAGINAITION_MEDIA_ROOT=str(worker_disk), **env)
    client.force_login(user)
    try:
        client.post(reverse("pages:home"), {"file": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea"))})
        token = client.session["staged_upload"]
        assert f"gallery/staging/{token}.upload" in bucket_keys(s3)
        state = wait_for_staged_segmentation(client, worker)
        assert state["state"] == "ready" and "cat" in state["labels"], (state, worker.log()[-3000:])
        overlay = client.get(reverse("pages:staged-overlay", args=[8]))  # the cat's mask, from the worker
        assert overlay.status_code == 200 and overlay["Content-Type"] == "image/png"
        assert registry.active_models().segmenter not in registry._loaded
    finally:
        registry.unload_all()
    # Neither host wrote a file of its own: the worker read the upload from the bucket.
    assert not any(path.is_file() for folder in (settings.MEDIA_ROOT, worker_disk) if folder.exists()
                   for path in folder.rglob("*"))


def test_storage_settings_refuse_what_cannot_work():
    assert media_storage({})["BACKEND"] == "gallery.storage.AtomicFileSystemStorage"
    with pytest.raises(ImproperlyConfigured, match="local or s3"):
        media_storage({"IMAGINAITION_STORAGE": "ftp"})
    with pytest.raises(ImproperlyConfigured, match="IMAGINAITION_S3_BUCKET"):
        media_storage({"IMAGINAITION_STORAGE": "s3"})
    for endpoint in ("127.0.0.1:9000", "minio.local", "ftp://minio.local", "http:/127.0.0.1:9000", "http://",
                     "http://minio.local:port"):  # 500s at the first request
        with pytest.raises(ImproperlyConfigured, match="IMAGINAITION_S3_ENDPOINT_URL must be an address such as "
                                                       "http://HOST:PORT"):
            media_storage({"IMAGINAITION_STORAGE": "s3", "IMAGINAITION_S3_BUCKET": "b",
                           "IMAGINAITION_S3_ENDPOINT_URL": endpoint})
    assert media_storage({"IMAGINAITION_STORAGE": "s3", "IMAGINAITION_S3_BUCKET": "b",
                          "IMAGINAITION_S3_ENDPOINT_URL": "http://127.0.0.1:9000"})["OPTIONS"]["endpoint_url"] == \
        "http://127.0.0.1:9000"


def test_local_files_appear_whole_and_concurrent_writers_never_overwrite(tmp_path):
    storage = AtomicFileSystemStorage(location=tmp_path)
    contents = [bytes([i]) * 200_000 for i in range(8)]
    names: list[str] = []

    def save(data: bytes) -> None:
        names.append(storage.save("thumbs/ab/same-name.webp", ContentFile(data)))

    threads = [threading.Thread(target=save, args=(data,)) for data in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == len(contents)  # every writer got its own name
    stored = sorted(storage.open(name).read() for name in names)
    assert stored == sorted(contents)  # each file whole, none overwritten
    assert [path.name for path in tmp_path.rglob(".partial-*")] == []  # nothing left aside


def test_deleting_the_last_file_of_a_folder_removes_the_folders_it_leaves_empty(tmp_path):
    storage = AtomicFileSystemStorage(location=tmp_path / "media")
    first = storage.save("images/ab/cd/first.png", ContentFile(b"1"))
    second = storage.save("images/ab/ef/second.png", ContentFile(b"2"))
    storage.save("thumbs/ab/cd/first.webp", ContentFile(b"3"))

    storage.delete(first)
    assert not (tmp_path / "media/images/ab/cd").exists() and (tmp_path / "media/images/ab/ef").is_dir()
    storage.delete(second)
    assert not (tmp_path / "media/images").exists()  # every folder it emptied, up to the storage's own
    assert (tmp_path / "media/thumbs/ab/cd/first.webp").read_bytes() == b"3"
    storage.delete("images/ab/cd/first.png")  # deleting twice is still no error

    # A writer whose folder a delete removed between making it and writing into it makes it again.
    real_mkstemp, calls = tempfile.mkstemp, []

    def folder_removed_once(*args, **kwargs):
        calls.append(kwargs["dir"])
        if len(calls) == 1:
            os.rmdir(kwargs["dir"])
            os.rmdir(os.path.dirname(kwargs["dir"]))
        return real_mkstemp(*args, **kwargs)

    with mock.patch("gallery.storage.tempfile.mkstemp", folder_removed_once):
        name = storage.save("images/zz/yy/again.png", ContentFile(b"4"))
    assert len(calls) == 2 and storage.open(name).read() == b"4"

    # The same while the writer makes the folders on the way: a delete empties the one it has just made
    # (an upload racing the delete of a gallery's last image was a 503 blaming the media storage).
    real_mkdir, made = os.mkdir, []

    def parent_removed_once(path, *args, **kwargs):
        made.append(path)
        if str(path).endswith("xx/ww") and made.count(path) == 1:
            os.rmdir(os.path.dirname(path))  # the folder made just before, emptied by a concurrent delete
        return real_mkdir(path, *args, **kwargs)

    with mock.patch("gallery.storage.os.mkdir", parent_removed_once):
        name = storage.save("images/xx/ww/raced.png", ContentFile(b"5"))
    assert storage.open(name).read() == b"5"


@pytest.mark.django_db
def test_storage_check_finds_and_deletes_what_no_image_refers_to_in_a_bucket(settings, tmp_path, moto_s3_server):
    from datetime import timedelta

    from gallery.storage_check import storage_check, storage_orphans_delete
    from tests.gallery.factories import make_image

    env, s3 = moto_s3_server
    settings.STORAGES = {**settings.STORAGES, "default": media_storage(env)}
    settings.MEDIA_ROOT = tmp_path / "not-used"
    image = make_image(name="in-the-bucket.png")
    orphan = f"images/ab/ab/{'ab' * 32}.png"
    s3.put_object(Bucket=BUCKET, Key=f"gallery/{orphan}", Body=b"left by a killed process")

    report = storage_check(min_age=timedelta(0))
    assert report.checked == 2 and [stored.name for stored in report.orphans] == [orphan] and report.missing == []
    assert report.orphan_bytes == len(b"left by a killed process")
    assert storage_orphans_delete(report) == 1
    assert bucket_keys(s3) == {f"gallery/{image.file.name}"}


@pytest.mark.django_db
def test_a_bucket_that_cannot_be_written_refuses_an_upload_with_503_and_keeps_nothing(
        client, user, settings, tmp_path, moto_s3_server):
    """botocore's errors are not OSErrors: a missing bucket was a 500 (API) and a traceback (import_folder)."""
    from django.core.management import CommandError, call_command

    env, _ = moto_s3_server
    settings.STORAGES = {**settings.STORAGES, "default": media_storage({**env, "IMAGINAITION_S3_BUCKET": "no-such"})}
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    client.force_login(user)

    response = client.post(reverse("api-images"), {"file": SimpleUploadedFile("cat.jpg", jpeg("chelsea"))})
    assert response.status_code == 503 and "Storing the file failed" in response.json()["detail"]
    assert "IMAGINAITION_S3_BUCKET" in response.json()["detail"] and "MEDIA_ROOT" not in response.json()["detail"]
    assert "NoSuchBucket" in response.json()["detail"] and not Image.objects.exists()

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(jpeg("chelsea"))
    with pytest.raises(CommandError, match="Storing the file failed"):
        call_command("import_folder", str(tmp_path / "photos"))
    assert not Image.objects.exists()


@pytest.mark.django_db
def test_a_bucket_that_is_not_there_is_said_as_such_not_as_every_file_missing(client, staff_user, settings, moto_s3_server):
    """A misspelt IMAGINAITION_S3_BUCKET read as "stored file missing" for every image (404s, the status's list of
    every image), which sent an operator to delete good images."""
    from retrieval.pipeline import embed_batch
    from tests.gallery.factories import make_image

    env, _ = moto_s3_server
    client.force_login(staff_user)
    # A new, empty gallery: no file to ask, and the status read "ok" while every upload failed (NoSuchBucket).
    settings.STORAGES = {**settings.STORAGES, "default": media_storage({**env, "IMAGINAITION_S3_BUCKET": "misspelt"})}
    status = client.get(reverse("api-status"), {"check_files": "1"}).json()
    assert status["integrity"]["state"] == "storage unreachable", status["integrity"]
    settings.STORAGES = {**settings.STORAGES, "default": media_storage(env)}
    assert client.get(reverse("api-status"), {"check_files": "1"}).json()["integrity"]["state"] == "ok"
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    image = make_image(status="pending")  # stored in the right bucket
    settings.STORAGES = {**settings.STORAGES, "default": media_storage({**env, "IMAGINAITION_S3_BUCKET": "misspelt"})}

    for url in (reverse("gallery:image-file", args=[image.pk]), reverse("gallery:image-thumbnail", args=[image.pk])):
        response = client.get(url)
        assert response.status_code == 503, url
        assert "the bucket 'misspelt' does not exist" in html.unescape(response.content.decode()), url
    status = client.get(reverse("api-status"), {"check_files": "1"}).json()
    assert status["integrity"]["state"] == "storage unreachable" and status["integrity"]["missing_files"] == []
    embed_batch()
    image.refresh_from_db()
    assert image.status == "failed" and "the bucket 'misspelt' does not exist" in image.error
    assert "retry_failed" in image.error


def test_a_storage_error_that_ends_in_a_full_stop_is_not_given_a_second():
    """botocore's messages end with one, and the sentences they go into add theirs: "…in our records.. Check"."""
    from botocore.exceptions import ClientError

    from gallery.storage_check import storage_unreachable_message

    refused = ClientError({"Error": {"Code": "InvalidAccessKeyId",
                                     "Message": "The AWS Access Key Id you provided does not exist in our records."}},
                          "PutObject")
    message = storage_unreachable_message(refused)
    assert "does not exist in our records. Try again once it is reachable" in message and ".." not in message


def test_a_full_storage_is_said_to_be_full_not_out_of_reach():
    """A full disk read "could not be reached: No space left on device. Try again once it is reachable"."""
    import errno
    import os

    from gallery.storage_check import storage_unreachable_message

    full = storage_unreachable_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert full.startswith("The media storage (where the gallery's files are kept) is full: No space left on device")
    assert "reachable" not in full and "freed space" in full
    unmounted = storage_unreachable_message(OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
    assert "could not be reached" in unmounted
