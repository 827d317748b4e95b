"""Admin "reset / initialize from a folder": staff only, confirmation with counts, a real job."""

import html
import re
import threading

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.urls import reverse
from django_q.models import OrmQ
from PIL import Image as PILImage

from gallery import services
from gallery.models import Image, ResetJob
from gallery.reset import RESET_LOCK, ResetRefused, reset_run, reset_start
from gallery.services import image_add
from retrieval import pipeline
from tests.conftest import REPO, run_in_threads, wait_for
from tests.gallery.factories import add_embedding, add_mask, make_image


@pytest.fixture(autouse=True)
def import_root(settings, tmp_path):
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]  # the folders below are inside it


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "new-photos"
    (path / "sub").mkdir(parents=True)
    for i, color in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        PILImage.new("RGB", (40 + i, 30), color).save(path / f"photo{i}.png")
    PILImage.new("RGB", (20, 20), (90, 90, 90)).save(path / "sub" / "deep.jpg")
    (path / "readme.txt").write_text("not an image")
    return path


@pytest.fixture
def old_gallery(media_root):
    images = [make_image(name=f"old{i}.png") for i in range(2)]
    add_mask(images[0])
    add_embedding(images[0], space="content", model_key="autoencoder/v1", vector=[1 / 1024] * 1024)
    return images


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["anonymous", "user"])
def test_only_staff_reach_the_reset_pages(client, user, who):
    if who == "user":
        client.force_login(user)
    for url in (reverse("gallery-reset"), reverse("gallery-reset-status", args=[1])):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert client.post(reverse("gallery-reset-start"), {"folder": "/tmp", "confirm": "yes"}).status_code == 302
    assert not ResetJob.objects.exists()


@pytest.mark.django_db
def test_the_image_lists_reset_link_has_the_name_the_readme_gives_it(client, staff_user):
    client.force_login(staff_user)
    images = client.get(reverse("admin:gallery_image_changelist")).content.decode()
    assert f'<li><a href="{reverse("gallery-reset")}">Reset / initialize from a folder…</a></li>' in images
    assert "Reset / initialize from a folder" in (REPO / "README.md").read_text()


@pytest.mark.django_db
def test_staff_who_may_reset_but_not_view_images_are_never_sent_to_the_images_403(client, django_user_model, folder):
    """"No, take me back" and the "Images" crumb led to the images' list: a 403 for whoever holds only the
    reset permission."""
    resetter = django_user_model.objects.create_user("resetter", password="R3setter-pass!", is_staff=True)
    resetter.user_permissions.add(Permission.objects.get(codename="reset_gallery"))
    client.force_login(resetter)
    images = reverse("admin:gallery_image_changelist")
    assert client.get(images).status_code == 403
    assert images not in client.get(reverse("gallery-reset")).content.decode()
    confirm = client.post(reverse("gallery-reset"), {"folder": str(folder)}).content.decode()
    assert "Yes, reset and import" in confirm and images not in confirm
    back = re.search(r'<a href="([^"]+)" class="button cancel-link">No, take me back</a>', confirm).group(1)
    form = client.get(html.unescape(back))
    assert form.status_code == 200 and f'value="{folder}"' in form.content.decode()  # as typed
    assert not ResetJob.objects.exists()
    job = ResetJob.objects.create(folder=str(folder), state="done", created_by=resetter)
    progress = client.get(reverse("gallery-reset-progress", args=[job.pk])).content.decode()
    assert "Done: the images are in the gallery." in progress and images not in progress  # "See the images": 403


@pytest.mark.django_db
def test_the_form_rejects_a_missing_folder(client, staff_user, tmp_path):
    client.force_login(staff_user)
    page = client.post(reverse("gallery-reset"), {"folder": str(tmp_path / "nope")}).content.decode()
    assert "does not exist" in page


