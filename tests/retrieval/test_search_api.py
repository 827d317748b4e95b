"""POST /api/search/ and /api/preferences/ over stored vectors (the model-free query: by image id)."""

import dataclasses

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import reverse

from gallery.models import Image
from retrieval.index_snapshots import manager
from retrieval.indexes import index_rebuild
from tests.gallery.factories import add_embedding, make_image, png_bytes

pytestmark = pytest.mark.django_db

SEMANTIC_KEY, CONTENT_KEY = "offline/effnet-lite0+minilm", "autoencoder/v1"


@pytest.fixture(autouse=True)
def offline_profile(settings, tmp_path, media_root):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    settings.IMAGINAITION_INDEX_SYNC_SECONDS = 0
    manager.clear()
    yield
    manager.clear()


@pytest.fixture
def gallery():
    """8 images: semantic neighbours of image 0 are 1..3, content neighbours are 3..5 (3 is in both)."""
    rng = np.random.default_rng(0)
    base_s = rng.normal(size=384)
    base_c = np.abs(rng.normal(size=1024))
    images = []
    for i in range(8):
        s = base_s + (0.2 if i in (0, 1, 2, 3) else 3.0) * rng.normal(size=384)
        c = base_c + (0.05 if i in (0, 3, 4, 5) else 2.0) * np.abs(rng.normal(size=1024))
        image = make_image(name=f"img{i}.png")
        add_embedding(image, space="semantic", model_key=SEMANTIC_KEY, vector=s / np.linalg.norm(s))
        add_embedding(image, space="content", model_key=CONTENT_KEY, vector=c / c.sum())
        images.append(image)
    return images


def search(client, **body):
    return client.post(reverse("api-search"), body, content_type="application/json")


def test_search_by_stored_image_applies_the_policy_and_fills_both_similarities(client, user, gallery):
    client.force_login(user)
    index_rebuild(space="semantic", model_key=SEMANTIC_KEY, dim=384)
    index_rebuild(space="content", model_key=CONTENT_KEY, dim=1024)

    body = search(client, image_id=gallery[0].pk, k=4).json()

    ids = [r["image_id"] for r in body["results"]]
    assert gallery[0].pk not in ids  # the query image itself is excluded by default
    assert body["results"][0]["image_id"] == gallery[3].pk and body["results"][0]["retrieved_by"] == "both"
    assert body["engine"] == "faiss" and body["models"] == {"semantic": SEMANTIC_KEY, "content": CONTENT_KEY}
    assert sum(body["counts"].values()) == len(body["results"]) == 4
    assert all(r["semantic_similarity"] is not None and r["content_similarity"] is not None for r in body["results"])
    for result in body["results"]:  # each URL names its own image (URLs are built from a cached template)
        digest = Image.objects.get(pk=result["image_id"]).sha256[:12]  # a reused id is another URL
        assert result["thumbnail_url"] == f"http://testserver/images/{result['image_id']}/thumbnail/?v={digest}"
        assert result["image_url"] == f"http://testserver/images/{result['image_id']}/file/"
        assert "file_url" not in result


def test_request_parameters_override_preferences(client, user, gallery):
    client.force_login(user)
    body = search(client, image_id=gallery[0].pk, k=3, intersection=False, policy="content", split=100).json()
    # All three places are the content index's (labelled "both" where the semantic index returned it too).
    assert len(body["results"]) == 3 and "semantic" not in {r["retrieved_by"] for r in body["results"]}
    assert body["preferences"] == {"k": 3, "intersection_first": False, "preferred_index": "content", "split": 100}
    assert body["counts"]["content"] + body["counts"]["both"] == 3


def test_a_search_with_its_fields_in_the_address_is_refused_naming_them(client, user, gallery):
    """POST /api/search/?k=1 answered with the saved k (50): the address's fields were neither read nor refused."""
    client.force_login(user)
    url = reverse("api-search") + "?k=1&split=0"
    refused = client.post(url, {"image_id": gallery[0].pk}, content_type="application/json")
    message = ["A search's fields go in the body (JSON, a form or multipart), not in the address, where they "
               "would be ignored."]
    assert refused.status_code == 400 and refused.json() == {"k": message, "split": message}
    answered = client.post(reverse("api-search") + "?format=json", {"image_id": gallery[0].pk, "k": 1},
                           content_type="application/json")
    assert answered.status_code == 200 and len(answered.json()["results"]) == 1  # ?format= still chooses JSON


