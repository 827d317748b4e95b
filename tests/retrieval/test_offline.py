"""The offline profile's real models (EfficientNet-Lite0 + all-MiniLM-L6-v2, shipped in pip packages)
on scikit-image's bundled photos. No database, no network, no mocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from retrieval.encoders.base import shared_passes
from retrieval.encoders.offline import CamSegmenter, OfflineSemanticEncoder
from retrieval.encoders.registry import get_model

SEMANTIC_KEY = "offline/effnet-lite0+minilm"
SEGMENTER_KEY = "offline/effnet-lite0-cam"


@pytest.fixture(scope="module")
def semantic() -> OfflineSemanticEncoder:
    return get_model(SEMANTIC_KEY)


@pytest.fixture(scope="module")
def segmenter() -> CamSegmenter:
    return get_model(SEGMENTER_KEY)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(getattr(data, name)()).convert("RGB")
            for name in ("chelsea", "coffee", "rocket", "astronaut")}


def test_vectors_are_float32_unit_rows_of_384(semantic, photos):
    images = semantic.encode_images(list(photos.values()))
    texts = semantic.encode_texts(["a photo of a cat", "a rocket"])
    for vectors, rows in ((images, len(photos)), (texts, 2)):
        assert vectors.shape == (rows, 384)
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert semantic.key == SEMANTIC_KEY and semantic.dim == 384
    assert semantic.encode_images([]).shape == (0, 384)


def test_photos_are_nearest_their_own_description(semantic, photos):
    cat, rocket = semantic.encode_texts(["a photo of a cat", "a rocket"])
    chelsea, rocket_photo = semantic.encode_images([photos["chelsea"], photos["rocket"]])
    assert chelsea @ cat > chelsea @ rocket
    assert rocket_photo @ rocket > rocket_photo @ cat

    texts = ["a photo of a cat", "a rocket", "an astronaut", "a cup of coffee",
             "a dog running on the grass", "a city skyline at night"]
    coffee = semantic.encode_images([photos["coffee"]])[0]
    assert texts[int(np.argmax(semantic.encode_texts(texts) @ coffee))] == "a cup of coffee"


def test_a_batch_is_one_forward_pass(semantic, segmenter, photos):
    assert semantic.network is segmenter.network  # one EfficientNet per process
    calls = []
    hook = semantic.network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        semantic.encode_images(list(photos.values()) * 2)
        segmenter.segment(list(photos.values()))
    finally:
        hook.remove()
    assert calls == [8, 4]


def test_in_a_shared_passes_block_the_two_roles_pass_each_picture_once_with_the_same_results(
        semantic, segmenter, photos):
    pictures = list(photos.values())
    vectors, masks = semantic.encode_images(pictures), segmenter.segment(pictures)  # a pass each
    camera = Image.fromarray(data.camera()).convert("RGB")
    camera_vector = semantic.encode_images([camera])[0]
    calls = []
    hook = semantic.network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        with shared_passes():
            shared_vectors = semantic.encode_images(pictures)
            shared_masks = segmenter.segment(pictures)  # no pass: the semantic encoder's is reused
            # Only the new picture is passed; the rows keep the order asked for.
            mixed = semantic.encode_images([pictures[1], camera, pictures[0]])
        segmenter.segment(pictures[:1])  # the block's passes went with it
    finally:
        hook.remove()
    assert calls == [4, 1, 1]
    np.testing.assert_allclose(shared_vectors, vectors, atol=1e-6)
    np.testing.assert_allclose(mixed, [vectors[1], camera_vector, vectors[0]], atol=1e-5)
    assert [[mask.label for mask in found] for found in shared_masks] == [[mask.label for mask in found]
                                                                           for found in masks]
    for found, expected in zip(shared_masks, masks, strict=True):
        for mask, reference in zip(found, expected, strict=True):
            np.testing.assert_allclose(mask.probability, reference.probability, atol=1e-5)


@pytest.mark.parametrize("key", [SEGMENTER_KEY, "offline/effnet-lite2-cam"])  # 7x7 and 9x9 cells
def test_cat_mask_covers_the_cat(key, photos):
    chelsea = photos["chelsea"]  # 451 x 300, the cat's head fills the middle
    masks = get_model(key).segment([chelsea])[0]
    cat = next(mask for mask in masks if mask.label == "cat")
    assert cat.class_index == 8  # VOC index
    probability = cat.probability
    assert probability.shape == (chelsea.height, chelsea.width)
    assert probability.dtype == np.float32
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    # Hand-measured: the head (eyes, nose, cheeks) lies in rows 40-300, columns 90-350; columns 390
    # and right of them, below the ear (rows 80-300), are the blurred room behind the cat.
    head = np.zeros(probability.shape, dtype=bool)
    head[40:300, 90:350] = True
    assert probability[head].mean() > probability[~head].mean()
    assert probability[head].mean() > probability[80:300, 390:].mean()


def test_the_class_sentences_are_embedded_once_per_host_and_read_back_by_later_processes(
        settings, tmp_path, monkeypatch):
    from retrieval.encoders import offline
    from retrieval.encoders.registry import MODELS

    settings.IMAGINAITION_MODEL_CACHE_DIR = tmp_path / "models"
    spec = MODELS[SEMANTIC_KEY]
    weights = spec.weight_path("text")
    text_model = offline.shared_text_model(weights.parent)
    sentences = [sentence for per_class in offline.class_texts(offline.DEFAULT_BRIDGE) for sentence in per_class][:48]

    first = offline.cached_sentence_embeddings(text_model, sentences, weights)
    kept = list((tmp_path / "models").iterdir())
    assert [path.name for path in kept] == [offline.sentence_cache_path(sentences, weights).name]  # no scratch left
    np.testing.assert_array_equal(first, offline.embed_texts(text_model, sentences))
    assert offline.sentence_cache_path(sentences[:-1], weights) != kept[0]  # other sentences, another file

    # A later process reads the file: MiniLM is not asked again.
    with monkeypatch.context() as patch:
        patch.setattr(offline, "embed_texts", lambda *args: pytest.fail("embedded again"))
        np.testing.assert_array_equal(offline.cached_sentence_embeddings(text_model, sentences, weights), first)

    # A damaged file is computed again and replaced.
    kept[0].write_bytes(b"not an array")
    np.testing.assert_array_equal(offline.cached_sentence_embeddings(text_model, sentences, weights), first)
    np.testing.assert_array_equal(np.load(kept[0]), first)


def test_a_loaded_semantic_model_keeps_its_class_sentences_in_the_model_cache(semantic):
    from django.conf import settings

    from retrieval.encoders import offline
    from retrieval.encoders.registry import MODELS

    spec = MODELS[SEMANTIC_KEY]
    sentences = [sentence for per_class in offline.class_texts(semantic.bridge) for sentence in per_class]
    path = offline.sentence_cache_path(sentences, spec.weight_path("text"))
    assert path.parent == settings.IMAGINAITION_MODEL_CACHE_DIR and path.is_file()
    assert np.load(path).shape == (len(sentences), 384)


@pytest.mark.parametrize(("size", "kept"), [((1, 1), False), ((7, 7), True)])
def test_a_label_whose_map_misses_every_pixel_of_a_tiny_picture_gets_no_mask(segmenter, size, kept):
    from retrieval.encoders.imagenet_voc import VOC_IMAGENET_CLASSES

    cat = list(VOC_IMAGENET_CLASSES["cat"])[0]
    probabilities = torch.zeros(1000)
    probabilities[cat] = 0.9  # the classifier is sure there is a cat ...
    cams = torch.zeros(1000, 7, 7)
    cams[cat, 0, 0] = 1.0  # ... in one corner cell, which a 1×1 picture's single sample misses

    masks = segmenter._masks(Image.new("RGB", size), probabilities, cams)

    assert [mask.label for mask in masks] == (["cat"] if kept else [])
    assert all(mask.area_fraction > 0 for mask in masks)
