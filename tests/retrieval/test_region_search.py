"""Search by region and label filters through the one search service (API here)."""

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from gallery.models import Image, Mask
from retrieval import neighbours
from retrieval.index_snapshots import manager
from retrieval.indexes import index_rebuild
from retrieval.models import RegionEmbedding
from tests.gallery.factories import add_embedding, add_mask, make_image

SEMANTIC_KEY = "offline/effnet-lite0+minilm"
CONTENT_KEY = "autoencoder/v1"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def models(settings, tmp_path, monkeypatch):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    settings.IMAGINAITION_INDEX_SYNC_SECONDS = 0
    monkeypatch.setattr(neighbours, "request_index_build", lambda: None)  # no worker here
    manager.clear()
    yield
    manager.clear()


def unit(vector, space):
    vector = np.asarray(vector, dtype=np.float32)
    return vector / (np.linalg.norm(vector) if space == "semantic" else np.abs(vector).sum())


def add_region(image, *, label, class_index, semantic, content):
    mask = add_mask(image, label=label, class_index=class_index)
    RegionEmbedding.objects.create(mask=mask, image=image, space="semantic", model_key=SEMANTIC_KEY,
                                   vector=unit(semantic, "semantic"))
    RegionEmbedding.objects.create(mask=mask, image=image, space="content", model_key=CONTENT_KEY,
                                   vector=unit(content, "content"))
    return mask


@pytest.fixture
def scenes(media_root):
    """6 pictures, each with a cat and a dog region. The cats are near one another, the dogs far
    from every cat; whole-image vectors are random (they must not matter to a region query)."""
    rng = np.random.default_rng(0)
    cat_s, cat_c = rng.normal(size=384), np.abs(rng.normal(size=1024))
    images, cats = [], []
    for i in range(6):
        image = make_image(name=f"scene{i}.png", color=(i * 20, 0, 0))
        Mask.objects.filter(image=image).delete()
        add_embedding(image, space="semantic", model_key=SEMANTIC_KEY, vector=unit(rng.normal(size=384), "semantic"))
        add_embedding(image, space="content", model_key=CONTENT_KEY, vector=unit(np.abs(rng.normal(size=1024)), "content"))
        cats.append(add_region(image, label="cat", class_index=8, semantic=cat_s + 0.1 * (i + 1) * rng.normal(size=384),
                               content=cat_c + 0.02 * (i + 1) * np.abs(rng.normal(size=1024))))
        add_region(image, label="dog", class_index=12, semantic=rng.normal(size=384),
                   content=np.abs(rng.normal(size=1024)) * 5)
        images.append(image)
    return images, cats


def search(client, **body):
    return client.post(reverse("api-search"), body, content_type="application/json")


@pytest.mark.parametrize("engine", ["pgvector", "faiss"])
def test_a_region_query_ranks_images_by_their_best_region_and_names_it(client, user, scenes, engine):
    images, cats = scenes
    if engine == "faiss":
        for space, key, dim in (("semantic", SEMANTIC_KEY, 384), ("content", CONTENT_KEY, 1024)):
            index_rebuild(space=space, model_key=key, dim=dim, owner="region")
    client.force_login(user)

    answer = search(client, mask_id=cats[0].pk, k=3)

    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["engine"] == engine
    assert [hit["image_id"] for hit in body["results"]] == [images[1].pk, images[2].pk, images[3].pk]
    assert all(hit["retrieved_by"] == "both" for hit in body["results"])
    assert [hit["region"] for hit in body["results"]] == [{"mask_id": cats[i].pk, "label": "cat"} for i in (1, 2, 3)]
    assert all(hit["semantic_similarity"] is not None and hit["content_similarity"] is not None
               for hit in body["results"])


