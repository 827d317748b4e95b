"""A model change (here: the content autoencoder v1 → the profile's current one) re-embeds the gallery
in the background while the old model keeps answering; the new one answers once it covers the gallery."""

import os
import re

import pytest
from django.core.management import call_command
from django.urls import reverse

from gallery.models import Image
from retrieval import serving
from retrieval.encoders import registry
from retrieval.models import Embedding
from retrieval.pipeline import process_all_pending
from tests.conftest import wait_for
from tests.gallery.factories import add_embedding, make_image
from tests.retrieval.test_pipeline import upload

OLD = "autoencoder/v1"
SEMANTIC = "offline/effnet-lite0+minilm"


def _unit(values):
    import numpy as np

    vector = np.asarray(values, dtype=np.float32)
    return vector / np.abs(vector).sum()


@pytest.mark.django_db
def test_the_model_with_most_vectors_serves_until_the_active_one_catches_up(settings, media_root):
    import numpy as np

    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_SERVING_CHECK_SECONDS = 60  # as in production: decided, then kept a while
    new = registry.active_models().content
    assert new != OLD, "the offline profile's content model is expected to have moved on from v1"
    rng = np.random.default_rng(0)
    images = [make_image(name=f"{i}.png") for i in range(4)]
    for image in images:
        add_embedding(image, space="content", model_key=OLD, vector=_unit(rng.random(1024)))
    for image in images[:3]:
        add_embedding(image, space="content", model_key=new, vector=_unit(rng.random(1024)))

    assert serving.serving_models().content == OLD  # 3 new vectors < 4 old: the old model answers
    assert (serving.keys_in_use()[1:]) == [("content", new), ("content", OLD)]  # both indexes are kept
    add_embedding(images[3], space="content", model_key=new, vector=_unit(rng.random(1024)))
    assert serving.serving_models().content == OLD  # decided a moment ago: cached for this process
    serving.forget()
    assert serving.serving_models().content == new


def _three_images_in_a_content_change(settings, *, embedded_anew: int):
    """Three images with the old content model's vectors, the first `embedded_anew` also with the active
    model's; the serving model decided on every query. Returns (the active model's key, images, rng)."""
    import numpy as np

    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_SERVING_CHECK_SECONDS = 0
    new = registry.active_models().content
    rng = np.random.default_rng(0)
    images = [make_image(name=f"{i}.png") for i in range(3)]
    for index, image in enumerate(images):
        for key in (OLD, new) if index < embedded_anew else (OLD,):
            add_embedding(image, space="content", model_key=key, vector=_unit(rng.random(1024)))
    return new, images, rng


@pytest.mark.django_db
def test_an_image_the_new_model_could_not_embed_does_not_hold_the_change_open(settings, media_root):
    """Its file gone, an image failed under the new model: the old model answered for ever, the banner
    saying "Changing models" with nothing left to do but that image's retry."""
    from gallery.models import ProcessingStatus

    new, images, _ = _three_images_in_a_content_change(settings, embedded_anew=2)
    Image.objects.filter(pk=images[2].pk).update(status=ProcessingStatus.PENDING)
    assert serving.serving_models().content == OLD  # still to be re-embedded: the old model answers

    Image.objects.filter(pk=images[2].pk).update(status=ProcessingStatus.FAILED, error="The stored file is missing.")
    assert serving.serving_models().content == new  # nothing more will come: the change ends
    assert serving.keys_in_use()[1:] == [("content", new)]