def test_form_data_leaves_unsent_yes_no_choices_to_the_preferences(client, user, gallery):
    """Multipart and urlencoded requests (curl -F, HTML forms) mean what JSON means: a choice not sent
    is the caller's preference, not "no"."""
    client.force_login(user)
    as_form = client.post(reverse("api-search"), {"image_id": gallery[0].pk, "k": 4}).json()
    as_json = search(client, image_id=gallery[0].pk, k=4).json()
    assert as_form["preferences"]["intersection_first"] is True
    assert as_form["results"] == as_json["results"] and as_form["counts"]["both"] >= 1
    assert client.post(reverse("api-search"), {"image_id": gallery[0].pk, "k": 4, "intersection": "false"}
                       ).json()["preferences"]["intersection_first"] is False

    url = reverse("api-preferences")
    changed = client.patch(url, encode_multipart(BOUNDARY, {"k": 9}), content_type=MULTIPART_CONTENT).json()
    assert changed["k"] == 9 and changed["intersection_first"] is True
    assert client.get(url).json()["intersection_first"] is True


def test_pgvector_answers_when_no_faiss_index_exists(client, user, gallery):
    client.force_login(user)
    body = search(client, image_id=gallery[0].pk, k=4).json()
    assert body["engine"] == "pgvector"
    assert body["results"][0]["image_id"] == gallery[3].pk


def test_search_errors_are_4xx_with_a_message(client, user, gallery):
    client.force_login(user)
    assert "exactly one" in str(search(client).json())
    assert "exactly one" in str(search(client, image_id=gallery[0].pk, text="cat").json())
    response = search(client, image_id=999999)
    assert response.status_code == 404 and "No such image" in response.json()["detail"]
    pending = make_image(status="pending")
    assert "not been embedded yet" in search(client, image_id=pending.pk).json()["detail"]
    failed = make_image(status="failed")
    failed.error = "The stored file is missing."
    failed.save()
    refused = search(client, image_id=failed.pk)  # not "try again when its status is ready": it never will be
    assert refused.status_code == 400 and refused.json()["detail"] == (
        "This image could not be embedded (The stored file is missing.), so it has no vectors to search with; "
        "retry it once the cause is fixed.")
    failed.file.storage.delete(failed.file.name)  # a retry would fail again at once (retry_failed leaves it)
    refused = search(client, image_id=failed.pk)
    assert refused.status_code == 400 and refused.json()["detail"].endswith(
        "no vectors to search with; its stored file is missing: adding the same file again restores it.")
    assert search(client, image_id=gallery[0].pk, k=0).status_code == 400
    for blank in ("", "   ", "\ufeff", " \u200b "):  # invisible format characters searched, as if words
        assert search(client, text=blank).json() == {"text": ["The text is blank: type some words."]}
    wrong_field = client.post(reverse("api-search"), {"file": SimpleUploadedFile("a.png", b"x")})
    assert wrong_field.status_code == 400 and wrong_field.json()["file"][0].endswith("include_self, image.")
    for fields in ({}, {"label": "cat"}):  # embedded at once; segmented first (a region of the upload)
        not_an_image = client.post(reverse("api-search"), {"image": SimpleUploadedFile("a.png", b"x" * 99), **fields})
        assert not_an_image.status_code == 400, not_an_image.content  # the field at fault, as a missing file's
        assert list(not_an_image.json()) == ["image"] and "not an image" in not_an_image.json()["image"][0]
    typo = search(client, image_id=gallery[0].pk, lables="cat")  # a typo is refused, not ignored
    assert typo.status_code == 400 and list(typo.json()) == ["lables"]
    assert "Unknown field; the fields are: image_id, mask_id, text" in typo.json()["lables"][0]
    preferences = client.put(reverse("api-preferences"), {"kk": 3}, content_type="application/json")
    assert preferences.status_code == 400 and "Unknown field" in preferences.json()["kk"][0]