@pytest.mark.django_db
def test_confirmation_shows_what_will_be_deleted_and_imported(client, staff_user, folder, old_gallery):
    client.force_login(staff_user)
    page = client.post(reverse("gallery-reset"), {"folder": str(folder), "recursive": "on"}).content.decode()
    assert "<strong>2</strong> images and their <strong>2</strong> stored files" in page
    assert "<strong>1</strong> mask</li>" in page and "<strong>1</strong> embedding, and" in page  # "1 masks" was
    assert "imports <strong>5</strong> files" in page  # 4 images + the text file, which will be rejected
    single = client.post(reverse("gallery-reset"), {"folder": str(folder / "sub")}).content.decode()
    assert "imports <strong>1</strong> file from" in single  # "1 files"
    assert "those that are not images are skipped" in page and "reset-empty-folder" not in page


@pytest.mark.django_db(transaction=True)
def test_a_reset_without_sub_folders_names_the_ones_it_does_not_read(client, staff_user, folder, media_root,
                                                                       monkeypatch):
    """import_folder names them; the reset skipped them in silence, before it emptied the gallery and after."""
    client.force_login(staff_user)
    page = client.post(reverse("gallery-reset"), {"folder": str(folder)}).content.decode()
    assert "imports <strong>4</strong> files" in page
    assert 'Its sub-folders are <strong>not</strong> read ("Include sub-folders" is off): sub.' in html.unescape(page)
    page = client.post(reverse("gallery-reset"), {"folder": str(folder), "recursive": "on"}).content.decode()
    assert "imports <strong>5</strong> files" in page and "reset-folders-not-read" not in page

    monkeypatch.setattr(pipeline, "process_all_pending", lambda **kwargs: None)  # the files are what is tested
    job = reset_run(job_id=reset_start(folder=str(folder), recursive=False, user=staff_user).pk)
    assert job.state == "done" and job.imported == 3
    assert ["sub", 'a sub-folder: not read ("Include sub-folders" was off)'] in job.rejected
    progress = html.unescape(client.get(reverse("gallery-reset-progress", args=[job.pk])).content.decode())
    assert '<code>sub</code>: a sub-folder: not read ("Include sub-folders" was off)' in progress


@pytest.mark.django_db(transaction=True)
def test_confirming_creates_a_job_and_hands_it_to_the_workers(client, staff_user, folder):
    client.force_login(staff_user)
    response = client.post(reverse("gallery-reset-start"), {"folder": str(folder), "recursive": "on", "confirm": "yes"})
    job = ResetJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("gallery-reset-progress", args=[job.pk])
    queued = [entry.task for entry in OrmQ.objects.all()]
    assert [(t["func"], t["args"]) for t in queued] == [("gallery.reset.reset_run_task", (job.pk,))]
    assert client.get(response["Location"]).status_code == 200
    with pytest.raises(ResetRefused, match="already in progress"):
        reset_start(folder=str(folder), recursive=True, user=staff_user)


@pytest.mark.django_db(transaction=True)
def test_the_job_replaces_the_gallery_with_the_folder(client, staff_user, folder, old_gallery, media_root, settings,
                                                      tmp_path):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    old_files = [media_root / image.file.name for image in old_gallery]
    staged = media_root / "staging" / "someone-s-upload.png"  # retrieval's staged uploads go too
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"staged")
    job = reset_start(folder=str(folder), recursive=True, user=staff_user)

    job = reset_run(job_id=job.pk)  # the real pipeline (retrieval's receivers), in this process

    assert job.state == "done", job.error
    assert job.phase == "done: 4 images imported, the indexes built"
    assert (job.deleted_images, job.total_files, job.imported, job.duplicates) == (2, 5, 4, 0)
    assert job.rejected == [["readme.txt", "The file is not an image we can read; accepted: JPEG, PNG, WebP, AVIF, "
                                           "HEIC, GIF, BMP, TIFF."]]
    assert job.embedded == 4
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["deep.jpg", "photo0.png", "photo1.png",
                                                                              "photo2.png"]
    assert set(Image.objects.values_list("status", flat=True)) == {"ready"}
    assert not any(path.exists() for path in old_files)
    assert not staged.exists()
    client.force_login(staff_user)
    status = client.get(reverse("gallery-reset-status", args=[job.pk])).json()
    assert status["state"] == "done" and status["state_label"] == "Done" and status["imported"] == 4
    page = client.get(reverse("gallery-reset-progress", args=[job.pk])).content.decode()
    # Both parts have a bar: reading the files is the short one, processing the images the long one.
    assert '<progress id="reset-bar" max="5" value="5"' in page
    assert '<progress id="reset-processed-bar" max="4" value="4"' in page
    search = client.post(reverse("api-search"), {"image_id": Image.objects.first().pk, "k": 3},
                         content_type="application/json").json()
    assert search["engine"] == "faiss" and len(search["results"]) == 3  # indexes were rebuilt