@pytest.mark.parametrize("engine", ["pgvector", "faiss-exact", "faiss-growing"])
def test_a_region_query_with_a_label_filter_matches_regions_of_those_labels(client, user, scenes, monkeypatch,
                                                                              engine):
    # A cat region, filtered to dogs: every picture also has a cat, nearer to the query than its dog,
    # but the region found (and its similarities) must be the dog's.
    images, cats = scenes
    dogs = {mask.image_id: mask.pk for mask in Mask.objects.filter(label="dog")}
    if engine.startswith("faiss"):
        for space, key, dim in (("semantic", SEMANTIC_KEY, 384), ("content", CONTENT_KEY, 1024)):
            index_rebuild(space=space, model_key=key, dim=dim, owner="region")
    if engine == "faiss-growing":
        monkeypatch.setattr(neighbours, "EXACT_FILTER_MAX", 0)
    client.force_login(user)

    body = search(client, mask_id=cats[0].pk, k=10, labels="dog").json()

    assert body["engine"] == ("pgvector" if engine == "pgvector" else "faiss")
    assert sorted(hit["image_id"] for hit in body["results"]) == sorted(image.pk for image in images[1:])
    assert all(hit["region"] == {"mask_id": dogs[hit["image_id"]], "label": "dog"} for hit in body["results"])
    cat_similarities = {hit["image_id"]: hit["semantic_similarity"]
                        for hit in search(client, mask_id=cats[0].pk, k=10).json()["results"]}
    assert all(hit["semantic_similarity"] < cat_similarities[hit["image_id"]] for hit in body["results"])


def test_a_label_filter_takes_any_letter_case_a_list_or_a_repeated_form_field(client, user, scenes):
    images, _ = scenes
    rng = np.random.default_rng(5)
    bird = make_image(name="bird.png", color=(0, 0, 250))
    Mask.objects.filter(image=bird).delete()
    add_embedding(bird, space="semantic", model_key=SEMANTIC_KEY, vector=unit(rng.normal(size=384), "semantic"))
    add_embedding(bird, space="content", model_key=CONTENT_KEY, vector=unit(np.abs(rng.normal(size=1024)), "content"))
    add_mask(bird, label="bird", class_index=3)
    client.force_login(user)

    def found(response):
        assert response.status_code == 200, response.content
        return sorted(hit["image_id"] for hit in response.json()["results"])

    assert found(search(client, image_id=images[0].pk, labels="bird")) == [bird.pk]
    assert found(search(client, image_id=images[0].pk, labels="BIRD")) == [bird.pk]
    assert found(search(client, image_id=images[0].pk, labels=["Bird"])) == [bird.pk]
    everyone_else = sorted([bird.pk, *(image.pk for image in images[1:])])
    assert found(search(client, image_id=images[0].pk, labels=["bird", "cat"])) == everyone_else
    # A form repeating the field: each value counts (DRF alone kept only the last one).
    assert found(client.post(reverse("api-search"), {"image_id": images[0].pk, "labels": ["bird", "Cat"]})) \
        == everyone_else
    refused = search(client, image_id=images[0].pk, labels=[1, 2])
    assert refused.status_code == 400 and "list of texts" in str(refused.json()["labels"])
    # The image list's label filter takes the same spellings.
    assert client.get(reverse("api-images"), {"label": "BIRD"}).json()["count"] == 1
    assert client.get(reverse("api-images"), {"label": "bird, Dog"}).json()["count"] == 7
    assert client.get(reverse("api-images"), {"label": ["bird", "Dog"]}).json()["count"] == 7  # ?label=…&label=…
    # And refuses a label no mask has, as search does, rather than an empty page that reads as "none yet".
    typo = client.get(reverse("api-images"), {"label": "bird,brid"})
    assert typo.status_code == 400 and typo.json()["label"][0].startswith("Unknown label brid; known labels: ")
    assert "bird" in typo.json()["label"][0]