@pytest.mark.parametrize(("body", "content_type", "status", "message"), [
    ('{"text": "%s"}' % ("a" * 3_000_000), "application/json", 413, "over 2,097,152 bytes"),
    ("text=" + "a" * 3_000_000, "application/x-www-form-urlencoded", 413, "over 2,097,152 bytes"),
    ("&".join(f"field{i}=1" for i in range(1500)), "application/x-www-form-urlencoded", 400, "more than 1,000 fields"),
], ids=["json", "form", "fields"])
def test_a_body_over_django_s_limits_is_refused_in_json(client, user, body, content_type, status, message):
    # Django raises these while DRF parses the body; unhandled, they became an HTML "Bad Request".
    client.force_login(user)
    for response in (client.post(reverse("api-search"), body, content_type=content_type),
                     client.put(reverse("api-preferences"), body, content_type=content_type)):
        assert response.status_code == status and response["Content-Type"] == "application/json"
        assert message in response.json()["detail"]


def test_more_files_than_django_takes_and_a_host_name_not_served_are_refused_in_json(client, user):
    # Both were Django's empty HTML "Bad Request (400)" page.
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(user)
    files = {f"x{i}": SimpleUploadedFile(f"{i}.png", b"x") for i in range(101)}
    for url in (reverse("api-search"), reverse("api-images")):
        response = client.post(url, files)
        assert response.status_code == 400 and response["Content-Type"] == "application/json", url
        assert response.json() == {"detail": "The request has more than 100 files; send one."}
    refused = client.get("/api/status/", HTTP_HOST="evil.example")
    assert refused.status_code == 400 and "DJANGO_ALLOWED_HOSTS" in refused.json()["detail"]
    assert "text/html" in client.get("/gallery/", HTTP_HOST="evil.example")["Content-Type"]  # pages keep theirs


def test_a_repeated_form_field_is_refused_where_it_would_have_kept_only_its_last_value(client, user, gallery):
    client.force_login(user)
    twice = client.post(reverse("api-search"), {"image_id": gallery[0].pk, "k": ["1", "400"]})
    assert twice.status_code == 400 and twice.json() == {"k": ["Send this field once (2 values were sent)."]}
    words = client.post(reverse("api-search"), {"text": ["cat", "dog"]})
    assert words.status_code == 400 and "2 values were sent" in words.json()["text"][0]
    form = "k=3&k=4&split=20"
    preferences = client.put(reverse("api-preferences"), form, content_type="application/x-www-form-urlencoded")
    assert preferences.status_code == 400 and list(preferences.json()) == ["k"]
    labels = client.post(reverse("api-search"), {"image_id": gallery[0].pk, "labels": ["cat", "dog"]})
    assert "2 values were sent" not in str(labels.json())  # labels may repeat: they are joined


def test_private_gallery_refuses_anonymous_search_as_unauthenticated(client, gallery, settings):
    # 401 with the scheme, as the other reads of a private gallery answer (it used to be a bare 403).
    refused = search(client, image_id=gallery[0].pk)
    assert refused.status_code == 401 and refused["WWW-Authenticate"] == "Token"
    assert "Authorization: Token <key>" in refused.json()["detail"]
    settings.IMAGINAITION_PUBLIC_GALLERY = True
    assert search(client, image_id=gallery[0].pk).status_code == 200


def test_preferences_defaults_update_and_validation(client, user):
    client.force_login(user)
    url = reverse("api-preferences")
    assert client.get(url).json() == {"mask_threshold": 30, "k": 50, "intersection_first": True,
                                      "preferred_index": "semantic", "split": 50}
    updated = client.put(url, {"k": 12, "intersection_first": False}, content_type="application/json").json()
    assert updated["k"] == 12 and updated["intersection_first"] is False and updated["split"] == 50
    assert client.get(url).json()["k"] == 12
    bad = client.put(url, {"split": 101, "preferred_index": "colour"}, content_type="application/json")
    assert bad.status_code == 400 and {"split", "preferred_index"} <= set(bad.json())


def test_anonymous_preferences_live_in_the_session_of_a_public_gallery(client, settings):
    settings.IMAGINAITION_PUBLIC_GALLERY = True
    url = reverse("api-preferences")
    client.put(url, {"mask_threshold": 70}, content_type="application/json")
    assert client.get(url).json()["mask_threshold"] == 70


