"""Search by region, its data: how a mask becomes a picture, and the region vectors the pipeline stores."""

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image as PILImage

from gallery.imaging import decode_for_models
from gallery.models import Image, Mask
from retrieval.encoders.base import SoftMask
from retrieval.encoders.catalog import MODELS
from retrieval.encoders.registry import get_model
from retrieval.models import RegionEmbedding
from retrieval.pipeline import images_reembed_for_active_models, process_batch, segment_batch
from retrieval.regions import NEUTRAL_FILL, region_picture, region_threshold
from retrieval.search import QueryError, vectors_for_upload_region
from tests.gallery.factories import add_mask, make_image
from tests.retrieval.test_pipeline import jpeg, offline, upload  # noqa: F401 - fixture


def picture_and_square_mask(size=(100, 80), box=(20, 10, 60, 50)):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    probability = np.zeros((size[1], size[0]), dtype=np.float32)
    left, top, right, bottom = box
    probability[top:bottom, left:right] = 1.0
    return PILImage.fromarray(pixels, "RGB"), probability, pixels


def test_a_box_region_is_the_masks_bounding_box(settings):
    picture, probability, pixels = picture_and_square_mask()
    probability[30, 40] = 0.0  # a hole inside the box stays in a plain box crop
    region = region_picture(picture, probability, style="box")
    assert region.size == (40, 40)
    assert np.array_equal(np.asarray(region), pixels[10:50, 20:60])


def test_a_masked_region_blends_what_is_outside_the_soft_mask_toward_neutral_grey():
    picture, probability, pixels = picture_and_square_mask()
    probability[10:50, 20:40] = 0.5  # left half: half-way; right half: fully inside
    probability[30, 59] = 0.0  # a hole: all grey
    region = np.asarray(region_picture(picture, probability, style="masked"), dtype=np.float32)
    assert region.shape == (40, 40, 3)
    assert np.abs(region[0, 30] - pixels[10, 50]).max() <= 1  # inside: the pixel itself
    assert np.abs(region[20, 39] - NEUTRAL_FILL).max() <= 1  # the hole: neutral grey
    expected_half = 0.5 * pixels[10, 20].astype(np.float32) + 0.5 * np.array(NEUTRAL_FILL)
    assert np.abs(region[0, 0] - expected_half).max() <= 1


def test_regions_below_the_minimum_area_get_nothing(settings):
    settings.IMAGINAITION_REGION_MIN_AREA = 0.01
    picture, probability, _ = picture_and_square_mask(size=(100, 100), box=(0, 0, 9, 9))  # 0.81 %
    assert region_picture(picture, probability) is None
    picture, probability, _ = picture_and_square_mask(size=(100, 100), box=(0, 0, 11, 10))  # 1.1 %
    assert region_picture(picture, probability) is not None


@pytest.mark.django_db
def test_the_api_documents_the_cut_a_region_is_made_at():
    """The preferences' schema said regions were cut at 50 %; they are cut at the default threshold (30)."""
    from retrieval.api import PreferencesSerializer

    picture, probability, _ = picture_and_square_mask(size=(100, 100), box=(0, 0, 100, 100))
    probability[:, 50:] = 0.4  # the right half is in a region cut at 30 % and not in one cut at 50 %
    probability[:, :10] = 0.0
    region = region_picture(picture, probability, style="box")
    assert region.size == (90, 100)
    cut = region_threshold()
    assert 0.4 >= cut and f"the default cut, {round(cut * 100)}," in PreferencesSerializer().fields["mask_threshold"].help_text


def test_a_soft_mask_at_model_resolution_is_resized_to_the_picture():
    picture, probability, pixels = picture_and_square_mask(size=(100, 80), box=(20, 10, 60, 50))
    small = probability[::2, ::2]  # (40, 50): half resolution
    region = region_picture(picture, small, style="box")
    assert abs(region.size[0] - 40) <= 2 and abs(region.size[1] - 40) <= 2


@pytest.mark.django_db(transaction=True)
def test_the_pipeline_stores_region_vectors_for_a_real_photo_once(client, user, media_root, offline):  # noqa: F811
    client.force_login(user)
    image_id = upload(client, "chelsea")
    process_batch(batch_size=4)  # masks wait for the embedding: the task embeds, then segments

    image = Image.objects.get(pk=image_id)
    assert image.masks_status == "ready"
    rows = RegionEmbedding.objects.filter(image=image)
    per_mask = {}
    for row in rows:
        per_mask.setdefault(row.mask_id, set()).add((row.space, row.model_key, len(row.vector)))
    assert per_mask, "a cat photo has at least one region large enough"
    expected = {("semantic", offline.semantic, len(rows.filter(space="semantic").first().vector)),
                ("content", offline.content, 1024)}
    assert all(keys == expected for keys in per_mask.values())
    cat = image.masks.get(label="cat")
    assert cat.pk in per_mask
    content = np.asarray(rows.get(mask=cat, space="content").vector)
    assert abs(np.abs(content).sum() - 1) < 1e-3  # L1-normalized, like whole-image content vectors

    status = client.get("/api/status/").json()
    assert status["region_vectors"] == {"semantic": len(per_mask), "content": len(per_mask)}

    # A retried segmentation task replaces the masks and their regions: one set, no orphans.
    count = rows.count()
    Image.objects.filter(pk=image_id).update(masks_status="pending")
    segment_batch(batch_size=4)
    assert RegionEmbedding.objects.filter(image_id=image_id).count() == count
    assert not RegionEmbedding.objects.exclude(mask__in=Mask.objects.all()).exists()