@pytest.mark.django_db
def test_images_the_workers_processed_for_the_reset_and_images_added_meanwhile_count_as_processed(
        client, staff_user, folder, media_root, monkeypatch):
    """Workers busy with another import take the reset's pending images too: the job counted only the
    batches its own run processed, and ended at "Processed: 18 of 30" with all 30 processed."""
    def workers_help(*, progress=None, **kwargs):
        pending = list(Image.objects.filter(status="pending").order_by("pk").values_list("pk", flat=True))
        Image.objects.filter(pk__in=pending[:3]).update(status="ready")  # a worker's batch, meanwhile
        Image.objects.filter(pk__in=pending[3:]).update(status="failed")  # this run's: done, if failed
        make_image(name="added-meanwhile.png", status="ready")  # an upload while the reset ran, processed with it
        progress(len(pending[3:]))

    monkeypatch.setattr(pipeline, "process_all_pending", workers_help)  # what retrieval's receiver runs
    job = reset_run(job_id=reset_start(folder=str(folder), recursive=True, user=staff_user).pk)
    assert job.state == "done" and job.imported == 4 and (job.embedded, job.to_process) == (5, 5)
    client.force_login(staff_user)
    page = client.get(reverse("gallery-reset-progress", args=[job.pk])).content.decode()
    assert '<progress id="reset-processed-bar" max="5" value="5"' in page  # it said 5 of 4
    assert 'Processed: <span id="reset-embedded">5</span> of <span id="reset-to-process">5</span>' in page
    status = client.get(reverse("gallery-reset-status", args=[job.pk])).json()
    assert (status["embedded"], status["to_process"]) == (5, 5)


@pytest.mark.django_db
def test_images_deleted_while_the_reset_processes_leave_it_fully_processed(client, staff_user, folder, media_root,
                                                                          monkeypatch):
    """It ended at "Processed: 34 of 40" when 6 of its images were deleted meanwhile: the 34 left were all done."""
    def processed_while_one_is_deleted(*, progress=None, **kwargs):
        pending = list(Image.objects.filter(status="pending").order_by("pk"))
        services.image_delete(image=pending[0])  # by its page, the API or admin, while the reset runs
        Image.objects.filter(pk__in=[image.pk for image in pending[1:]]).update(status="ready")
        progress(len(pending) - 1)

    monkeypatch.setattr(pipeline, "process_all_pending", processed_while_one_is_deleted)
    job = reset_run(job_id=reset_start(folder=str(folder), recursive=True, user=staff_user).pk)
    assert job.state == "done" and job.imported == 4 and (job.embedded, job.to_process) == (3, 3)
    client.force_login(staff_user)
    page = client.get(reverse("gallery-reset-progress", args=[job.pk])).content.decode()
    assert 'Processed: <span id="reset-embedded">3</span> of <span id="reset-to-process">3</span>' in page
    assert client.get(reverse("gallery-reset-status", args=[job.pk])).json()["to_process"] == 3


@pytest.mark.django_db(transaction=True)
def test_a_job_whose_images_failed_says_how_many_and_how_to_retry_them(client, staff_user, folder, media_root,
                                                                       settings, tmp_path, monkeypatch):
    """It said only "done" (and "Processed: 50 of 50") when 41 of 50 failed as the storage stopped answering."""
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    real_read = pipeline._read_picture

    def storage_gone_for_two(image):
        if image.original_name in ("photo0.png", "photo1.png"):
            return "The stored file could not be read: Could not connect to the endpoint URL"
        return real_read(image)

    monkeypatch.setattr(pipeline, "_read_picture", storage_gone_for_two)
    job = reset_run(job_id=reset_start(folder=str(folder), recursive=True, user=staff_user).pk)
    assert job.state == "done" and job.phase == "done: 4 images imported, 2 failed, the indexes built"
    assert job.error.startswith("2 images could not be processed; each image's page says why.")
    assert "`python manage.py retry_failed`" in job.error
    client.force_login(staff_user)
    page = client.get(reverse("gallery-reset-progress", args=[job.pk])).content.decode()
    assert '<p id="reset-error" class="errornote" >2 images could not be processed' in page


