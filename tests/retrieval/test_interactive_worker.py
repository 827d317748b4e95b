"""An upload's labels and masks come from the interactive worker (a real `Q_CLUSTER_NAME=interactive
manage.py qcluster`), never from the web process: the page shows that it is working, then the labels;
a search by an API upload's region waits for the worker; with no worker it answers 503, not forever."""

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from retrieval.encoders import registry
from retrieval.models import StagedUploadRecord
from tests.conftest import wait_for
from tests.retrieval.test_pipeline import jpeg

pytestmark = pytest.mark.integration


def wait_for_staged_segmentation(client, worker) -> dict:
    """Poll the page's state URL until the interactive worker is done with the staged upload."""
    def done():
        if worker.process.poll() is not None:
            pytest.fail(f"qcluster exited:\n{worker.log()}")
        return client.get(reverse("pages:staged-state")).json()["state"] != "working"

    wait_for(done, timeout=180, interval=0.5, message="the interactive worker to segment the upload")
    return client.get(reverse("pages:staged-state")).json()


@pytest.fixture
def worker_mode(settings, media_root):
    settings.IMAGINAITION_SEGMENT_UPLOADS_INLINE = False  # the product's default
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    registry.unload_all()  # this process starts with no model loaded, as a fresh web process
    yield settings
    registry.unload_all()


def segmenter_loaded_here() -> bool:
    return registry.active_models().segmenter in registry._loaded