@pytest.mark.django_db
def test_the_old_model_serves_until_the_new_one_has_the_regions_too_while_segmentation_runs(settings, media_root):
    """A model change re-segments the gallery to embed its regions again, after the image vectors: serving
    the new model as soon as its image vectors were complete lost every region not done yet."""
    from gallery.models import ProcessingStatus
    from retrieval.models import RegionEmbedding
    from tests.gallery.factories import add_mask

    new, images, rng = _three_images_in_a_content_change(settings, embedded_anew=3)
    for index, image in enumerate(images):
        mask = add_mask(image)
        for key in (OLD, new) if index == 0 else (OLD,):  # the new model has re-embedded one region of three
            RegionEmbedding.objects.create(mask=mask, image=image, space="content", model_key=key,
                                           vector=_unit(rng.random(1024)))
    Image.objects.filter(pk__in=[i.pk for i in images[1:]]).update(masks_status=ProcessingStatus.PENDING)

    assert serving.serving_models().content == OLD  # every image vector, 1 region of 3: the old one answers
    assert ("content", OLD) in serving.keys_in_use()  # and its region index is kept
    for image in images[1:]:
        RegionEmbedding.objects.create(mask=image.masks.get(), image=image, space="content", model_key=new,
                                       vector=_unit(rng.random(1024)))
    assert serving.serving_models().content == new  # caught up on regions too, segmentation still marked
    RegionEmbedding.objects.filter(model_key=new, image__in=images[1:]).delete()
    Image.objects.update(masks_status=ProcessingStatus.READY)  # done, and it found fewer regions: it serves
    assert serving.serving_models().content == new


@pytest.mark.integration
def test_reembed_moves_the_gallery_to_the_new_model_in_the_background_while_the_old_one_answers(
        client, user, media_root, settings, monkeypatch, start_worker):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    new = registry.active_models().content
    client.force_login(user)

    # Before the change: a gallery embedded by v1.
    monkeypatch.setitem(registry.PROFILE_MODELS["offline"], "content", OLD)
    ids = [upload(client, name) for name in ("chelsea", "coffee", "rocket")]
    process_all_pending(masks=False)
    assert Embedding.objects.filter(model_key=OLD).count() == 3
    monkeypatch.undo()  # the new release: the profile's content model is `new`
    serving.forget()

    def search() -> dict:
        response = client.post(reverse("api-search"), {"image_id": ids[0], "k": 10}, content_type="application/json")
        assert response.status_code == 200, response.content
        return response.json()

    call_command("reembed")  # queues the work for the workers; none runs yet
    assert set(Image.objects.values_list("status", flat=True)) == {"pending"}
    answer = search()
    assert answer["models"]["content"] == OLD and len(answer["results"]) == 2  # v1 keeps answering
    status = client.get(reverse("api-status")).json()
    assert status["models"]["content"] == new and status["serving"]["content"] == OLD
    added_meanwhile = upload(client, "astronaut")  # gets both models' vectors: findable now and after

    worker = start_worker(IMAGINAITION_MODEL_PROFILE="offline", IMAGINAITION_MEDIA_ROOT=str(media_root),
                          IMAGINAITION_SERVING_CHECK_SECONDS="0")

    def all_embedded_by_the_new_model() -> bool:
        if worker.process.poll() is not None:
            pytest.fail(f"qcluster exited:\n{worker.log()}")
        return (Embedding.objects.filter(model_key=new).count() == 4
                and not Image.objects.filter(status="pending").exists())

    wait_for(all_embedded_by_the_new_model, timeout=240, interval=1, message="the workers to re-embed")
    assert Embedding.objects.filter(model_key=OLD).count() == 4  # old vectors stay; the new image got one too
    assert Embedding.objects.filter(image_id=added_meanwhile, model_key=OLD).exists()
    serving.forget()
    answer = search()
    assert answer["models"]["content"] == new and len(answer["results"]) == 3
    assert client.get(reverse("api-status")).json()["serving"]["content"] == new


