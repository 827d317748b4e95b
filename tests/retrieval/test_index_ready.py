"""Indexes ready when the work is done: the first index of each space is built as soon as its first
vectors are written, by whichever process wrote them; meanwhile the status reads "building index",
and "index missing" only when nothing is on its way to build it."""

import numpy as np
import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from PIL import Image as PILImage

from retrieval import status
from retrieval.encoders import registry
from retrieval.index_snapshots import manager
from retrieval.integrity import integrity_check, integrity_heal
from retrieval.models import Embedding, IndexState
from retrieval.work_locks import MISSING_INDEX_BUILD, claim_key
from tests.gallery.factories import add_embedding, make_image

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def offline(settings, media_root):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    return registry.active_models()


def test_a_sync_import_ends_with_its_indexes_built_without_any_query(offline, settings, tmp_path):
    from skimage import data as skdata

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        PILImage.fromarray(getattr(skdata, name)()).save(folder / f"{name}.jpg", quality=90)
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]

    call_command("import_folder", str(folder), "--sync")

    report = integrity_check(check_files=False)
    assert report.state == "ok", report.as_dict()
    built = {(h.owner, h.space) for h in report.indexes if h.database_count and h.index_count == h.database_count}
    assert built == {(owner, space) for owner in ("image", "region") for space in ("semantic", "content")}
    assert IndexState.objects.exclude(file_name="").count() == 4
    assert status.banner_refresh().index == "ok"


def _second_session() -> psycopg.Connection:
    """Another process's connection to the same database."""
    return psycopg.connect(**connection.get_connection_params(), autocommit=True)


def _embedded_image(models, seed: int):
    """An image with a (random) vector in each space of the active models, no index yet."""
    image = make_image()
    semantic = np.random.default_rng(seed).normal(size=registry.model_dim(models.semantic))
    add_embedding(image, space="semantic", model_key=models.semantic, vector=semantic / np.linalg.norm(semantic))
    add_embedding(image, space="content", model_key=models.content, vector=np.full(1024, 1 / 1024))
    return image


def test_vectors_without_an_index_read_building_index_while_work_is_in_flight(offline, monkeypatch):
    image = _embedded_image(offline, seed=0)

    def states() -> set[str]:
        return {h.state for h in integrity_check(check_files=False).indexes if h.owner == "image"}

    assert states() == {"index missing"}  # vectors, and nothing building their index

    with _second_session() as other:
        for key in (MISSING_INDEX_BUILD, claim_key("status", image.pk), claim_key("masks_status", 10**9)):
            other.execute("SELECT pg_advisory_lock(%s)", [key])
            report = integrity_check(check_files=False)
            assert states() == {"building index"} and report.state == "building index", key
            assert integrity_heal(report) == []  # left to the build on its way
            other.execute("SELECT pg_advisory_unlock(%s)", [key])
            assert states() == {"index missing"}
        other.execute("SELECT pg_advisory_lock(%s)", [12345])  # a lock of other work means nothing here
        assert states() == {"index missing"}

    monkeypatch.setattr(manager, "copying", lambda **where: True)  # this host copying another host's index
    assert states() == {"building index"}
    monkeypatch.undo()

    assert sorted(integrity_heal(integrity_check(check_files=False)))  # missing: healed by a rebuild
    assert integrity_check(check_files=False).state == "ok"


def test_an_index_file_deleted_under_a_running_process_shows_in_the_status_and_heals(offline, media_root):
    from retrieval.index_snapshots import index_dir

    _embedded_image(offline, seed=1)
    integrity_heal(integrity_check())
    assert integrity_check().state == "ok"
    semantic_state = IndexState.objects.get(owner="image", space="semantic", model_key=offline.semantic)
    (index_dir() / semantic_state.file_name).unlink()  # e.g. the index folder was removed by hand

    report = integrity_check(check_files=False)  # the banner's check sees it too: one stat per index
    by_space = {h.space: h.state for h in report.indexes if h.owner == "image"}
    assert report.state == "index file missing" and by_space == {"semantic": "index file missing", "content": "ok"}
    assert integrity_heal(report) == [f"semantic/{offline.semantic}"]
    semantic_state.refresh_from_db()
    assert (index_dir() / semantic_state.file_name).exists() and integrity_check().state == "ok"