def test_the_page_waits_for_the_interactive_worker_and_the_web_process_never_loads_the_segmenter(
        client, user, worker_mode, media_root, start_worker):
    worker = start_worker(Q_CLUSTER_NAME="interactive", IMAGINAITION_MODEL_PROFILE="offline",
                          IMAGINAITION_MEDIA_ROOT=str(media_root))
    client.force_login(user)
    response = client.post(reverse("pages:home"), {"file": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea"))})
    assert response.status_code == 302
    first = client.get(reverse("pages:home")).content.decode()
    state = client.get(reverse("pages:staged-state")).json()
    if state["state"] == "working":  # the worker may already be done; if not, the page says it is working
        assert "Finding the labels and masks of your picture" in first and "data-poll-url" in first

    state = wait_for_staged_segmentation(client, worker)
    assert state["state"] == "ready" and "cat" in state["labels"], (state, worker.log()[-3000:])
    page = client.get(reverse("pages:home")).content.decode()
    assert "Finding the labels" not in page and "Search with this region" in page
    overlay = client.get(reverse("pages:staged-overlay", args=[8]))  # the cat's mask, written by the worker
    assert overlay.status_code == 200 and overlay["Content-Type"] == "image/png"
    region = client.get(reverse("pages:search"), {"upload": client.session["staged_upload"], "label": "cat"})
    assert region.status_code == 200 and "the cat in chelsea.jpg" in region.content.decode()
    shouted = client.get(reverse("pages:search"), {"upload": client.session["staged_upload"], "label": "CAT"})
    assert "the cat in chelsea.jpg" in shouted.content.decode()  # named as the segmenter names it
    blank = client.get(reverse("pages:search"), {"upload": client.session["staged_upload"], "label": " "})
    assert blank.status_code == 200  # the whole picture, as the API takes it (was "This picture has no  ")

    ask = {"image": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea")), "label": "aeroplane"}
    absent = client.post(reverse("api-search"), ask)  # segmented by the worker, waited for
    why = absent.json()["label"][0]
    assert absent.status_code == 400 and "its labels:" in why and "cat" in why
    found = client.post(reverse("api-search"), {"image": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea")),
                                                "label": "cat"})
    assert found.status_code == 200, found.content
    assert not segmenter_loaded_here()  # the web process embedded the region, the worker segmented it
    assert registry.active_models().semantic in registry._loaded
    tokens = {path.name.split("-")[0].split(".")[0] for path in (media_root / "staging").iterdir()}
    assert tokens == {client.session["staged_upload"]}  # the API's uploads left nothing behind
    assert set(StagedUploadRecord.objects.values_list("token", flat=True)) == tokens


def test_without_an_interactive_worker_an_api_region_search_answers_503_and_the_page_keeps_waiting(
        client, user, worker_mode, media_root, monkeypatch):
    from retrieval import uploads

    reads = []
    real_read = uploads.staged_read
    worker_mode.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT = 1.0
    client.force_login(user)
    with monkeypatch.context() as counted:
        counted.setattr(uploads, "staged_read", lambda token: reads.append(token) or real_read(token))
        response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea")),
                                                       "label": "cat"})
    assert response.status_code == 503 and "interactive worker" in response.json()["detail"]
    assert 3 <= len(reads) <= 10  # it kept asking while it waited, less often as the wait grew (every 50 ms: 20)
    assert list((media_root / "staging").glob("*")) == []  # the temporary upload is gone (and its folder)
    assert not StagedUploadRecord.objects.exists()
    worker_mode.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT = 600.0
    client.post(reverse("pages:home"), {"file": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea"))})
    assert client.get(reverse("pages:staged-state")).json()["state"] == "working"
    waiting = client.get(reverse("pages:search"), {"upload": client.session["staged_upload"], "label": "cat"},
                         follow=True).content.decode()
    assert "still being found" in waiting
    whole = client.get(reverse("pages:search"), {"upload": client.session["staged_upload"]})  # needs no masks
    assert whole.status_code == 200
    assert not segmenter_loaded_here()
    # Nobody answers for longer than the timeout: the page stops waiting and says why.
    worker_mode.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT = 0.5
    time.sleep(0.6)
    state = client.get(reverse("pages:staged-state")).json()
    assert state["state"] == "failed" and "not found in time" in state["error"]
    assert "stopped while working on it" in state["error"]  # a worker killed on it: the task runs once only
    assert "Q_CLUSTER_NAME" not in state["error"]  # the page's own poll shows a visitor no operator's detail
    page = client.get(reverse("pages:home")).content.decode()
    assert "data-poll-url" not in page and "You can still search with the whole picture" in page
    # A visitor reads what happened and what to do; which worker to start is for an administrator.
    assert "not found in time" in page and "check again</a>" in page and "Q_CLUSTER_NAME" not in page
    region = client.get(reverse("pages:search"), {"upload": client.session["staged_upload"], "label": "cat"},
                        follow=True).content.decode()
    assert "not found in time" in region and "Search with the whole picture instead" in region
    assert "Q_CLUSTER_NAME" not in region
    user.is_staff = True
    user.save()
    for_staff = client.get(reverse("pages:home")).content.decode()
    assert "For administrators: No worker found" in for_staff and "stopped while working on it (its log" in for_staff
    assert "has no cat" not in region  # its labels were never found: not "it has none"


def test_a_reset_while_an_api_upload_waits_for_its_labels_answers_409_send_it_again(
        client, user, worker_mode, media_root, monkeypatch):
    from retrieval import uploads

    real_stage = uploads._stage

    def staged_then_reset(**kwargs):
        staged = real_stage(**kwargs)
        uploads.staged_clear_all()  # what a gallery reset does (the gallery_emptied receiver)
        return staged

    monkeypatch.setattr(uploads, "_stage", staged_then_reset)
    client.force_login(user)
    response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea")),
                                                   "label": "cat"})
    assert response.status_code == 409 and "send it again" in response.json()["detail"]


def test_with_no_interactive_worker_running_a_queued_upload_fails_long_before_the_timeout(
        client, user, worker_mode, media_root, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import OrmQ

    from retrieval import uploads

    worker_mode.IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT = 600.0
    monkeypatch.setattr(uploads, "UNCLAIMED_SECONDS", 0.5)
    client.force_login(user)
    started = time.monotonic()
    response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea")),
                                                   "label": "cat"})
    assert response.status_code == 503 and "No interactive worker took the picture" in response.json()["detail"]
    assert time.monotonic() - started < 60  # not the 600 s timeout
    assert not StagedUploadRecord.objects.exists()

    client.post(reverse("pages:home"), {"file": SimpleUploadedFile("chelsea.jpg", jpeg("chelsea"))})
    # A worker busy with another upload holds that task (stamped with a time to come): keep waiting.
    busy = OrmQ.objects.create(key=uploads.INTERACTIVE_CLUSTER, payload="another upload",
                               lock=timezone.now() + timedelta(seconds=60))
    time.sleep(0.6)
    assert client.get(reverse("pages:staged-state")).json()["state"] == "working"
    busy.delete()  # nobody holds anything, and the upload's task still waits: no worker is running
    assert client.get(reverse("pages:staged-state")).json()["error"].startswith("Your picture's labels were not")
    user.is_staff = True
    user.save()
    state = client.get(reverse("pages:staged-state")).json()
    assert state["state"] == "failed" and "No interactive worker took the picture" in state["error"]