@pytest.mark.django_db(transaction=True)
def test_a_failing_job_ends_failed_with_the_message(staff_user, folder, media_root, monkeypatch):
    job = reset_start(folder=str(folder), recursive=False, user=staff_user)

    def broken(**kwargs):
        raise RuntimeError("the models are not available")

    monkeypatch.setattr(pipeline, "process_all_pending", broken)  # what retrieval's receiver runs
    job = reset_run(job_id=job.pk)
    assert job.state == "failed" and "the models are not available" in job.error and job.finished_at


@pytest.mark.django_db
def test_a_job_that_fails_after_importing_hands_the_imported_images_to_the_workers(
        staff_user, folder, media_root, monkeypatch, django_capture_on_commit_callbacks):
    """They were added without a task (the run processes its own): a failure left them pending for good."""
    from gallery import events, reset

    def import_then_fail(**kwargs):
        reset_module_import(**kwargs)
        raise RuntimeError("the disk went away")

    reset_module_import = reset.folder_import
    monkeypatch.setattr(reset, "folder_import", import_then_fail)
    scheduled: list[int] = []

    def receiver(sender, image_ids, **kwargs):
        scheduled.extend(image_ids)

    events.images_added.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            job = reset_run(job_id=reset_start(folder=str(folder), recursive=False, user=staff_user).pk)
    finally:
        events.images_added.disconnect(receiver)
    assert job.state == "failed" and "the disk went away" in job.error
    assert "The 3 images it had imported go to the workers." in job.error
    assert sorted(scheduled) == sorted(Image.objects.values_list("pk", flat=True)) and len(scheduled) == 3


@pytest.mark.django_db
def test_a_reset_stopped_by_a_full_disk_counts_what_it_imported_and_refused(staff_user, folder, media_root,
                                                                            monkeypatch):
    """Its error said "2 files were added before it" while its page said "Imported: 0", "Not imported: none"."""
    real_add, tried = services.image_add, []

    def add_until_the_disk_is_full(**kwargs):
        tried.append(kwargs["original_name"])
        if len(tried) == 3:
            raise services.StorageFailed("Storing the file failed: No space left on device.")
        return real_add(**kwargs)

    monkeypatch.setattr(services, "image_add", add_until_the_disk_is_full)
    job = reset_run(job_id=reset_start(folder=str(folder), recursive=False, user=staff_user).pk)
    assert job.state == "failed" and "No space left on device. 2 files were added before it." in job.error
    job.refresh_from_db()
    assert (job.imported, job.duplicates, Image.objects.count()) == (2, 0, 2)
    assert {name for name, _ in job.rejected} >= {"sub"}, job.rejected  # refused before the disk filled


@pytest.mark.django_db
def test_a_sub_folder_the_worker_cannot_read_is_listed_as_rejected_and_the_rest_imported(
        staff_user, folder, old_gallery, monkeypatch):
    """Its PermissionError came after the gallery was emptied: the reset failed with nothing imported."""
    from pathlib import Path

    real_iterdir = Path.iterdir

    def iterdir(path):
        if path == folder / "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real_iterdir(path)

    job = reset_start(folder=str(folder), recursive=True, user=staff_user)
    monkeypatch.setattr(Path, "iterdir", iterdir)  # this worker runs as a user who may not read sub/
    job = reset_run(job_id=job.pk)
    assert job.state == "done" and job.imported == 3 and job.total_files == 4
    assert ["sub", "could not read the folder: Permission denied"] in job.rejected
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["photo0.png", "photo1.png", "photo2.png"]


