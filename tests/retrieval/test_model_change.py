"""A model change (here: the content autoencoder v1 → the profile's current one) re-embeds the gallery
in the background while the old model keeps answering; the new one answers once it covers the gallery."""

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


@pytest.mark.parametrize(("overrides", "check_id", "words"), [
    ({"IMAGINAITION_MODEL_PROFILE": "bogus"}, "retrieval.E001", "must be auto, standard or offline, not 'bogus'"),
    ({"IMAGINAITION_SEGMENTER": "bogus/seg"}, "retrieval.E001", "IMAGINAITION_SEGMENTER must be empty"),
    ({"IMAGINAITION_MODEL_PROFILE": "offline", "IMAGINAITION_OFFLINE_NETWORK": "lite9"}, "retrieval.E001",
     "IMAGINAITION_OFFLINE_NETWORK must be one of"),
    ({"IMAGINAITION_MODEL_PROFILE": "standard"}, "retrieval.W001", "openclip/ViT-B-32/openai"),
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
