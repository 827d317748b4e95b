"""Images go through real workers and real (offline-profile) models to `ready`, with embeddings and masks."""

import io
import logging
import os
import signal
import threading
from unittest import mock

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection, connections
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ
from PIL import Image as PILImage

from gallery import services
from gallery.imaging import png_to_probability
from gallery.models import Image, Mask
from retrieval.models import Embedding, RegionEmbedding
from retrieval import pipeline, tasks
from retrieval.models import IndexState
from retrieval.pipeline import FILE_CHANGED, embed_batch, process_all_pending, segment_batch
from retrieval.work_locks import work_in_flight
from retrieval.encoders import registry
from tests.conftest import wait_for


def jpeg(name: str) -> bytes:
    from skimage import data as skdata

    buffer = io.BytesIO()
    PILImage.fromarray(getattr(skdata, name)()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def offline(settings):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    return registry.active_models()


def upload(client, name: str):
    response = client.post(reverse("api-images"), {"file": SimpleUploadedFile(f"{name}.jpg", jpeg(name))})
    assert response.status_code == 201, response.content
    return response.json()["id"]


@pytest.mark.django_db(transaction=True)
def test_a_batch_the_database_refuses_fails_with_why_and_is_retried_once_fixed(client, user, media_root, offline):
    """A backup restored into the gallery's own database set the id sequences back: every later batch's
    insert collided, and its images stayed pending for ever with no error, unseen by retry_failed."""
    client.force_login(user)
    upload(client, "chelsea")
    embed_batch(batch_size=4)
    table = Embedding._meta.db_table
    with connection.cursor() as cursor:  # as such a restore leaves it: the next id is one already used
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT min(id) FROM {table}), false)")
    refused = upload(client, "coffee")

    report = embed_batch(batch_size=4)

    image = Image.objects.get(pk=refused)
    assert report.failed == [refused] and image.status == "failed"
    assert image.error.startswith("Storing the results failed in the database: duplicate key value violates unique "
                                  "constraint")
    assert image.error.endswith("already exists. Once the cause is fixed (docs/DEPLOYMENT.md, Backups), retry it.")
    with connection.cursor() as cursor:  # fixed (`manage.py sqlsequencereset`, as the docs say)
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    call_command("retry_failed", "--sync")
    image.refresh_from_db()
    assert (image.status, image.error, image.masks_status) == ("ready", "", "ready")


@pytest.mark.django_db(transaction=True)
def test_batch_pipeline_stores_embeddings_and_masks_idempotently(client, user, media_root, offline):
    client.force_login(user)
    ids = [upload(client, name) for name in ("chelsea", "coffee", "rocket")]

    report = embed_batch(batch_size=8)
    assert sorted(report.processed) == sorted(ids)  # one batch took all three
    segment_batch(batch_size=8)
    assert Embedding.objects.filter(space="semantic", model_key=offline.semantic).count() == 3
    assert Embedding.objects.filter(space="content", model_key=offline.content).count() == 3
    chelsea = Image.objects.get(pk=ids[0])
    assert chelsea.status == "ready" and chelsea.masks_status == "ready"
    assert "cat" in set(chelsea.masks.values_list("label", flat=True))
    # The batch's masks are PNG-encoded on several threads: each still belongs to its own image
    # (the three photos differ in size).
    for mask in Mask.objects.select_related("image"):
        assert png_to_probability(mask.probability_png).shape == (mask.image.height, mask.image.width)

    # Running the work again (a retried task) leaves the same rows; run together, the two stages read
    # and decode each file once (batches of 2: the second batch is decoded on its own too). The masks,
    # already the active segmenter's, are kept with their ids, and their regions have every vector: the
    # network passes each picture once, for the embedding, and nothing else.
    Image.objects.update(status="pending", masks_status="pending")
    masks_before = dict(Mask.objects.values_list("pk", "label"))
    vectors_before = dict(Embedding.objects.values_list("pk", "vector"))
    decoded: list[int] = []
    real_decode = pipeline.picture_for_models
    passed: list[int] = []
    network = registry.get_model(offline.segmenter).network
    assert network is registry.get_model(offline.semantic).network
    hook = network.register_forward_hook(lambda module, args, output: passed.append(args[0].shape[0]))
    try:
        with mock.patch.object(pipeline, "picture_for_models",
                               lambda data: decoded.append(len(data)) or real_decode(data)):
            process_all_pending(batch_size=2)
    finally:
        hook.remove()
    assert len(decoded) == 3
    assert RegionEmbedding.objects.filter(space="semantic", model_key=offline.semantic).exists()
    assert sum(passed) == 3  # once per picture (the first run: also once per region picture; the next test)
    assert Embedding.objects.count() == 6 and dict(Mask.objects.values_list("pk", "label")) == masks_before
    for pk, vector in Embedding.objects.values_list("pk", "vector"):
        assert np.allclose(vector, vectors_before[pk], atol=1e-5)
    assert set(Image.objects.values_list("status", "masks_status")) == {("ready", "ready")}