@pytest.mark.django_db
def test_a_folder_that_cannot_be_listed_in_the_preview_is_refused_on_the_form(client, staff_user, folder,
                                                                               monkeypatch):
    from gallery import reset

    def unreadable(**kwargs):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(reset, "folder_files", unreadable)  # changed since the check: was a 500
    client.force_login(staff_user)
    response = client.post(reverse("gallery-reset"), {"folder": str(folder)})
    page = response.content.decode()
    assert response.status_code == 200 and f"{folder} cannot be read by the server: Permission denied." in page
    assert not ResetJob.objects.exists()


@pytest.mark.django_db
def test_a_folder_the_worker_cannot_read_stops_the_reset_before_anything_is_deleted(staff_user, folder, old_gallery,
                                                                                     monkeypatch):
    from pathlib import Path

    real_iterdir = Path.iterdir

    def iterdir(path):
        if path == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_iterdir(path)

    job = reset_start(folder=str(folder), recursive=True, user=staff_user)
    monkeypatch.setattr(Path, "iterdir", iterdir)  # this worker runs as a user who may not read it
    job = reset_run(job_id=job.pk)
    assert job.state == "failed" and job.error == (  # not "by its own IMAGINAITION_IMPORT_ROOTS": not about them
        f"The worker running the reset refused the folder: {folder} cannot be read by the server. Nothing was deleted.")
    assert Image.objects.count() == 2  # the old gallery is still there


def _reset_lock_free() -> bool:
    from gallery.reset import RESET_LOCK

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [RESET_LOCK])
        if not cursor.fetchone()[0]:
            return False
        cursor.execute("SELECT pg_advisory_unlock(%s)", [RESET_LOCK])
    return True


def _hold_the_reset_lock():
    """A second database session holding the lock, as a live reset's worker does."""
    import psycopg
    from django.db import connection

    from gallery.reset import RESET_LOCK

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    other = psycopg.connect(**params, autocommit=True)
    other.execute("SELECT pg_advisory_lock(%s)", [RESET_LOCK])
    return other


@pytest.mark.django_db(transaction=True)
def test_a_reset_whose_worker_died_is_resumed_by_the_retried_task_and_no_longer_blocks(
        staff_user, folder, media_root, settings, tmp_path, monkeypatch):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    job = reset_start(folder=str(folder), recursive=True, user=staff_user)
    # What a worker killed while importing leaves: the gallery emptied, one file imported, still "running".
    survivor = image_add(data=(folder / "photo0.png").read_bytes(), original_name="photo0.png", enqueue=False).image
    ResetJob.objects.filter(pk=job.pk).update(state="running", phase="importing files", deleted_images=2,
                                              scanned=1)

    alive = _hold_the_reset_lock()  # while a live run holds the lock, a second copy of the task leaves it alone
    try:
        assert reset_run(job_id=job.pk).state == "running"
        with pytest.raises(ResetRefused, match="in progress"):
            reset_start(folder=str(folder), recursive=True, user=staff_user)
    finally:
        alive.close()
    # The server frees a closed session's locks once its backend has exited, a moment after close()
    # returns (a busy machine made the run below find the lock still held).
    wait_for(_reset_lock_free, timeout=30, message="the dead session's reset lock to be released")

    job = reset_run(job_id=job.pk)  # the queue hands the dead run's task out again
    assert job.state == "done", job.error
    assert Image.objects.filter(pk=survivor.pk).exists()  # not deleted again: the deletion was done
    assert (job.deleted_images, job.imported, job.duplicates, job.embedded) == (2, 4, 0, 4)
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["deep.jpg", "photo0.png", "photo1.png",
                                                                              "photo2.png"]