def test_region_queries_refuse_what_they_cannot_answer(client, user, scenes):
    images, _ = scenes
    client.force_login(user)
    missing = search(client, mask_id=10 ** 9)
    assert missing.status_code == 404 and "No such mask" in missing.json()["detail"]
    tiny = add_mask(images[0], label="bird", class_index=3)
    Mask.objects.filter(pk=tiny.pk).update(area_fraction=0.002)
    small = search(client, mask_id=tiny.pk)
    assert small.status_code == 400 and "too small" in small.json()["detail"]
    unknown = search(client, image_id=images[0].pk, labels="cat,unicorn")
    assert unknown.status_code == 400
    assert "unicorn" in unknown.json()["labels"][0] and "known labels: bird, cat, dog" in unknown.json()["labels"][0]
    # As the image list refuses it (in DRF's shape for a field, naming its own): it was {"detail": …} here.
    assert client.get("/api/images/", {"label": "cat,unicorn"}).json() == {"label": unknown.json()["labels"]}
    lonely = search(client, text="a cat", label="cat")
    assert lonely.status_code == 400 and "label" in lonely.json()["label"][0]


@pytest.mark.parametrize("engine", ["pgvector", "faiss"])
@pytest.mark.parametrize("preferred", ["semantic", "content"])
def test_both_similarities_of_a_region_result_are_the_named_regions_own(client, user, media_root, engine, preferred):
    # One picture's cat is near the query's meaning and its cup near the query's look: both indexes
    # find the picture, by different regions. The result names one region; both scores must be its own.
    rng = np.random.default_rng(2)
    query_s, query_c = rng.normal(size=384), np.abs(rng.normal(size=1024))
    query_image = make_image(name="query.png", color=(1, 2, 3))
    query_mask = add_region(query_image, label="cat", class_index=8, semantic=query_s, content=query_c)
    scene = make_image(name="scene.png", color=(9, 9, 9))
    cat = add_region(scene, label="cat", class_index=8, semantic=query_s + 0.1 * rng.normal(size=384),
                     content=np.abs(rng.normal(size=1024)))
    cup = add_region(scene, label="cup", class_index=5, semantic=rng.normal(size=384),
                     content=query_c + 0.02 * np.abs(rng.normal(size=1024)))
    for i in range(4):  # others, far in both spaces
        other = make_image(name=f"other{i}.png", color=(i, 50, 50))
        add_region(other, label="dog", class_index=12, semantic=rng.normal(size=384),
                   content=np.abs(rng.normal(size=1024)) * 5)
    for image in Image.objects.all():  # whole-image vectors of the models the regions have: they serve
        add_embedding(image, space="semantic", model_key=SEMANTIC_KEY,
                      vector=unit(rng.normal(size=384), "semantic"))
        add_embedding(image, space="content", model_key=CONTENT_KEY,
                      vector=unit(np.abs(rng.normal(size=1024)), "content"))
    if engine == "faiss":
        for space, key, dim in (("semantic", SEMANTIC_KEY, 384), ("content", CONTENT_KEY, 1024)):
            index_rebuild(space=space, model_key=key, dim=dim, owner="region")
    client.force_login(user)
    client.put(reverse("api-preferences"), {"preferred_index": preferred}, content_type="application/json")

    top = search(client, mask_id=query_mask.pk, k=3).json()["results"][0]

    named = cat if preferred == "semantic" else cup  # where both found it, the preferred index's region
    assert top["image_id"] == scene.pk and top["retrieved_by"] == "both"
    assert top["region"] == {"mask_id": named.pk, "label": named.label}
    stored = {space: np.asarray(RegionEmbedding.objects.get(mask=named, space=space).vector)
              for space in ("semantic", "content")}
    own_semantic = float(stored["semantic"] @ unit(query_s, "semantic"))
    own_content = 1 - float(np.abs(stored["content"] - unit(query_c, "content")).sum()) / 2
    assert top["semantic_similarity"] == pytest.approx(own_semantic, abs=1e-4)
    assert top["content_similarity"] == pytest.approx(own_content, abs=1e-4)