def test_a_public_gallerys_visitor_changes_preferences_through_the_api_with_the_csrf_token(settings):
    """As the preferences page's form asks: DRF checked the token of signed-in sessions only, so another site
    could change a visitor's preferences. A client without the session cookie (a script) has nothing to protect."""
    settings.IMAGINAITION_PUBLIC_GALLERY = True
    browser = Client(enforce_csrf_checks=True)
    url = reverse("api-preferences")
    assert browser.put(url, {"k": 7}, content_type="application/json").status_code == 200  # no session cookie yet
    assert browser.get(url).json()["k"] == 7
    refused = browser.put(url, {"k": 3}, content_type="application/json")  # the visitor's session now
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    token = browser.cookies["csrftoken"].value  # given with the first write (a script had to fetch a page for it)
    assert browser.put(url, {"k": 3}, content_type="application/json", HTTP_X_CSRFTOKEN=token).status_code == 200
    assert browser.get(url).json()["k"] == 3
    browser.get(reverse("pages:preferences"))  # the page's form keeps it working
    token = browser.cookies["csrftoken"].value
    assert browser.put(url, {"k": 4}, content_type="application/json", HTTP_X_CSRFTOKEN=token).status_code == 200


def test_a_json_body_nested_past_the_parsers_depth_is_refused_as_malformed(client, user):
    """Python's JSON parser recurses per level: 100,000 "[" raised RecursionError, a 500 with its traceback."""
    client.force_login(user)
    deep = "[" * 100_000 + "]" * 100_000
    for method, url in (("PUT", reverse("api-preferences")), ("POST", reverse("api-search"))):
        refused = client.generic(method, url, deep, content_type="application/json")
        assert refused.status_code == 400 and "nested too deeply" in refused.json()["detail"], url


def test_on_a_private_gallery_anonymous_visitors_read_the_defaults_and_change_nothing(client):
    """Each anonymous PUT stored a session row (no CSRF token asked of a visitor, no throttle) for
    preferences that serve no search there."""
    from django.contrib.sessions.models import Session

    url = reverse("api-preferences")
    for _ in range(3):
        refused = client.put(url, {"k": 5}, content_type="application/json")
        assert refused.status_code == 401 and refused.json()["detail"].startswith("Sign in")
    page = client.post(reverse("pages:preferences"), {"mask_threshold": 30, "k": 5, "preferred_index": "semantic",
                                                      "split": 50})
    assert page.status_code == 302 and page["Location"].startswith(reverse("login"))
    assert client.get(url).json()["k"] == 50 and client.get(reverse("pages:preferences")).status_code == 200
    assert not Session.objects.exists()


def test_stored_preferences_drive_the_search(client, user, gallery):
    client.force_login(user)
    client.put(reverse("api-preferences"), {"k": 2, "preferred_index": "content", "intersection_first": False},
               content_type="application/json")
    body = search(client, image_id=gallery[0].pk).json()
    assert len(body["results"]) == 2 and body["results"][0]["retrieved_by"] in ("content", "both")
    assert body["preferences"]["preferred_index"] == "content" and body["preferences"]["intersection_first"] is False


def test_text_search_fills_all_k_places_from_the_semantic_index(client, user, gallery, monkeypatch):
    from retrieval import search as search_service

    class FakeTextTower:  # only the text tower is replaced: the rest (index, policy, API) is real
        def encode_texts(self, texts):
            return np.stack([np.asarray(gallery[0].embeddings.get(space="semantic").vector, dtype=np.float32)])

        def read_text(self, text):
            return None  # cannot tell: searched as it is

    monkeypatch.setattr(search_service, "get_model", lambda key: FakeTextTower())
    client.force_login(user)
    body = search(client, text="a cat", k=4).json()
    assert len(body["results"]) == 4 and body["counts"] == {"both": 0, "semantic": 4, "content": 0}
    assert body["results"][0]["image_id"] == gallery[0].pk  # text queries exclude nothing
    assert all(r["content_similarity"] is None for r in body["results"])