@pytest.mark.django_db(transaction=True)
def test_a_new_reset_ends_one_left_running_by_a_dead_worker(staff_user, folder, media_root):
    dead = reset_start(folder=str(folder), recursive=True, user=staff_user)
    ResetJob.objects.filter(pk=dead.pk).update(state="running", phase="computing embeddings and masks")

    new = reset_start(folder=str(folder), recursive=False, user=staff_user)  # nobody holds the lock: it died

    dead.refresh_from_db()
    assert dead.state == "failed" and "worker running it ended" in dead.error and dead.finished_at
    assert "computing embeddings and masks" in dead.error
    assert new.state == "queued" and reset_run(job_id=dead.pk).state == "failed"  # a late retry leaves it ended
    assert OrmQ.objects.count() == 2  # both tasks queued; only the new one will do anything


@pytest.mark.django_db(transaction=True)
def test_two_starts_at_once_make_one_job_and_refuse_the_other(staff_user, folder):
    # A double-click on "Yes, reset": two requests, each in its own connection, reach the check together.
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def start() -> None:
        try:
            barrier.wait()
            reset_start(folder=str(folder), recursive=True, user=staff_user)
            outcomes.append("started")
        except ResetRefused as exc:
            outcomes.append(str(exc))
        finally:
            connection.close()

    run_in_threads(start, 2)

    assert sorted(outcomes) == ["A reset is already in progress; wait for it to finish.", "started"]
    assert ResetJob.objects.count() == 1 and OrmQ.objects.count() == 1


@pytest.mark.django_db
def test_a_confirmation_whose_folder_went_away_says_so_and_starts_nothing(client, staff_user, tmp_path):
    client.force_login(staff_user)
    gone = tmp_path / "was-here"
    response = client.post(reverse("gallery-reset-start"), {"folder": str(gone), "confirm": "yes"}, follow=True)
    page = response.content.decode()
    assert "does not exist" in page and "not confirmed" not in page
    assert f'value="{gone}"' in page  # the form again with the folder typed, not an empty one
    assert not ResetJob.objects.exists()
    # A reload of the confirmation's address (a GET) goes back to the form instead of a blank 405.
    assert client.get(reverse("gallery-reset-start"))["Location"] == reverse("gallery-reset")
    # HEAD as GET: it went the POST's way, leaving "This field is required." on the next page opened.
    assert client.head(reverse("gallery-reset-start"))["Location"] == reverse("gallery-reset")
    assert "This field is required" not in client.get(reverse("admin:index")).content.decode()


@pytest.mark.django_db
def test_a_reset_from_an_empty_folder_warns_that_the_gallery_will_be_empty(client, staff_user, tmp_path, old_gallery):
    client.force_login(staff_user)
    empty = tmp_path / "empty"
    empty.mkdir()
    page = client.post(reverse("gallery-reset"), {"folder": str(empty), "recursive": "on"}).content.decode()
    assert "imports <strong>0</strong> files" in page and 'id="reset-empty-folder"' in page
    assert "will be <strong>empty</strong> afterwards" in page


@pytest.mark.django_db(transaction=True)
def test_a_reset_whose_images_folder_takes_no_file_deletes_nothing(staff_user, folder, old_gallery, monkeypatch):
    """The check stored its file elsewhere in the media folder: with only images/ refusing (a mount of its own,
    full or read-only), the reset emptied the gallery, then failed storing the folder's first file."""
    from gallery.storage import AtomicFileSystemStorage
    real_save = AtomicFileSystemStorage._save

    def images_refused(self, name, content):
        if name.startswith("images/"):
            raise PermissionError(1, "Operation not permitted")
        return real_save(self, name, content)

    monkeypatch.setattr(AtomicFileSystemStorage, "_save", images_refused)
    job = reset_run(job_id=reset_start(folder=str(folder), recursive=True, user=staff_user).pk)
    assert job.state == "failed" and job.deleted_images == 0 and Image.objects.count() == len(old_gallery)
    assert "could not be reached: Operation not permitted" in job.error and job.error.endswith("Nothing was deleted.")


@pytest.mark.django_db(transaction=True)
def test_a_reset_from_a_folder_with_no_image_ends_done_with_the_gallery_empty(staff_user, tmp_path, old_gallery,
                                                                              settings):
    """Its last phase (65 characters) did not fit the column: the job stayed "running" and was handed out again
    every minute, each time failing the same way."""
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no picture here")
    job = reset_run(job_id=reset_start(folder=str(notes), recursive=True, user=staff_user).pk)
    assert job.state == "done" and job.phase == "done: the folder held no image to import (see the rejected files)"
    assert not Image.objects.exists() and job.deleted_images == 2
    job = ResetJob.objects.get(pk=job.pk)
    job.phase = "done: 1,000,000 images imported, 1,000,000 failed, the indexes built"  # the longest it writes
    job.save()