@pytest.mark.parametrize("engine", ["pgvector", "faiss-exact", "faiss-growing"])
def test_a_rare_label_filter_still_returns_k_results(client, user, media_root, monkeypatch, engine):
    rng = np.random.default_rng(1)
    query_vector = rng.normal(size=384)
    images = []
    for i in range(200):
        image = make_image(name=f"{i}.png", color=(i, i % 7, 3))
        # The birds are the farthest images from the query: a post-filter of the top k finds none.
        far = -query_vector + 0.1 * rng.normal(size=384) if i % 100 == 7 else query_vector + rng.normal(size=384)
        add_embedding(image, space="semantic", model_key=SEMANTIC_KEY, vector=unit(far, "semantic"))
        add_embedding(image, space="content", model_key=CONTENT_KEY, vector=unit(np.abs(rng.normal(size=1024)), "content"))
        if i % 100 == 7:
            add_mask(image, label="bird", class_index=3)
        images.append(image)
    query = make_image(name="query.png", color=(1, 2, 3))
    add_embedding(query, space="semantic", model_key=SEMANTIC_KEY, vector=unit(query_vector, "semantic"))
    add_embedding(query, space="content", model_key=CONTENT_KEY, vector=unit(np.abs(rng.normal(size=1024)), "content"))
    if engine.startswith("faiss"):
        index_rebuild(space="semantic", model_key=SEMANTIC_KEY, dim=384)
        index_rebuild(space="content", model_key=CONTENT_KEY, dim=1024)
    if engine == "faiss-growing":
        monkeypatch.setattr(neighbours, "EXACT_FILTER_MAX", 0)  # ask the index for more until k pass
    client.force_login(user)

    body = search(client, image_id=query.pk, k=2, labels="bird").json()

    assert sorted(hit["image_id"] for hit in body["results"]) == [images[7].pk, images[107].pk]
    assert body["engine"] == ("pgvector" if engine == "pgvector" else "faiss")
    everything = search(client, image_id=query.pk, k=5).json()["results"]
    assert not {images[7].pk, images[107].pk} & {hit["image_id"] for hit in everything}


