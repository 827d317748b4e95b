"""The offline semantic vector v2 (`offline/effnet-lite0+minilm/v2`, and the profile's default
`offline/effnet-lite2+minilm/v2`: the same construction on the larger network): v1's bridge plus the
classifier's centred pooled features for images, zeros for texts. Every construction test runs on both
networks. Real models (shipped in pip packages) on scikit-image's bundled photos; no database, no
network, no mocks."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from skimage import data

from retrieval.encoders.catalog import MODELS, PROFILE_MODELS
from retrieval.encoders.offline import OfflineSemanticEncoder, load_semantic
from retrieval.encoders.registry import get_model

V1_KEY, V2_KEY = "offline/effnet-lite0+minilm", "offline/effnet-lite0+minilm/v2"
LITE2_KEY, LITE2_SEGMENTER_KEY = "offline/effnet-lite2+minilm/v2", "offline/effnet-lite2-cam"
V2_KEYS = {"lite0": V2_KEY, "lite2": LITE2_KEY}
BRIDGE_SHARE = 0.3  # a, as the catalog declares it
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "hubble_deep_field", "immunohistochemistry",
          "retina", "page", "text", "brick", "grass", "gravel", "colorwheel", "logo", "horse", "clock", "moon",
          "coins")


@pytest.fixture(scope="module", params=sorted(V2_KEYS))
def v2(request) -> OfflineSemanticEncoder:
    return get_model(V2_KEYS[request.param])


@pytest.fixture(scope="module")
def v1(v2) -> OfflineSemanticEncoder:
    """The v1 bridge on v2's network: Lite0's is registered; Lite2's is built from the v2 spec without
    the feature block (no key of its own: it is what a Lite2 text query ranks by)."""
    if v2.key == V2_KEY:
        return get_model(V1_KEY)
    spec = MODELS[v2.key]
    options = {name: value for name, value in spec.options.items() if name != "bridge_share"}
    return load_semantic(replace(spec, key="lite2 v1 bridge (test)", dim=384, options=options))


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS}


def _altered(image: Image.Image) -> Image.Image:
    """A near-copy: 80 % crop off-centre, rotated 5° on white, 60 % size, JPEG quality 40."""
    width, height = image.size
    image = image.crop((width // 10, height // 20, width // 10 + width * 4 // 5, height // 20 + height * 4 // 5))
    image = image.rotate(5, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    image = image.resize((image.width * 3 // 5, image.height * 3 // 5), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=40)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_the_lite2_pair_is_the_offline_default_and_the_lite0_keys_stay_registered():
    assert PROFILE_MODELS["offline"]["semantic"] == LITE2_KEY
    assert PROFILE_MODELS["offline"]["segmenter"] == LITE2_SEGMENTER_KEY
    assert MODELS[V1_KEY].dim == 384 and MODELS[V2_KEY].dim == 384 + 1280 <= 2000  # pgvector HNSW limit
    assert MODELS[LITE2_KEY].dim == MODELS[V2_KEY].dim
    for key in V2_KEYS.values():
        assert MODELS[key].options["bridge_share"] == BRIDGE_SHARE
    assert MODELS[V2_KEY].weights == MODELS[V1_KEY].weights
    # the Lite2 semantic model and segmenter read one classifier file; MiniLM is the Lite0 keys' own
    assert MODELS[LITE2_KEY].weight_path("classifier") == MODELS[LITE2_SEGMENTER_KEY].weight_path("classifier")
    assert MODELS[LITE2_KEY].weight_path("text") == MODELS[V1_KEY].weight_path("text")
    assert MODELS[LITE2_KEY].weight_path("classifier") != MODELS[V2_KEY].weight_path("classifier")


def test_the_offline_network_setting_chooses_the_pair_and_refuses_others(settings):
    from django.core.exceptions import ImproperlyConfigured

    from retrieval.encoders import registry

    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_SEGMENTER = ""
    chosen = {}
    for network in ("lite2", "lite0"):
        settings.IMAGINAITION_OFFLINE_NETWORK = network
        models = registry.active_models()
        chosen[network] = (models.semantic, models.segmenter, models.content)
    assert chosen["lite2"] == (LITE2_KEY, LITE2_SEGMENTER_KEY, "autoencoder/v2")
    assert chosen["lite0"] == (V2_KEY, "offline/effnet-lite0-cam", "autoencoder/v2")
    settings.IMAGINAITION_SEGMENTER = "offline/effnet-lite0-cam"  # still overrides the pair's segmenter
    settings.IMAGINAITION_OFFLINE_NETWORK = "lite2"
    assert registry.active_models().segmenter == "offline/effnet-lite0-cam"
    settings.IMAGINAITION_OFFLINE_NETWORK = "lite4"
    with pytest.raises(ImproperlyConfigured, match="lite2, lite0"):
        registry.active_models()


def test_image_vectors_are_unit_rows_with_the_documented_block_weights(v1, v2, photos):
    images = list(photos.values())[:6]
    old, new = v1.encode_images(images), v2.encode_images(images)
    assert v2.key in V2_KEYS.values() and v2.dim == 1664
    assert new.shape == (6, 1664) and new.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-5)
    bridge, features = new[:, :384], new[:, 384:]
    np.testing.assert_allclose(np.linalg.norm(bridge, axis=1) ** 2, BRIDGE_SHARE, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1) ** 2, 1 - BRIDGE_SHARE, atol=1e-5)
    np.testing.assert_allclose(bridge, np.sqrt(BRIDGE_SHARE) * old, atol=1e-5)  # the bridge block is v1
    assert v2.encode_images([]).shape == (0, 1664)


def test_text_vectors_are_v1_padded_with_zeros(v1, v2):
    texts = ["a photo of a cat", "a rocket", "a cup of coffee"]
    new = v2.encode_texts(texts)
    assert new.shape == (3, 1664) and new.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(new[:, :384], v1.encode_texts(texts), atol=1e-6)
    assert not new[:, 384:].any()
    assert v2.encode_texts([]).shape == (0, 1664)


def test_a_text_ranks_images_exactly_as_v1(v1, v2, photos):
    images = list(photos.values())
    texts = ["a photo of a cat", "a rocket", "an astronaut", "a cup of coffee", "a horse", "a wall clock",
             "a page of text", "the moon", "a cell under a microscope"]
    old = v1.encode_texts(texts) @ v1.encode_images(images).T
    new = v2.encode_texts(texts) @ v2.encode_images(images).T
    np.testing.assert_allclose(new, np.sqrt(BRIDGE_SHARE) * old, atol=1e-5)
    assert np.array_equal(np.argsort(-new, axis=1, kind="stable"), np.argsort(-old, axis=1, kind="stable"))
    # L2 distance on unit vectors, as the indexes search: the same order as well
    distances = lambda q, g: np.linalg.norm(q[:, None, :] - g[None, :, :], axis=2)  # noqa: E731
    old_order = np.argsort(distances(v1.encode_texts(texts), v1.encode_images(images)), axis=1, kind="stable")
    new_order = np.argsort(distances(v2.encode_texts(texts), v2.encode_images(images)), axis=1, kind="stable")
    assert np.array_equal(old_order, new_order)


def test_near_copies_find_their_original_under_v2(v1, v2, photos):
    """The feature block tells apart pictures the classifier files under the same classes: every near
    copy finds its own original first among the 19 photos under v2; under v1 some do not (a page of
    text and the clock, whose class distributions resemble others'), and v2's margins are wider."""
    images = list(photos.values())
    copies = [_altered(image) for image in images]
    margins = {}
    for encoder in (v1, v2):
        similarity = encoder.encode_images(copies) @ encoder.encode_images(images).T
        own = np.diag(similarity).copy()
        np.fill_diagonal(similarity, -np.inf)
        margins[encoder.key] = own - similarity.max(axis=1)
    assert (margins[v2.key] > 0).all()
    assert (margins[v1.key] <= 0).any()
    assert np.median(margins[v2.key]) > np.median(margins[v1.key])


def test_two_crops_of_a_photo_stand_out_more_under_v2(v1, v2, photos):
    """rocket, astronaut and camera are grey photos that v1 maps close together (cosine ~0.45): the
    gap between two crops of one of them and the nearest other photo widens under v2."""
    for name in ("rocket", "astronaut", "camera"):
        image = photos[name]
        width, height = image.size
        left, right = image.crop((0, 0, width * 3 // 4, height)), image.crop((width // 4, 0, width, height))
        others = [photo for other, photo in photos.items() if other != name]
        gaps = []
        for encoder in (v1, v2):
            a, b = encoder.encode_images([left, right])
            gaps.append(float(a @ b) - float((encoder.encode_images(others) @ a).max()))
        assert gaps[1] > gaps[0] + 0.1, (name, gaps)


def test_feature_centre_is_a_constant_of_the_weights(v2, photos):
    """m comes from the network alone: in ReLU6's range, and an image's vector does not depend on the
    other images encoded with it (nothing is estimated from a gallery or a batch)."""
    mean = v2.network.feature_mean  # read from the last batch norm before it was folded
    assert mean.shape == (1280,) and mean.dtype == np.float32
    assert (mean >= 0).all() and (mean <= 6).all()
    np.testing.assert_array_equal(mean, v2.feature_mean)
    images = list(photos.values())[:5]
    np.testing.assert_allclose(v2.encode_images(images)[:1], v2.encode_images(images[:1]), atol=1e-5)


def test_one_network_per_process_and_one_forward_pass(v1, v2):
    segmenter = get_model("offline/effnet-lite0-cam" if v2.key == V2_KEY else LITE2_SEGMENTER_KEY)
    assert v2.network is v1.network is segmenter.network
    assert v2.network.input_size == (224 if v2.key == V2_KEY else 260)  # each network's own resolution
    assert v2.text_model is v1.text_model
    calls = []
    hook = v2.network.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        v2.encode_images([Image.fromarray(data.chelsea())] * 3)
    finally:
        hook.remove()
    assert calls == [3]