@pytest.mark.django_db
def test_the_status_of_an_unknown_job_is_a_json_404(client, staff_user):
    client.force_login(staff_user)
    response = client.get(reverse("gallery-reset-status", args=[999]))
    assert response.status_code == 404 and response.json() == {"detail": "There is no reset job 999."}


@pytest.mark.django_db
def test_a_reset_job_in_progress_cannot_be_deleted_nor_any_job_edited_in_admin(client, staff_user):
    running = ResetJob.objects.create(folder="/somewhere", state="running", created_by=staff_user)
    ended = ResetJob.objects.create(folder="/elsewhere", state="done", created_by=staff_user)
    client.force_login(staff_user)

    # Its delete page sends the user back to the job, saying why (not a bare 403).
    for answer in (client.get(reverse("admin:gallery_resetjob_delete", args=[running.pk]), follow=True),
                   client.post(reverse("admin:gallery_resetjob_delete", args=[running.pk]), {"post": "yes"},
                               follow=True)):
        assert answer.redirect_chain == [(reverse("admin:gallery_resetjob_change", args=[running.pk]), 302)]
        assert "still in progress: it can be deleted once it has ended" in answer.content.decode()
    for step in ({}, {"post": "yes"}):  # the confirmation, and a post of it
        bulk = client.post(reverse("admin:gallery_resetjob_changelist"),
                           {"action": "delete_selected", "_selected_action": [running.pk, ended.pk], **step},
                           follow=True)
        page = bulk.content.decode()
        assert bulk.redirect_chain == [(reverse("admin:gallery_resetjob_changelist"), 302)]
        assert f"{running}: still in progress, so nothing was deleted" in page and "protected" not in page
    assert set(ResetJob.objects.values_list("pk", flat=True)) == {running.pk, ended.pk}  # nothing deleted

    other = ResetJob.objects.create(folder="/other", state="failed", created_by=staff_user)
    changelist = reverse("admin:gallery_resetjob_changelist")
    confirm = client.post(changelist, {"action": "delete_selected", "_selected_action": [other.pk]}).content.decode()
    assert "Delete multiple objects" in confirm and 'name="action" value="delete_selected"' in confirm
    assert client.post(changelist, {"action": "delete_selected", "_selected_action": [other.pk],
                                    "post": "yes"}).status_code == 302
    assert not ResetJob.objects.filter(pk=other.pk).exists()  # ended jobs go in bulk

    page = client.get(reverse("admin:gallery_resetjob_change", args=[ended.pk])).content.decode()
    assert 'name="_save"' not in page
    assert client.post(reverse("admin:gallery_resetjob_delete", args=[ended.pk]), {"post": "yes"}).status_code == 302
    assert not ResetJob.objects.filter(pk=ended.pk).exists()


def _queued_now() -> list[str]:
    """Names of the tasks a worker would take now (a taken task's lock is its retry time, still to come)."""
    from django.utils import timezone

    return sorted(entry.task["name"] for entry in OrmQ.objects.filter(lock__lte=timezone.now()))