@pytest.mark.django_db(transaction=True)
def test_a_region_of_an_upload_finds_the_picture_it_was_copied_from(client, user, media_root):
    import io

    from django.core.files.uploadedfile import SimpleUploadedFile
    from PIL import Image as PILImage
    from skimage import data as skdata

    from retrieval.pipeline import process_all_pending
    from tests.retrieval.test_pipeline import upload

    client.force_login(user)
    ids = {name: upload(client, name) for name in ("chelsea", "coffee", "rocket", "astronaut")}
    process_all_pending()
    assert RegionEmbedding.objects.filter(image_id=ids["chelsea"]).exists()

    # A new picture: the cat photo pasted, smaller, into a corner of the rocket photo.
    cat = PILImage.fromarray(skdata.chelsea()).convert("RGB")
    scene = PILImage.fromarray(skdata.rocket()).convert("RGB").resize((max(427, cat.width), max(640, cat.height)))
    cat = cat.resize((cat.width * 3 // 4, cat.height * 3 // 4))
    scene.paste(cat, (scene.width - cat.width, scene.height - cat.height))
    buffer = io.BytesIO()
    scene.save(buffer, format="PNG")

    def ask(**fields):
        return client.post(reverse("api-search"), {"image": SimpleUploadedFile("scene.png", buffer.getvalue()),
                                                   "k": 4, **fields})

    absent = ask(label="aeroplane")
    why = absent.json()["label"][0]
    assert absent.status_code == 400 and "its labels:" in why and "cat" in why
    answer = ask(label="Cat")  # in any letter case, as the label filters
    assert answer.status_code == 200, answer.content
    results = answer.json()["results"]
    assert results[0]["image_id"] == ids["chelsea"]
    assert results[0]["region"]["label"] == "cat"
    whole = ask().json()["results"]  # the whole picture is mostly rocket
    assert whole[0]["image_id"] == ids["rocket"] and whole[0]["region"] is None


def test_the_pages_offer_region_search_and_label_filters_and_outline_the_matched_regions(client, user, scenes):
    images, cats = scenes
    client.force_login(user)
    image_page = client.get(reverse("pages:image", args=[images[0].pk])).content.decode()
    assert f"/search/?mask={cats[0].pk}" in image_page and "Search with this region" in image_page

    results = client.get(reverse("pages:search"), {"mask": cats[0].pk}).content.decode()
    assert "Images similar to the cat in scene0.png" in results
    for i in (1, 2, 3, 4, 5):  # every other scene, each with its cat region outlined
        assert f'data-region="{cats[i].pk}"' in results
    assert results.count('class="region-overlay"') == 5

    home = client.get(reverse("pages:home")).content.decode()
    assert 'name="labels" value="cat"' in home and 'name="labels" value="dog"' in home
    filtered = client.get(reverse("pages:search"), {"image": images[0].pk, "labels": "cat, dog"})  # as typed
    assert filtered.status_code == 200 and 'class="chip">cat<' in filtered.content.decode()
    assert 'class="chip">dog<' in filtered.content.decode()
    unknown = client.get(reverse("pages:search"), {"image": images[0].pk, "labels": "unicorn"}, follow=True)
    assert "known labels: cat, dog" in unknown.content.decode()
    assert client.get(reverse("pages:search"), {"mask": 10 ** 9}).status_code == 404


def test_admin_shows_each_masks_region_vectors_and_searches_by_a_region(client, staff_user, scenes):
    images, cats = scenes
    tiny = add_mask(images[0], label="bird", class_index=3)  # no region vectors
    client.force_login(staff_user)
    change = client.get(reverse("admin:gallery_image_change", args=[images[0].pk])).content.decode()
    similar = reverse("admin:gallery_image_similar", args=[images[0].pk])
    assert f"{similar}?mask={cats[0].pk}" in change and f"?mask={tiny.pk}" not in change
    assert f"semantic:{SEMANTIC_KEY}" in change and "too small to search with" in change

    page = client.get(similar, {"mask": cats[0].pk}).content.decode()
    assert "Images similar to the cat in scene0.png" in page
    assert page.count("matched region: cat") == 5
    for i in range(1, 6):  # each result's matched region outlined over its thumbnail, as on the site's pages
        overlay = reverse("pages:mask-overlay", args=[images[i].pk, cats[i].pk])
        assert f'<img class="region-overlay" src="{overlay}?threshold=30"' in page
    assert client.get(f"{overlay}?threshold=30").status_code == 200  # staff may read it
    assert client.get(similar, {"mask": cats[1].pk}).status_code == 404  # another image's mask


def test_admin_searches_by_a_region_only_for_staff_who_may_view_masks(client, django_user_model, scenes):
    """As the region's own admin page: "Can view image" alone searches by the whole image, not by a region."""
    images, cats = scenes
    viewer = django_user_model.objects.create_user("viewer", password="s3cret-Pass!", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_image"))
    client.force_login(viewer)
    similar = reverse("admin:gallery_image_similar", args=[images[0].pk])
    assert client.get(reverse("admin:gallery_mask_change", args=[cats[0].pk])).status_code == 403
    assert client.get(similar, {"mask": cats[0].pk}).status_code == 403
    assert "Images similar to scene0.png" in client.get(similar).content.decode()
    viewer.user_permissions.add(Permission.objects.get(codename="view_mask"))
    assert "Images similar to the cat in scene0.png" in client.get(similar, {"mask": cats[0].pk}).content.decode()


def test_a_masks_admin_page_shows_the_mask_and_searches_by_its_region_and_changes_nothing(
        client, staff_user, scenes):
    images, cats = scenes
    tiny = add_mask(images[0], label="bird", class_index=3)  # no region vectors
    client.force_login(staff_user)
    url = reverse("admin:gallery_mask_change", args=[cats[0].pk])
    page = client.get(url).content.decode()
    assert reverse("gallery:mask-png", args=[images[0].pk, cats[0].pk]) in page  # the mask beside the picture
    assert reverse("admin:gallery_image_change", args=[images[0].pk]) in page
    similar = reverse("admin:gallery_image_similar", args=[images[0].pk])
    assert f"{similar}?mask={cats[0].pk}" in page and f"semantic:{SEMANTIC_KEY}" in page
    assert 'name="_save"' not in page  # masks come from segmentation: viewed, never edited here
    assert client.post(url, {"label": "dog"}).status_code == 403
    assert Mask.objects.get(pk=cats[0].pk).label == "cat"
    small = client.get(reverse("admin:gallery_mask_change", args=[tiny.pk])).content.decode()
    assert "too small to search with" in small and f"?mask={tiny.pk}" not in small


def test_masks_replaced_by_segmenting_again_leave_every_process_region_index(scenes, media_root):
    """A segmenter change (or a rerun) replaces an image's masks. Before tombstones, the region indexes of
    the web processes kept the old masks' vectors: 'count mismatch', and fewer than k results."""
    from gallery.models import Image
    from retrieval import pipeline
    from retrieval.models import DeletedMask

    images, cats = scenes
    for space, key in (("semantic", SEMANTIC_KEY), ("content", CONTENT_KEY)):
        index_rebuild(space=space, model_key=key, dim=384 if space == "semantic" else 1024, owner="region")
    loaded = manager.get(space="semantic", model_key=SEMANTIC_KEY, dim=384, owner="region")
    assert loaded is not None and loaded.count == 12
    old = set(Mask.objects.filter(image=images[0]).values_list("pk", flat=True))

    Image.objects.exclude(pk=images[0].pk).update(masks_status="ready")
    Image.objects.filter(pk=images[0].pk).update(masks_status="pending")
    pipeline.segment_batch(first_id=images[0].pk)  # the active segmenter, as a worker runs it

    assert set(DeletedMask.objects.values_list("mask_id", flat=True)) == old
    # This process learns it as any web process does: from the tombstones, when it next uses the index.
    for space, key, dim in (("semantic", SEMANTIC_KEY, 384), ("content", CONTENT_KEY, 1024)):
        index = manager.get(space=space, model_key=key, dim=dim, owner="region")
        now = set(RegionEmbedding.objects.filter(space=space, model_key=key).values_list("mask_id", flat=True))
        assert index.count == len(now) and not old & now
        found = {label for label, _ in index.search(unit(np.ones(dim), space), 50)}
        assert found == now and not index.regions_of.get(images[0].pk, set()) & old


def test_what_another_process_deleted_is_replaced_by_the_next_candidate_before_the_index_catches_up(
        client, user, scenes, settings):
    """Another web or worker process deleted an image (or re-segmented one) after this process's indexes
    last caught up: the answer still has k results, none of them gone (it came back one short)."""
    images, cats = scenes
    for owner in ("image", "region"):
        for space, key, dim in (("semantic", SEMANTIC_KEY, 384), ("content", CONTENT_KEY, 1024)):
            index_rebuild(space=space, model_key=key, dim=dim, owner=owner)
    settings.IMAGINAITION_INDEX_SYNC_SECONDS = 3600  # this process does not look at the database meanwhile
    client.force_login(user)

    first = search(client, image_id=images[0].pk, k=3).json()["results"]
    gone = first[0]["image_id"]
    Image.objects.filter(pk=gone).delete()  # as another process does: this one's indexes are not told
    results = search(client, image_id=images[0].pk, k=3).json()["results"]
    assert len(results) == 3 and gone not in [hit["image_id"] for hit in results]

    first = search(client, mask_id=cats[0].pk, k=3).json()["results"]
    replaced = first[0]["region"]["mask_id"]
    Mask.objects.filter(pk=replaced).delete()  # re-segmented elsewhere: its region vectors go with it
    results = search(client, mask_id=cats[0].pk, k=3).json()["results"]
    assert len(results) == 3 and replaced not in [hit["region"]["mask_id"] for hit in results]