@pytest.mark.django_db(transaction=True)
def test_a_worker_task_embeds_a_batch_then_segments_the_same_images_reading_and_passing_each_once(
        client, user, media_root, offline):
    client.force_login(user)
    ids = [upload(client, name) for name in ("chelsea", "coffee", "rocket")]
    # Masks wait for the embedding: the task that embeds an image segments it next.
    assert segment_batch(batch_size=8).processed == []

    decoded: list[int] = []
    real_decode = pipeline.picture_for_models
    passed: list[int] = []
    network = registry.get_model(offline.semantic).network
    statuses_at_index_builds: list[set] = []
    in_flight_at_index_builds: list[bool] = []
    real_build = pipeline.missing_indexes_build

    def build():
        statuses_at_index_builds.append(set(Image.objects.values_list("status", "masks_status")))
        in_flight_at_index_builds.append(work_in_flight())  # the batch's claims are still held
        return real_build()

    hook = network.register_forward_hook(lambda module, args, output: passed.append(args[0].shape[0]))
    try:
        with mock.patch.object(pipeline, "picture_for_models", lambda data: decoded.append(len(data)) or real_decode(data)), \
                mock.patch.object(pipeline, "missing_indexes_build", build):
            result = tasks.process_images(ids[1])
    finally:
        hook.remove()
    assert result["processed"] == sorted(ids) and result["masks_processed"] == sorted(ids)
    assert len(decoded) == 3
    regions = RegionEmbedding.objects.filter(space="semantic", model_key=offline.semantic).count()
    assert regions and sum(passed) == 3 + regions
    # Searchable before the segmentation: the image indexes are built after the embedding's write.
    assert statuses_at_index_builds == [{("ready", "pending")}, {("ready", "ready")}]
    assert in_flight_at_index_builds == [True, True] and not work_in_flight()
    assert IndexState.objects.filter(owner="image", space="semantic", model_key=offline.semantic)\
        .exclude(file_name="").exists()
    assert Mask.objects.filter(image_id__in=ids).exists()


@pytest.mark.django_db(transaction=True)
def test_a_worker_task_waits_out_a_database_restart_then_processes_its_batch(client, user, media_root, offline,
                                                                             tmp_path, caplog):
    """The database stopped under a worker: its task failed in a millisecond, and the queue kept it taken for
    its retry time (12 minutes) while the images stayed pending and the workers idle."""
    client.force_login(user)
    image_id = upload(client, "chelsea")
    database = connections["default"]  # this thread's connection (the timer's thread has its own)
    real = database.get_connection_params
    database.close()
    database.get_connection_params = lambda: {**real(), "host": str(tmp_path / "stopped")}  # no server there
    restart = threading.Timer(1.0, lambda: delattr(database, "get_connection_params"))  # back after a second
    restart.start()
    try:
        result = tasks.process_images(image_id)
    finally:
        restart.join()
    assert result["processed"] == [image_id] and result["masks_processed"] == [image_id]
    assert Image.objects.get(pk=image_id).status == "ready"
    assert "the database connection was lost" in caplog.text and "running the task again" in caplog.text


def _other_database_sessions() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                       "AND backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY pid")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_an_image_whose_file_vanished_fails_with_a_readable_message_and_can_be_retried(client, user, media_root, offline,
                                                                                       monkeypatch):
    monkeypatch.setattr(pipeline, "cpu_threads", lambda: 3)  # each of the three read on a thread of its own
    client.force_login(user)
    before, image_id, after = (upload(client, name) for name in ("chelsea", "coffee", "rocket"))
    image = Image.objects.get(pk=image_id)
    data = image.file.read()
    image.file.storage.delete(image.file.name)
    sessions = _other_database_sessions()
    embed_batch()  # one batch, decoded on the process's threads: the others in it are done
    image.refresh_from_db()
    assert image.status == "failed" and "missing" in image.error
    # Why is asked of the database in the batch's own thread: a helper thread kept a connection open for
    # good (and the test database could not be dropped at the end of the run).
    assert _other_database_sessions() == sessions
    assert set(Image.objects.filter(pk__in=[before, after]).values_list("status", flat=True)) == {"ready"}

    image.file.storage.save(image.file.name, ContentFile(data))  # put back where it was (its emptied folder too)
    assert client.post(reverse("api-image-retry", args=[image_id])).json()["status"] == "pending"
    embed_batch()
    image.refresh_from_db()
    assert image.status == "ready" and image.error == ""