@pytest.mark.django_db(transaction=True)
def test_a_starting_cluster_hands_out_again_at_once_a_reset_whose_worker_stopped(staff_user, folder, media_root):
    from datetime import timedelta

    from django.utils import timezone

    from gallery.work_resume import work_cut_short_resume

    job = reset_start(folder=str(folder), recursive=True, user=staff_user)
    # Its worker took the task (the queue hands it out again in 12 min) and stopped mid-way.
    OrmQ.objects.update(lock=timezone.now() + timedelta(seconds=720))
    ResetJob.objects.filter(pk=job.pk).update(state="running", phase="importing files")
    pending = make_image(name="imported-before-the-stop.png", status="pending")

    alive = _hold_the_reset_lock()  # a live run elsewhere: left alone
    try:
        assert work_cut_short_resume().resets == [] and _queued_now() == []
    finally:
        alive.close()
    wait_for(_reset_lock_free, timeout=30, message="the dead session's reset lock to be released")

    resumed = work_cut_short_resume()

    # The reset's own task processes its images: they are not queued beside it.
    assert (resumed.resets, resumed.images) == ([job.pk], []) and _queued_now() == [f"reset-{job.pk}"]
    job = reset_run(job_id=job.pk)  # the copy a worker takes at once
    assert job.state == "done", job.error
    assert Image.objects.get(pk=pending.pk).status == "ready"
    assert work_cut_short_resume().resets == []  # ended: nothing more to hand out


@pytest.mark.django_db(transaction=True)
def test_a_reset_whose_task_still_waits_in_the_queue_is_not_handed_out_again(staff_user, folder, media_root, caplog):
    """The 5-minute schedule found a job queued behind 115 image tasks, nobody running it: it logged "handed to
    the workers again (queued when its worker stopped)" of a worker that had never taken it, and queued a copy."""
    from gallery.work_resume import work_cut_short_resume

    job = reset_start(folder=str(folder), recursive=True, user=staff_user)
    assert _queued_now() == [f"reset-{job.pk}"]
    with caplog.at_level("WARNING", logger="gallery.reset"):
        assert work_cut_short_resume().resets == []
    assert _queued_now() == [f"reset-{job.pk}"] and "handed to the workers again" not in caplog.text


@pytest.mark.django_db
def test_the_confirmation_says_when_a_reset_is_in_progress(client, staff_user, folder):
    client.force_login(staff_user)
    page = client.post(reverse("gallery-reset"), {"folder": str(folder)}).content.decode()
    assert "reset-in-progress" not in page
    job = reset_start(folder=str(folder), recursive=False, user=staff_user)
    page = client.post(reverse("gallery-reset"), {"folder": str(folder)}).content.decode()
    assert 'id="reset-in-progress"' in page and reverse("gallery-reset-progress", args=[job.pk]) in page


@pytest.mark.django_db
def test_the_progress_page_hands_a_reset_whose_worker_died_out_again_at_once(client, staff_user, folder,
                                                                             django_capture_on_commit_callbacks):
    """Its page said "Running" for the queue's retry time (12 min) while nobody ran it."""
    from django.core.cache import caches

    caches["shared"].clear()
    client.force_login(staff_user)
    job = reset_start(folder=str(folder), recursive=False, user=staff_user)
    OrmQ.objects.all().delete()  # the dead worker's task: taken, gone with it
    status_url = reverse("gallery-reset-status", args=[job.pk])
    assert client.get(status_url).json()["state"] == "queued" and OrmQ.objects.count() == 0  # waits for a worker

    ResetJob.objects.filter(pk=job.pk).update(state="running", phase="importing files")
    alive, done = threading.Event(), threading.Event()

    def live_worker():  # holds the run lock on a connection of its own, as the worker running it does
        from django.db import connection as own

        with own.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [RESET_LOCK])
            alive.set()
            done.wait(30)
            cursor.execute("SELECT pg_advisory_unlock(%s)", [RESET_LOCK])
        own.close()

    holder = threading.Thread(target=live_worker)
    holder.start()
    try:
        assert alive.wait(30)
        with django_capture_on_commit_callbacks(execute=True):
            client.get(status_url)
        assert OrmQ.objects.count() == 0  # its worker runs it: nothing to hand out
    finally:
        done.set()
        holder.join(30)
    with django_capture_on_commit_callbacks(execute=True):  # its worker died: at the next poll, not a minute on
        assert client.get(status_url).json()["state"] == "running"
    assert OrmQ.objects.count() == 1  # handed out again
    caches["default"].clear()  # the next poll may reach another web process
    with django_capture_on_commit_callbacks(execute=True):
        client.get(status_url)
    assert OrmQ.objects.count() == 1  # not again on every poll, by any process
    assert reset_run(job_id=job.pk).state == "done"  # the copy resumes it