def test_a_text_the_text_model_cannot_read_whole_is_refused_saying_why(client, user):
    # The offline profile's MiniLM (its real tokenizer): an emoji or a CJK character is one unknown
    # piece, so "🚀" and "猫" searched with no meaning at all and found the same list; past 254 pieces
    # the end of a text was dropped without a word (so "!" * 300 + " cat" found no cat).
    client.force_login(user)
    for unknown in ("🚀", "猫", "😀😀😀"):
        refused = search(client, text=unknown)
        assert refused.status_code == 400 and "knows none of these words (it reads English" in refused.json()["text"][0]
    long = search(client, text="!" * 300 + " cat")
    assert long.status_code == 400
    assert long.json()["text"][0] == ("This text is longer than the text model reads: at most 254 word pieces, "
                                     "and it has 301. Shorten it.")
    mostly = search(client, text="a 🚀 🚀")  # "a [UNK] [UNK]": it searched for "a"
    assert mostly.status_code == 400
    assert "does not know most of these words (2 of 3 word pieces" in mostly.json()["text"][0]
    assert "knows none of these words" in search(client, text="一只猫").json()["text"][0]  # 一 spelled, 只猫 unknown
    assert search(client, text="a cat 🚀").status_code == 200  # mostly known words: something to search with
    for spelled in ("кошка", "قطة", "γάτα", "חתול"):  # letters it holds one by one: read without their meaning
        refused = search(client, text=spelled)
        assert refused.status_code == 400 and "(it reads English" in refused.json()["text"][0], spelled
    for english in ("ｃａｔ", "a ﬁsh", "café au lait", "Ölmühle"):  # fullwidth, a ligature, Latin letters with accents
        assert search(client, text=english).status_code == 200, english
    page = client.get(reverse("pages:search"), {"text": "🚀"}, follow=True).content.decode()
    assert "The text model knows none of these words" in page


def test_a_search_whose_model_cannot_read_its_weight_file_is_a_503_naming_the_model(client, user, settings,
                                                                                    tmp_path, caplog):
    from retrieval.encoders import registry

    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    shipped = registry.MODELS["autoencoder/v2"].weights[0].path().read_bytes()
    (tmp_path / "autoencoder-v2.pt").write_bytes(shipped[:50_000])  # a copy cut short
    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path
    registry.unload_all()
    client.force_login(user)
    try:
        answer = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.png", png_bytes())})
    finally:
        registry.unload_all()
    assert answer.status_code == 503, answer.content  # it was a bare 500
    assert answer.json()["detail"] == ("Search is unavailable just now: the model autoencoder/v2 cannot read its "
                                       "weight file. An administrator fixes it (the service's log says how).")
    assert str(tmp_path / "autoencoder-v2.pt") in caplog.text  # the log names the file and what to do


def test_rank_answers_without_reading_images_and_search_attaches_them(settings, gallery, django_assert_num_queries):
    settings.IMAGINAITION_INDEX_SYNC_SECONDS = 60  # between the once-a-second checks for new vectors
    from retrieval.encoders.registry import active_models
    from retrieval.policy import Preferences
    from retrieval.search import rank, search, vectors_for_image_id

    index_rebuild(space="semantic", model_key=SEMANTIC_KEY, dim=384)
    index_rebuild(space="content", model_key=CONTENT_KEY, dim=1024)
    # the gallery's vectors are v1's, not those of the profile's current semantic and content models
    models = dataclasses.replace(active_models(), semantic=SEMANTIC_KEY, content=CONTENT_KEY)
    query = vectors_for_image_id(image_id=gallery[0].pk, models=models)
    preferences = Preferences(k=4)
    rank(query=query, preferences=preferences, models=models)  # the first call loads and syncs the indexes
    with django_assert_num_queries(0):  # both indexes, the policy and the similarities: all in memory
        ranking = rank(query=query, preferences=preferences, models=models)
    assert [r.image_id for r in ranking.results][0] == gallery[3].pk and ranking.results[0].retrieved_by == "both"
    assert all(r.semantic_similarity is not None and r.content_similarity is not None for r in ranking.results)
    with django_assert_num_queries(1):  # one query for the Image rows
        response = search(query=query, preferences=preferences, models=models)
    assert [(h.image.pk, h.retrieved_by, h.semantic_similarity) for h in response.hits] == \
        [(r.image_id, r.retrieved_by, r.semantic_similarity) for r in ranking.results]