@pytest.mark.django_db
def test_a_model_change_encodes_with_the_old_model_only_the_images_that_lack_its_vector(
        client, user, media_root, settings, monkeypatch):
    """Every re-embedded image was encoded by the old (serving) model again, though it had its vector: half
    as much model time again as the change itself (more for a larger old model)."""
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    client.force_login(user)
    with monkeypatch.context() as before:  # a gallery embedded by v1
        before.setitem(registry.PROFILE_MODELS["offline"], "content", OLD)
        ids = [upload(client, name) for name in ("chelsea", "coffee")]
        process_all_pending(masks=False)
    serving.forget()
    kept = {row.image_id: list(row.vector) for row in Embedding.objects.filter(model_key=OLD)}
    old_model = registry.get_model(OLD)
    encoded: list[int] = []
    real_encode = old_model.encode_images

    def counted(pictures):
        encoded.append(len(pictures))
        return real_encode(pictures)

    monkeypatch.setattr(old_model, "encode_images", counted)
    call_command("reembed")
    added_meanwhile = upload(client, "rocket")  # needs v1's vector too: v1 answers queries until the change ends
    process_all_pending(masks=False)
    new = registry.active_models().content
    assert Embedding.objects.filter(model_key=new).count() == 3
    assert sum(encoded) == 1  # only the image added meanwhile
    assert {row.image_id: list(row.vector) for row in Embedding.objects.filter(model_key=OLD, image_id__in=ids)} \
        == kept
    assert Embedding.objects.filter(model_key=OLD, image_id=added_meanwhile).exists()


@pytest.mark.parametrize(("overrides", "check_id", "words"), [
    ({"IMAGINAITION_MODEL_PROFILE": "bogus"}, "retrieval.E001", "must be auto, standard or offline, not 'bogus'"),
    ({"IMAGINAITION_SEGMENTER": "bogus/seg"}, "retrieval.E001", "IMAGINAITION_SEGMENTER must be empty"),
    ({"IMAGINAITION_MODEL_PROFILE": "offline", "IMAGINAITION_OFFLINE_NETWORK": "lite9"}, "retrieval.E001",
     "IMAGINAITION_OFFLINE_NETWORK must be one of"),
    # Asked for by name, the standard profile cannot serve without its weights: an error, so nothing starts.
    ({"IMAGINAITION_MODEL_PROFILE": "standard"}, "retrieval.E002", "openclip/ViT-B-32/openai"),
    ({"IMAGINAITION_SEGMENTER": "torchvision/lraspp_mobilenet_v3_large"}, "retrieval.W001",
     "lraspp_mobilenet_v3_large are not in"),
    ({"IMAGINAITION_MODEL_PROFILE": "auto"}, None, None),
])
def test_model_settings_are_checked_before_any_command_runs(settings, overrides, check_id, words):
    from retrieval.checks import model_settings_check

    # weights/ holds the autoencoder's files, not the standard profile's (they cannot be fetched here)
    for name, value in overrides.items():
        setattr(settings, name, value)
    found = model_settings_check()
    if check_id is None:
        assert found == []
    else:
        assert [message.id for message in found] == [check_id] and words in found[0].msg


def test_a_weights_folder_without_the_shipped_autoencoder_says_to_copy_it_not_to_fetch_it(settings, tmp_path):
    from retrieval.checks import model_settings_check

    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path
    found = model_settings_check()
    assert [message.id for message in found] == ["retrieval.W001"]
    assert "ships the file in its weights/ folder: copy autoencoder-v2.pt into IMAGINAITION_WEIGHTS_DIR" in found[0].hint
    assert "fetch_weights" not in found[0].hint  # it has nothing to download for it


@pytest.mark.parametrize(("overrides", "words"), [
    ({"IMAGINAITION_DEVICE": "gpu"}, "IMAGINAITION_DEVICE must be one of auto, cpu, cuda, mps, not 'gpu'"),
    ({"IMAGINAITION_PRECISION": "junk"}, "IMAGINAITION_PRECISION must be one of auto, fp32, not 'junk'"),
    ({"IMAGINAITION_SEGMENTER_RUNTIME": "junk"}, "IMAGINAITION_SEGMENTER_RUNTIME must be one of torch, openvino"),
    ({"IMAGINAITION_DEVICE": "cpu"}, None),
])
def test_hardware_settings_are_checked_before_any_command_runs(settings, overrides, words):
    from retrieval.checks import hardware_settings_check

    for name, value in overrides.items():
        setattr(settings, name, value)
    found = hardware_settings_check()
    if words is None:
        assert found == []
    else:
        assert [message.id for message in found] == ["retrieval.E003"] and words in found[0].msg