@pytest.mark.django_db(transaction=True)
def test_a_batchs_regions_are_encoded_in_groups_of_the_batch_size(client, user, media_root, offline,  # noqa: F811
                                                                   monkeypatch):
    """One forward pass took every region of a batch (up to ~80 for 16 photos, ~17 MB each): a worker's
    heap kept the largest such peak for its life, 2.0-2.7 GB in big imports."""
    from retrieval.encoders.registry import get_model

    client.force_login(user)
    upload(client, "rocket")  # a launch pad, a missile and a dog, to the offline segmenter: three regions
    process_batch(batch_size=1, masks=False)  # vectors first: masks wait for them
    passes: list[int] = []
    for key in (offline.semantic, offline.content):
        model = get_model(key)
        monkeypatch.setattr(model, "encode_images", lambda pictures, _real=model.encode_images: (
            passes.append(len(pictures)), _real(pictures))[1])
    segment_batch(batch_size=1)  # one image a batch: its regions one at a time

    regions = RegionEmbedding.objects.filter(space="content").count()
    assert regions >= 2, "the test wants an image with more regions than the batch size"
    assert passes and max(passes) == 1  # every region pass within the batch's size
    assert RegionEmbedding.objects.filter(space="semantic").count() == regions  # each region still embedded


def faint_and_strong(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Two soft masks at a picture's size: the faint one covers a quarter at the default cut (0.3) and
    1 % at 0.5 (what its label's percentage shows); the strong one half the picture at both."""
    width, height = size
    faint = np.zeros((height, width), dtype=np.float32)
    faint[: height // 4] = 0.4
    faint[: height // 10, : width // 10] = 0.9
    strong = np.zeros((height, width), dtype=np.float32)
    strong[height // 2:] = 0.9
    return faint, strong


@pytest.mark.django_db(transaction=True)
def test_a_label_offers_its_region_search_exactly_when_its_region_has_vectors(  # noqa: F811 - fixtures
        client, user, media_root, offline, settings, monkeypatch):
    """The link was offered by the mask's share at 0.5 while vectors were made by its share at the
    default cut (0.3): a mask between the two had vectors that no page offered to search with."""
    settings.IMAGINAITION_REGION_MIN_AREA = 0.05
    client.force_login(user)
    image_id = upload(client, "chelsea")
    process_batch(batch_size=1, masks=False)
    monkeypatch.setattr(get_model(offline.segmenter), "segment", lambda pictures: [
        [SoftMask("sofa", 18, faint), SoftMask("cat", 8, strong)]
        for faint, strong in (faint_and_strong(picture.size) for picture in pictures)])
    segment_batch(batch_size=1)

    faint, strong = (Mask.objects.get(image_id=image_id, label=label) for label in ("sofa", "cat"))
    assert faint.area_fraction < settings.IMAGINAITION_REGION_MIN_AREA <= strong.area_fraction
    assert not RegionEmbedding.objects.filter(mask=faint).exists()
    assert RegionEmbedding.objects.filter(mask=strong).count() == 2
    page = client.get(reverse("pages:image", args=[image_id])).content.decode()
    assert f"?mask={strong.pk}" in page and f"?mask={faint.pk}" not in page
    refused = client.post(reverse("api-search"), {"mask_id": faint.pk})
    assert refused.status_code == 400 and "too small" in refused.json()["detail"]
    assert images_reembed_for_active_models(enqueue=False).ids == []  # and nothing is owed to it

    # An uploaded picture's region (nothing stored) by the same bar.
    data = jpeg("chelsea")
    faint_upload, strong_upload = faint_and_strong(decode_for_models(data).picture.size)
    masks = {"sofa": faint_upload, "cat": strong_upload}
    with pytest.raises(QueryError, match="too small"):
        vectors_for_upload_region(data=data, label="sofa", masks=masks, models=offline)
    assert vectors_for_upload_region(data=data, label="cat", masks=masks, models=offline)[1] == "cat"


@pytest.mark.django_db
def test_reembed_requeues_segmentation_where_a_region_lacks_the_active_models_vectors(media_root, offline):  # noqa: F811
    def segmented_image(*, segmenter=offline.segmenter, area=0.4, region_spaces=()):
        image = make_image(status="ready")
        Image.objects.filter(pk=image.pk).update(masks_status="ready", segmented_by=segmenter)  # as segmenting does
        mask = add_mask(image, segmenter=segmenter)
        Mask.objects.filter(pk=mask.pk).update(area_fraction=area)
        keys = {"semantic": offline.semantic, "content": offline.content}
        for space in region_spaces:
            dim = MODELS[keys[space]].dim  # pgvector's per-model indexes check it
            RegionEmbedding.objects.create(mask=mask, image=image, space=space, model_key=keys[space],
                                           vector=np.full(dim, 1 / dim, dtype=np.float32))
        return image

    # stored before search by region existed: no region vectors
    no_regions = segmented_image(region_spaces=())
    # a semantic model change: the content vector is the active one's, the semantic one is not
    semantic_lacking = segmented_image(region_spaces=("content",))
    # a segmenter change: the masks are another segmenter's, whatever their vectors
    other_segmenter = segmented_image(segmenter="test/segmenter", region_spaces=("semantic", "content"))
    complete = segmented_image(region_spaces=("semantic", "content"))
    tiny = segmented_image(area=0.001)  # too small to be a region: needs no vectors

    plan = images_reembed_for_active_models(enqueue=False)

    requeued = {no_regions.pk, semantic_lacking.pk, other_segmenter.pk}
    assert requeued <= set(plan.segment) and set(plan.segment) <= set(plan.ids)
    assert requeued <= set(plan.embed)  # (they are also re-embedded whole: they have no image vectors either)
    for image in (no_regions, semantic_lacking, other_segmenter, complete, tiny):
        image.refresh_from_db()
        assert image.masks_status == ("pending" if image.pk in requeued else "ready"), image.pk


@pytest.mark.django_db(transaction=True)
def test_segmenting_after_a_segmenter_change_replaces_the_old_segmenters_masks(client, user, media_root, offline):  # noqa: F811
    client.force_login(user)
    image_id = upload(client, "chelsea")
    image = Image.objects.get(pk=image_id)
    old = add_mask(image, segmenter="test/old-segmenter")
    RegionEmbedding.objects.create(mask=old, image=image, space="content", model_key=offline.content,
                                   vector=np.full(1024, 1 / 1024, dtype=np.float32))

    process_batch(batch_size=4)

    masks = Mask.objects.filter(image_id=image_id)
    assert masks.exists() and set(masks.values_list("segmenter", flat=True)) == {offline.segmenter}
    assert not RegionEmbedding.objects.filter(mask_id=old.pk).exists()
    assert images_reembed_for_active_models(enqueue=False).ids == []  # nothing left to do


@pytest.mark.django_db
def test_region_indexes_are_built_from_postgres_caught_up_and_drop_deleted_images(settings, tmp_path, media_root):
    from gallery import services
    from retrieval.index_snapshots import manager
    from retrieval.indexes import index_rebuild

    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    settings.IMAGINAITION_INDEX_SYNC_SECONDS = 0
    manager.clear()
    key, dim = "autoencoder/v1", 1024
    rng = np.random.default_rng(0)

    def add_region(image, label, class_index):
        mask = add_mask(image, label=label, class_index=class_index)
        vector = np.abs(rng.normal(size=dim)).astype(np.float32)
        RegionEmbedding.objects.create(mask=mask, image=image, space="content", model_key=key,
                                       vector=vector / vector.sum())
        return mask, vector / vector.sum()

    images = [make_image(name=f"{i}.png", color=(i, i, i)) for i in range(3)]
    regions = [add_region(image, label, n) for image in images for n, label in ((8, "cat"), (12, "dog"))]

    report = index_rebuild(space="content", model_key=key, dim=dim, owner="region")
    assert report.count == 6
    snapshot = manager.get(space="content", model_key=key, dim=dim, owner="region")
    query = regions[2][1]  # image 1's cat
    found = snapshot.search(query, 3)
    assert found[0][0] == regions[2][0].pk and found[0][1] == pytest.approx(1.0, abs=1e-5)
    # A search by a stored image leaves out all of that image's regions.
    assert not {label for label, _ in snapshot.search(query, 6, exclude_image_id=images[1].pk)} & \
        {regions[2][0].pk, regions[3][0].pk}

    late = make_image(name="late.png", color=(9, 9, 9))
    late_mask, late_vector = add_region(late, "cat", 8)
    snapshot = manager.get(space="content", model_key=key, dim=dim, owner="region")
    assert snapshot.search(late_vector, 1)[0][0] == late_mask.pk  # caught up, no rebuild

    deleted = images[1].pk
    services.image_delete(image=images[1])
    snapshot = manager.get(space="content", model_key=key, dim=dim, owner="region")
    labels = {label for label, _ in snapshot.search(query, 10)}
    assert labels == {r[0].pk for r in regions if r[0].image_id != deleted} | {late_mask.pk}
    manager.clear()  # another process: loads the persisted file and the regions' images
    reloaded = manager.get(space="content", model_key=key, dim=dim, owner="region")
    assert reloaded.version == report.version and reloaded.count == 5  # 6 built + 1 caught up − 2 deleted
    assert reloaded.image_of[late_mask.pk] == late.pk
    assert reloaded.search(query, 10, exclude_image_id=late.pk)[-1][0] != late_mask.pk
    # The image index of the same model is a different index.
    assert manager.get(space="content", model_key=key, dim=dim) is None