@pytest.mark.integration
def test_upload_through_the_api_is_processed_by_a_real_worker(client, user, media_root, offline, start_worker):
    worker = start_worker(IMAGINAITION_MODEL_PROFILE="offline", IMAGINAITION_MEDIA_ROOT=str(media_root))
    client.force_login(user)
    image_id = upload(client, "chelsea")

    def processed():
        if worker.process.poll() is not None:
            pytest.fail(f"qcluster exited:\n{worker.log()}")
        body = client.get(reverse("api-image", args=[image_id])).json()
        return body if body["status"] == "ready" and body["masks_status"] == "ready" else None

    body = wait_for(processed, timeout=240, interval=1, message="the worker to process the upload")
    assert {e["space"] for e in body["embedded_by"]} == {"semantic", "content"}
    assert body["masks"] and all(0 < m["area_fraction"] <= 1 for m in body["masks"])


@pytest.mark.integration
def test_a_worker_killed_mid_task_leaves_no_half_written_rows_and_the_image_ends_ready(
        client, user, media_root, offline, start_worker):
    # The default retry time (12 min, beyond the wait below): the next cluster takes the image up as it
    # starts (gallery.work_resume), not when the queue hands the dead worker's task out again.
    env = {"IMAGINAITION_MODEL_PROFILE": "offline", "IMAGINAITION_MEDIA_ROOT": str(media_root),
           "IMAGINAITION_TASK_TIMEOUT": "60", "IMAGINAITION_TASK_RETRY": "720", "IMAGINAITION_WORKERS": "1"}
    first = start_worker(**env)
    client.force_login(user)
    image_id = upload(client, "astronaut")

    # Wait until the worker has taken the embedding task, then SIGKILL everything. The ORM broker stamps a
    # queued task with the time it was queued and a taken one with its retry time, still to come.
    wait_for(lambda: OrmQ.objects.filter(lock__gt=timezone.now()).exists(), timeout=60, interval=0.05,
             message="a worker to take the task")
    first.kill(signal.SIGKILL)

    second = start_worker(**env)

    def ready():
        if second.process.poll() is not None:
            pytest.fail(f"qcluster exited:\n{second.log()}")
        image = Image.objects.get(pk=image_id)
        return image.status == "ready" and image.masks_status == "ready"

    wait_for(ready, timeout=240, interval=1, message="the next cluster to take the image up")
    assert Embedding.objects.filter(image_id=image_id).count() == 2  # one per space, no duplicates
    labels = list(Mask.objects.filter(image_id=image_id).values_list("class_index", flat=True))
    assert len(labels) == len(set(labels))
    assert os.getpid() != first.process.pid