def test_a_number_setting_that_is_not_one_stops_a_command_in_one_line():
    import subprocess
    import sys

    env = {**os.environ, "IMAGINAITION_BATCH_SIZE": "abc", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "manage.py", "check"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == ("Error: IMAGINAITION_BATCH_SIZE must be a whole number of at least 1 and at most "
                                   "4096, not 'abc'")


@pytest.mark.parametrize(("value", "whole", "minimum", "expected"), [
    ("8", True, 1, 8), (" 0.25 ", False, 0, 0.25), ("", True, 1, 7),
    ("0", True, 1, "at least 1, not '0'"), ("1.5", True, 1, "a whole number"), ("nan", False, 0, "a number"),
])
def test_number_settings_are_read_or_refused_with_their_name(monkeypatch, value, whole, minimum, expected):
    from django.core.exceptions import ImproperlyConfigured

    from imaginaition_site.env import env_number

    monkeypatch.setenv("IMAGINAITION_SOMETHING", value)
    if isinstance(expected, str):
        with pytest.raises(ImproperlyConfigured, match=f"^IMAGINAITION_SOMETHING must be .*{re.escape(expected)}"):
            env_number("IMAGINAITION_SOMETHING", 7, minimum=minimum, whole=whole)
    else:
        assert env_number("IMAGINAITION_SOMETHING", 7, minimum=minimum, whole=whole) == expected


def test_list_settings_drop_the_spaces_around_their_items(monkeypatch):
    from imaginaition_site.env import env_list

    monkeypatch.setenv("DJANGO_ALLOWED_HOSTS", "images.example.org, web1 ,,")
    assert env_list("DJANGO_ALLOWED_HOSTS", "") == ["images.example.org", "web1"]
    monkeypatch.setenv("IMAGINAITION_IMPORT_ROOTS", "/srv/photos2: /srv/photos")
    assert env_list("IMAGINAITION_IMPORT_ROOTS", "", ":") == ["/srv/photos2", "/srv/photos"]


@pytest.mark.django_db(transaction=True)
def test_reembed_sync_again_finishes_what_an_interrupted_run_left_waiting(media_root, settings, capsys):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    # An interrupted `reembed --sync` had put the image back in the queue (pending) and stopped: a second
    # run found nothing to re-embed (it lacks no vector of a finished image) and left it waiting for good.
    left = make_image(name="left-waiting.png", status="pending")

    call_command("reembed", "--sync")

    out = capsys.readouterr().out
    assert "processing 1 waiting image here" in out and "processed: 1, failed: 0" in out
    left.refresh_from_db()
    assert left.status == "ready" and left.masks_status == "ready"


@pytest.mark.django_db
def test_a_segmenter_change_reaches_images_the_old_one_found_nothing_in(media_root, settings):
    from retrieval.pipeline import images_reembed_for_active_models

    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    active = registry.active_models().segmenter
    nothing_found = make_image(name="plain.png")  # segmented, no mask: only segmented_by says by whom
    Image.objects.filter(pk=nothing_found.pk).update(masks_status="ready", segmented_by="some/older-segmenter")
    by_the_active = make_image(name="also-plain.png", color=(0, 0, 90))
    Image.objects.filter(pk=by_the_active.pk).update(masks_status="ready", segmented_by=active)

    plan = images_reembed_for_active_models(enqueue=False)

    assert nothing_found.pk in plan.segment and by_the_active.pk not in plan.segment
    process_all_pending()  # segments it again: it now records the active segmenter, found masks or not
    nothing_found.refresh_from_db()
    assert nothing_found.segmented_by == active
    assert nothing_found.pk not in images_reembed_for_active_models(enqueue=False).segment


@pytest.mark.django_db(transaction=True)
def test_the_migration_records_each_images_segmenter_from_its_masks_or_the_gallerys(media_root):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("gallery", "0005_reset_permission")], [("gallery", "0006_image_segmented_by")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    OldImage, OldMask = old.get_model("gallery", "Image"), old.get_model("gallery", "Mask")

    def image(name, masks_status="ready"):
        return OldImage.objects.create(file=f"images/{name}", sha256=name.ljust(64, "0"), original_name=name,
                                       width=1, height=1, format="PNG", byte_size=1, masks_status=masks_status)

    with_masks, without, waiting = image("a"), image("b"), image("c", masks_status="pending")
    for label, class_index in (("cat", 8), ("dog", 12)):
        OldMask.objects.create(image=with_masks, label=label, class_index=class_index, segmenter="seg/usual",
                               probability_png=b"", area_fraction=0.5)
    other = image("d")
    OldMask.objects.create(image=other, label="dog", class_index=12, segmenter="seg/rare", probability_png=b"",
                           area_fraction=0.5)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)

    recorded = dict(Image.objects.values_list("original_name", "segmented_by"))
    latest = MigrationExecutor(connection)  # it reads what is applied now
    latest.migrate(latest.loader.graph.leaf_nodes())  # the later migrations again, for the tests after it
    # its masks say it; found nothing: the gallery's usual one; not segmented yet: not known
    assert recorded == {"a": "seg/usual", "b": "seg/usual", "c": "", "d": "seg/rare"}


