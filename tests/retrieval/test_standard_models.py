"""The standard profile's loaders, end to end through their real file-loading path, on randomly
initialised weights saved into a temporary weights folder (no network, no real weights needed)."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from retrieval.encoders import registry
from retrieval.encoders.catalog import DEEPLABV3_RESNET101, OPENCLIP_VIT_B_32


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    import open_clip

    from retrieval.encoders.deeplab import build_model

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    clip, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, force_quick_gelu=True)
    torch.save(clip.state_dict(), folder / OPENCLIP_VIT_B_32.weights[0].filename)
    del clip
    torch.save(build_model().state_dict(), folder / DEEPLABV3_RESNET101.weights[0].filename)
    shipped = registry.MODELS["autoencoder/v1"].weights[0]
    shutil.copy(shipped.path(), folder / shipped.filename)  # our autoencoder serves both profiles
    return folder


@pytest.fixture
def standard(settings, weights_dir):
    settings.IMAGINAITION_WEIGHTS_DIR = weights_dir
    settings.IMAGINAITION_MODEL_PROFILE = "auto"
    registry.unload_all()
    yield registry
    registry.unload_all()


def pictures():
    rng = np.random.default_rng(0)
    return [PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((60, 80), (90, 50))]


def test_auto_profile_is_standard_when_both_files_are_present(standard):
    assert standard.active_profile() == "standard"
    assert standard.active_models().semantic == "openclip/ViT-B-32/openai"


def test_auto_profile_falls_back_to_offline_when_a_file_is_missing(settings, tmp_path):
    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path
    settings.IMAGINAITION_MODEL_PROFILE = "auto"
    assert registry.active_profile() == "offline"


def test_openclip_image_and_text_towers(standard):
    model = standard.get_model("openclip/ViT-B-32/openai")
    calls = []
    handle = model.model.visual.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        images = model.encode_images(pictures() * 2)
    finally:
        handle.remove()
    texts = model.encode_texts(["a photo of a cat", "a rocket"])
    assert calls == [4]  # one visual forward pass for the batch
    for vectors, rows in ((images, 4), (texts, 2)):
        assert vectors.shape == (rows, 512) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_deeplab_masks_are_probabilities_at_each_image_size(standard, monkeypatch):
    from retrieval.encoders import deeplab

    monkeypatch.setattr(deeplab, "MIN_AREA", 0.0)  # random weights: report every class that wins a pixel
    segmenter = standard.get_model("torchvision/deeplabv3_resnet101")
    calls = []
    handle = segmenter.model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        results = segmenter.segment(pictures())
    finally:
        handle.remove()
    assert calls == [2]
    assert len(results) == 2 and all(results)
    for picture, masks in zip(pictures(), results, strict=True):
        for mask in masks:
            assert mask.probability.shape == (picture.height, picture.width)
            assert 0.0 <= mask.probability.min() and mask.probability.max() <= 1.0
            assert 1 <= mask.class_index <= 20 and mask.label == deeplab.VOC_LABELS[mask.class_index]