@pytest.mark.django_db(transaction=True)
def test_a_model_change_reembeds_images_that_lack_the_active_models_vectors(media_root, offline, capsys):
    from django.core.management import call_command

    from tests.gallery.factories import add_embedding, make_image

    old = make_image()  # embedded by another (older) semantic model only
    add_embedding(old, space="semantic", model_key="some/older-model", vector=[1.0, 0.0])
    add_embedding(old, space="content", model_key=offline.content, vector=[1 / 1024] * 1024)

    call_command("reembed", "--sync")

    assert "1 images to embed, 0 to segment again (1 in all)" in capsys.readouterr().out
    old.refresh_from_db()
    assert old.status == "ready"
    keys = set(old.embeddings.values_list("model_key", flat=True))
    assert keys == {"some/older-model", offline.semantic, offline.content}  # the old vectors stay
    call_command("reembed")
    assert "0 images to embed, 0 to segment again (0 in all)" in capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_a_sync_import_finishes_what_earlier_runs_left_and_names_what_failed(media_root, offline, settings, tmp_path,
                                                                           capsys, caplog):
    from django.core.management import CommandError, call_command
    from skimage import data as skdata

    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    for name in ("chelsea", "coffee"):
        PILImage.fromarray(getattr(skdata, name)()).save(first / f"{name}.jpg", quality=90)
    PILImage.fromarray(skdata.rocket()).save(second / "rocket.jpg", quality=90)

    # An earlier run that stopped before processing (interrupted, or queued with no worker running).
    call_command("import_folder", str(first))
    OrmQ.objects.all().delete()  # nobody will take those tasks
    assert set(Image.objects.values_list("status", flat=True)) == {"pending"}
    broken = Image.objects.get(original_name="coffee.jpg")
    kept = (media_root / broken.file.name).read_bytes()
    (media_root / broken.file.name).unlink()  # its file went missing: it will fail

    with pytest.raises(CommandError, match=r"1 of 3 images could not be processed.*retry_failed --sync"):
        call_command("import_folder", str(second), "--sync")
    assert f"failed coffee.jpg (image {broken.pk}): The stored file is missing" in capsys.readouterr().out
    # The log says which file, and which settings say where this host looks (the page does not show them).
    assert f"image {broken.pk}: its stored file {broken.file.name} is not in the media storage" in caplog.text
    assert caplog.text.count(f"image {broken.pk}: its stored file") == 1  # once, not once for each stage
    assert "check this host's IMAGINAITION_MEDIA_ROOT" in caplog.text
    statuses = dict(Image.objects.values_list("original_name", "status"))
    assert statuses == {"chelsea.jpg": "ready", "coffee.jpg": "failed", "rocket.jpg": "ready"}

    (media_root / broken.file.name).write_bytes(kept)  # the cause fixed
    call_command("retry_failed", "--sync")
    assert "1 failed image to process here" in capsys.readouterr().out
    broken.refresh_from_db()
    assert (broken.status, broken.masks_status) == ("ready", "ready")
    call_command("retry_failed")
    assert "0 failed images queued for the workers" in capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_a_lone_image_whose_model_cannot_load_is_marked_failed_not_left_pending(media_root, offline, monkeypatch):
    """A batch of one raised out of the task: the image stayed pending for good, and retry_failed did not
    see it. Now it fails as each image of a larger batch does, with the reason."""
    from tests.gallery.factories import make_image

    image = make_image(name="alone.png", status="pending")
    real_get_model = pipeline.get_model

    def segmenter_missing(key):
        if key == registry.active_models().segmenter:
            raise FileNotFoundError("weights/lraspp_mobilenet_v3_large-d234d4ea.pth is missing")
        return real_get_model(key)

    monkeypatch.setattr(pipeline, "get_model", segmenter_missing)
    embedded, segmented = pipeline.process_batch(first_id=image.pk)

    image.refresh_from_db()
    assert (embedded.processed, segmented.failed) == ([image.pk], [image.pk])
    assert image.status == "ready" and image.masks_status == "failed"
    assert "lraspp_mobilenet_v3_large-d234d4ea.pth is missing" in image.masks_error


@pytest.mark.django_db
def test_an_image_deleted_while_its_batch_runs_is_no_missing_file_for_the_operator(media_root, caplog):
    """Its file is gone because the image is: the log must not send the operator to the storage settings."""
    from gallery import services
    from retrieval.pipeline import _load_pictures
    from tests.gallery.factories import make_image

    image = make_image()
    in_the_batch = Image.objects.get(pk=image.pk)  # as the worker read it
    services.image_delete(image=image)
    (media_root / in_the_batch.file.name).unlink(missing_ok=True)  # the delete's removal after commit
    with caplog.at_level(logging.WARNING):
        assert _load_pictures([in_the_batch]) == ([], {in_the_batch.pk: "The image was deleted while it was being processed."})
    assert "not in the media storage" not in caplog.text


@pytest.mark.django_db
def test_an_unexpected_failure_reading_one_picture_fails_that_image_not_its_batch(media_root, monkeypatch, caplog):
    """Whatever reading one stored file raises, that image fails with the reason and the batch goes on (an
    error that escaped left every image of the batch pending, with no error and no Retry)."""
    from retrieval.pipeline import _read_picture
    from tests.gallery.factories import make_image

    def broken(data, max_side=1024):
        raise RuntimeError("a decoder's fault")

    monkeypatch.setattr(pipeline, "picture_for_models", broken)
    with caplog.at_level(logging.ERROR):
        assert _read_picture(make_image()) == "Reading the stored file failed: RuntimeError: a decoder's fault"
    assert "reading its stored file for the models failed" in caplog.text


@pytest.mark.django_db
def test_a_stored_file_damaged_on_disk_fails_saying_so_not_as_a_bad_upload(media_root, offline, caplog):
    """A stored original truncated on disk made its image fail with "The image is damaged or truncated",
    as if the upload had been bad (it decoded when added), and nothing in the log."""
    image = services.image_add(data=jpeg("coffee"), original_name="cut.jpg", enqueue=False).image
    stored = media_root / image.file.name
    stored.write_bytes(stored.read_bytes()[:200])
    embed_batch(first_id=image.pk)
    image.refresh_from_db()
    assert image.status == "failed" and image.error == FILE_CHANGED
    assert f"image {image.pk}: its stored file {image.file.name} is not the one that was added" in caplog.text