def test_vectors_written_while_the_status_looks_are_no_count_mismatch(offline, settings, monkeypatch):
    """During an import 2 of 8 status checks said "count mismatch" (267 in the database, 265 in the index): the
    index had caught up less than a second before, and a health probe took the difference for a fault."""
    from retrieval import integrity

    settings.IMAGINAITION_INDEX_SYNC_SECONDS = 3600  # the index caught up a moment ago, and not since
    _embedded_image(offline, seed=1)
    integrity_heal(integrity_check(check_files=False))
    assert integrity_check(check_files=False).state == "ok"
    _embedded_image(offline, seed=2)  # a worker's batch, committed since
    report = integrity_check(check_files=False)
    assert report.state == "ok" and {(h.database_count, h.index_count) for h in report.indexes
                                     if h.owner == "image"} == {(2, 2)}

    real_get = integrity.manager.get

    def a_batch_commits_just_after_the_catch_up(**where):
        snapshot = real_get(**where)
        if where.get("owner") == "image" and where.get("space") == "semantic":
            _embedded_image(offline, seed=3)
        return snapshot

    monkeypatch.setattr(integrity.manager, "get", a_batch_commits_just_after_the_catch_up)
    report = integrity_check(check_files=False)
    semantic = next(h for h in report.indexes if h.owner == "image" and h.space == "semantic")
    assert (semantic.database_count, semantic.index_count, semantic.state) == (3, 2, "ok")
    monkeypatch.undo()
    # A real difference (a vector the index will not get by catching up) still shows.
    from retrieval.models import Embedding
    Embedding.objects.filter(space="content").update(created_at="2000-01-01T00:00:00Z")
    integrity.manager.clear()
    integrity_heal(integrity_check(check_files=False))
    Embedding.objects.filter(space="content").order_by("pk").first().delete()
    assert integrity_check(check_files=False).state == "count mismatch"


def test_images_deleted_while_the_status_looks_are_no_count_mismatch(offline, settings, media_root):
    """While images were deleted, 22 of 71 status checks said "count mismatch" (174 in the database, 173 in the
    index): a delete made the index of its process forget the image before the delete was committed."""
    import threading
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from gallery import services
    from gallery.models import Image

    settings.IMAGINAITION_INDEX_SYNC_SECONDS = 3600  # no catch-up: this process's index as the delete left it
    kept, deleted = _embedded_image(offline, seed=1), _embedded_image(offline, seed=2)
    # Written an hour ago: a catch-up reads again only recent vectors (it had put a forgotten one back).
    Embedding.objects.update(created_at=timezone.now() - timedelta(hours=1))
    integrity_heal(integrity_check(check_files=False))
    assert integrity_check(check_files=False).state == "ok"  # the indexes now in this process's memory
    deleting, commit = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def delete_and_wait_before_commit() -> None:  # a web thread's request, with its transaction still open
        try:
            with transaction.atomic():
                assert services.image_delete(image=Image.objects.get(pk=deleted.pk))
                deleting.set()
                commit.wait(30)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=delete_and_wait_before_commit)
    thread.start()
    try:
        assert deleting.wait(30)
        report = integrity_check(check_files=False)
        assert report.state == "ok", report.as_dict()
        assert {(h.database_count, h.index_count) for h in report.indexes if h.owner == "image"} == {(2, 2)}
    finally:
        commit.set()
        thread.join(30)
    assert errors == []
    report = integrity_check(check_files=False)  # committed: forgotten at once, without a catch-up
    assert report.state == "ok" and {(h.database_count, h.index_count) for h in report.indexes
                                     if h.owner == "image"} == {(1, 1)}
    assert Image.objects.filter(pk=kept.pk).exists()


def test_the_end_of_a_reset_builds_every_index_again_with_all_its_vectors(offline, settings):
    """A reset said "the indexes built", but their files held only its first batch (16 of 38 vectors): later
    batches were caught up in memory only, and every process started afterwards read them all again."""
    from gallery import events
    from gallery.models import Image

    _embedded_image(offline, seed=1)
    integrity_heal(integrity_check(check_files=False))  # the first batch's index
    _embedded_image(offline, seed=2)
    _embedded_image(offline, seed=3)
    assert integrity_check(check_files=False).state == "ok"  # caught up in memory: nothing to heal
    assert set(IndexState.objects.filter(owner="image").values_list("vector_count", flat=True)) == {1}

    events.gallery_reloaded.send(sender=Image)  # the reset's end

    states = IndexState.objects.filter(owner="image")
    assert {(state.vector_count, state.version) for state in states} == {(3, 2)}
    assert not IndexState.objects.filter(owner="region").exclude(file_name="").exists()  # no region vectors
    assert integrity_check(check_files=False).state == "ok"