@pytest.mark.django_db
def test_reembed_points_at_retry_failed_for_images_that_failed_earlier(media_root, settings, capsys):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    make_image(name="failed-under-other-models.png", status="failed")  # e.g. standard weights were missing
    call_command("reembed")
    out = capsys.readouterr().out
    assert "1 image failed earlier" in out and "`python manage.py retry_failed` processes them again" in out


@pytest.mark.django_db
def test_a_content_model_change_keeps_every_mask_and_its_id_and_adds_only_the_region_vectors(
        client, user, media_root, settings, monkeypatch):
    """It re-segmented the whole gallery: every mask got a new id (a search by a mask's id from before: 404
    "No such mask.") and the segmenter ran again on every image, for a 64×64 model's vectors."""
    from gallery.models import Mask
    from retrieval.models import RegionEmbedding
    from retrieval.pipeline import images_reembed_for_active_models

    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_REGION_MIN_AREA = 0.01  # every mask of these photos is a region
    new = registry.active_models().content
    client.force_login(user)
    monkeypatch.setitem(registry.PROFILE_MODELS["offline"], "content", OLD)
    ids = [upload(client, name) for name in ("chelsea", "coffee")]
    process_all_pending()
    masks_before = dict(Mask.objects.values_list("pk", "label"))
    regions_before = set(RegionEmbedding.objects.values_list("mask_id", "space", "model_key", "id"))
    assert masks_before and {key for *_, key, _ in regions_before} == {OLD, registry.active_models().semantic}
    monkeypatch.undo()  # the new release: the profile's content model is `new`
    serving.forget()

    plan = images_reembed_for_active_models(enqueue=False)
    assert set(plan.segment) == set(ids)  # their regions lack the new model's vectors
    segmenter = registry.get_model(registry.active_models().segmenter)
    monkeypatch.setattr(segmenter, "segment", lambda pictures: pytest.fail("segmented again"))
    process_all_pending()

    assert dict(Mask.objects.values_list("pk", "label")) == masks_before  # the same masks, the same ids
    assert set(Image.objects.values_list("masks_status", flat=True)) == {"ready"}
    assert regions_before <= set(RegionEmbedding.objects.values_list("mask_id", "space", "model_key", "id"))
    assert set(RegionEmbedding.objects.filter(model_key=new).values_list("mask_id", flat=True)) == set(masks_before)
    assert images_reembed_for_active_models(enqueue=False).ids == []  # nothing more is owed
    found = client.post(reverse("api-search"), {"mask_id": next(iter(masks_before)), "k": 5},
                        content_type="application/json")
    assert found.status_code == 200 and found.json()["models"]["content"] == new, found.content
