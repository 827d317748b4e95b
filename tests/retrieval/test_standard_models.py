"""The standard profile's loaders, end to end through the registry and their real file-loading path, on
randomly initialised weights saved into a temporary weights folder under the registry's file names and in
the format those names say (no network, no real weights needed). Each model is loaded once per module."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from PIL import Image as PILImage

from retrieval.encoders import registry
from retrieval.encoders.base import TextReading
from retrieval.encoders.catalog import DEEPLABV3_MOBILENET, DEEPLABV3_RESNET101, LRASPP_MOBILENET, OPENCLIP_VIT_B_32

CLIP_KEY, DEEPLAB_KEY = OPENCLIP_VIT_B_32.key, DEEPLABV3_RESNET101.key


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """Save as the file name says: open_clip reads `.safetensors` with safetensors, anything else with torch.load."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """A weights folder holding every standard-profile file; returns it and a few saved tensors to compare."""
    import open_clip

    from retrieval.encoders.deeplab import build_model

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    clip, _, _ = open_clip.create_model_and_transforms(OPENCLIP_VIT_B_32.options["architecture"], pretrained=None,
                                                      force_quick_gelu=True)
    state = clip.state_dict()
    saved = {"visual.proj": state["visual.proj"].clone(), "text_projection": state["text_projection"].clone()}
    save_state(state, folder / OPENCLIP_VIT_B_32.weights[0].filename)
    del clip, state
    deeplab_state = build_model().state_dict()
    saved["classifier.4.weight"] = deeplab_state["classifier.4.weight"].clone()
    torch.save(deeplab_state, folder / DEEPLABV3_RESNET101.weights[0].filename)
    del deeplab_state
    shipped = registry.MODELS[registry.PROFILE_MODELS["standard"]["content"]].weights[0]
    shutil.copy(shipped.path(), folder / shipped.filename)  # our autoencoder serves both profiles
    return folder, saved


@pytest.fixture(scope="module")
def standard(weights_dir):
    folder, _ = weights_dir
    # torch: these tests are about loading the files into torch's networks (OpenVINO: test_openvino_runtime.py)
    with override_settings(IMAGINAITION_WEIGHTS_DIR=folder, IMAGINAITION_MODEL_PROFILE="auto", IMAGINAITION_PRECISION="fp32",
                           IMAGINAITION_SEGMENTER_RUNTIME="torch"):
        registry.unload_all()
        yield registry
    registry.unload_all()


@pytest.fixture(scope="module")
def clip(standard):
    return standard.get_model(CLIP_KEY)


@pytest.fixture(scope="module")
def segmenter(standard):
    return standard.get_model(DEEPLAB_KEY)


def pictures():
    rng = np.random.default_rng(0)
    return [PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((60, 80), (90, 50))]


def count_forward_passes(module: torch.nn.Module, calls: list[int]):
    return module.register_forward_hook(lambda _module, args, _out: calls.append(args[0].shape[0]))


def test_auto_profile_is_standard_when_every_standard_file_is_present(standard):
    assert standard.active_profile() == "standard"
    assert standard.active_models().semantic == CLIP_KEY and standard.active_models().segmenter == DEEPLAB_KEY


@pytest.mark.parametrize("missing", [CLIP_KEY, DEEPLAB_KEY])
def test_auto_profile_is_offline_when_one_file_is_missing(weights_dir, settings, tmp_path, missing):
    folder, _ = weights_dir
    skipped = registry.MODELS[missing].weights[0].filename
    for path in folder.iterdir():
        if path.name != skipped:
            os.symlink(path, tmp_path / path.name)
    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path
    settings.IMAGINAITION_MODEL_PROFILE = "auto"
    assert registry.active_profile() == "offline"


def test_openclip_loads_the_registry_file_with_quickgelu(clip, weights_dir):
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transformer import QuickGELU

    _, saved = weights_dir
    assert torch.equal(clip.model.visual.proj, saved["visual.proj"])  # the file's weights, not a fresh init
    assert torch.equal(clip.model.text_projection, saved["text_projection"])
    assert any(isinstance(module, QuickGELU) for module in clip.model.modules())  # what OpenAI trained with
    assert isinstance(clip.tokenizer, SimpleTokenizer)  # bundled vocabulary: works with HF_HUB_OFFLINE=1
    assert clip.key == CLIP_KEY and clip.dim == 512 and not clip.model.training


def test_openclip_image_and_text_towers(clip):
    calls: list[int] = []
    handle = count_forward_passes(clip.model.visual, calls)
    try:
        images = clip.encode_images(pictures() * 2)
        single = clip.encode_images(pictures()[:1])
    finally:
        handle.remove()
    texts = clip.encode_texts(["a photo of a cat", "a rocket " * 100])  # the long one is truncated, not refused
    assert calls == [4, 1]  # one visual forward pass per batch
    for vectors, rows in ((images, 4), (texts, 2)):
        assert vectors.shape == (rows, 512) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(images[0], single[0], atol=1e-5)  # batching does not change a row
    np.testing.assert_allclose(images[0], images[2], atol=1e-6)
    assert clip.encode_images([]).shape == (0, 512) and clip.encode_texts([]).shape == (0, 512)


def test_openclip_says_how_much_of_a_text_it_reads(clip):
    # Byte-level BPE: nothing is unknown, an emoji included; the 77-token context less its two marks.
    assert clip.read_text("a photo of a cat") == TextReading(tokens=5, unknown=0, limit=75)
    assert clip.read_text("🚀").unknown == 0
    long = clip.read_text("a rocket " * 100)
    assert long is not None and long.tokens == 200 > long.limit


def test_deeplab_loads_the_registry_file(segmenter, weights_dir):
    _, saved = weights_dir
    assert torch.equal(segmenter.model.classifier[4].weight, saved["classifier.4.weight"])
    # The official checkpoint carries the auxiliary head's keys (a strict load needs them); the head
    # itself is dropped after loading: it only costs time at inference.
    assert "aux_classifier.0.weight" in torch.load(weights_dir[0] / DEEPLABV3_RESNET101.weights[0].filename,
                                                   map_location="cpu", weights_only=True)
    assert segmenter.model.aux_classifier is None and set(segmenter.model(torch.zeros(1, 3, 64, 64))) == {"out"}
    assert segmenter.key == DEEPLAB_KEY and not segmenter.model.training


def test_deeplab_masks_are_probabilities_at_each_image_size(segmenter, monkeypatch):
    from retrieval.encoders import deeplab

    monkeypatch.setattr(deeplab, "MIN_AREA", 0.0)  # random weights: report every class that wins a pixel
    calls: list[int] = []
    handle = count_forward_passes(segmenter.model, calls)
    try:
        results = segmenter.segment(pictures())
        assert calls == [1, 1]  # on a CPU, one picture per forward pass (faster there)
        monkeypatch.setattr(segmenter, "pictures_per_pass", deeplab.ACCELERATOR_PICTURES_PER_PASS)  # as on an accelerator
        batched = segmenter.segment(pictures())
    finally:
        handle.remove()
    assert calls == [1, 1, 2]  # an accelerator: one forward pass for the batch
    for one_by_one, together in zip(results, batched, strict=True):
        assert [m.label for m in one_by_one] == [m.label for m in together]
        # Random weights give logits in the thousands: float32 rounding of a batched pass moves them by ~1e-4.
        assert all(np.allclose(a.probability, b.probability, atol=1e-3) for a, b in zip(one_by_one, together))
    assert len(results) == 2 and all(results)
    for picture, masks in zip(pictures(), results, strict=True):
        for mask in masks:
            assert mask.probability.shape == (picture.height, picture.width)
            assert mask.probability.dtype == np.float32
            assert 0.0 <= mask.probability.min() and mask.probability.max() <= 1.0
            assert 1 <= mask.class_index <= 20 and mask.label == deeplab.VOC_LABELS[mask.class_index]
    assert segmenter.segment([]) == []


@pytest.mark.parametrize("spec", [DEEPLABV3_MOBILENET, LRASPP_MOBILENET], ids=lambda spec: spec.key)
def test_a_cheaper_segmenter_chosen_by_setting_loads_its_file_and_segments(weights_dir, settings, spec, monkeypatch):
    from retrieval.encoders import deeplab

    folder, _ = weights_dir
    torch.manual_seed(1)
    state = deeplab.build_model(spec.options["architecture"]).state_dict()
    for name, tensor in state.items():
        if name.startswith("classifier.") and tensor.dim() and tensor.shape[0] == len(deeplab.VOC_LABELS):
            # A random head is unsure of every pixel (about 1/21 each), so no label would cover one: a
            # sharpened head (weights and biases, which are all a dead random backbone leaves) gives masks.
            tensor.mul_(1000.0)
    torch.save(state, folder / spec.weights[0].filename)
    settings.IMAGINAITION_WEIGHTS_DIR = folder
    settings.IMAGINAITION_MODEL_PROFILE = "auto"
    settings.IMAGINAITION_SEGMENTER = spec.key
    models = registry.active_models()
    assert (models.profile, models.segmenter) == ("standard", spec.key)  # every standard file is present
    assert registry.MODELS[spec.key].weights_present()

    monkeypatch.setattr(deeplab, "MIN_AREA", 0.0)  # random weights: report every class that wins a pixel
    segmenter = deeplab.load(registry.MODELS[spec.key])
    # The file's network, its batch norms folded into the convolutions: the same outputs.
    from_file = deeplab.build_model(spec.options["architecture"]).eval()
    from_file.load_state_dict(state)
    example = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(segmenter.model(example)["out"], from_file(example)["out"], rtol=1e-4, atol=1e-4)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in segmenter.model.modules())
    results = segmenter.segment(pictures())
    assert len(results) == 2 and all(results)
    for picture, masks in zip(pictures(), results, strict=True):
        assert all(mask.probability.shape == (picture.height, picture.width) for mask in masks)
        assert all(mask.label == deeplab.VOC_LABELS[mask.class_index] for mask in masks)

    (folder / spec.weights[0].filename).unlink()  # the chosen segmenter's file is part of "standard" now
    assert registry.active_models().profile == "offline"


def test_an_unknown_segmenter_setting_is_refused_naming_the_choices(settings):
    settings.IMAGINAITION_SEGMENTER = "torchvision/fcn_resnet50"
    with pytest.raises(ImproperlyConfigured, match="lraspp_mobilenet_v3_large"):
        registry.active_models()


def test_only_labels_winning_the_minimum_area_get_a_mask():
    from retrieval.encoders.deeplab import MIN_AREA, VOC_LABELS, masks_at_size

    logits = torch.zeros(21, 100, 100)
    logits[0] = 5.0  # background everywhere ...
    logits[8, :10, :] = 10.0  # ... but a cat on 10 % of the pixels
    logits[12, 50, :int(MIN_AREA * 10_000) - 1] = 10.0  # and a dog just under the minimum area
    masks = masks_at_size(logits.softmax(dim=0), (37, 64))
    assert [(m.label, m.class_index) for m in masks] == [("cat", 8)] and VOC_LABELS[8] == "cat"
    assert masks[0].probability.shape == (37, 64)
    assert masks[0].probability[0, 0] > 0.99 and masks[0].probability[-1, -1] < 0.01


def test_a_label_that_wins_pixels_without_being_more_likely_than_not_anywhere_gets_no_mask():
    from retrieval.encoders.deeplab import masks_at_size

    logits = torch.zeros(21, 100, 100)
    logits[8] = 1.0  # cat wins every pixel, at about 0.36: background and dog share the rest
    logits[0] = logits[12] = 0.6
    logits[12, :20, :] = 5.0  # and a dog, sure of itself, on the top fifth
    masks = masks_at_size(logits.softmax(dim=0), (37, 64))
    assert [m.label for m in masks] == ["dog"]
    assert masks[0].area_fraction == pytest.approx(0.2, abs=0.05)


def test_voc_labels_match_the_offline_segmenter():
    from retrieval.encoders.deeplab import VOC_LABELS
    from retrieval.encoders.imagenet_voc import VOC_INDEX

    assert len(VOC_LABELS) == 21 and VOC_LABELS[1] == "aeroplane" and VOC_LABELS[20] == "tvmonitor"
    assert {label: index for index, label in enumerate(VOC_LABELS) if index} == VOC_INDEX


def test_a_missing_weight_file_is_a_clear_error(settings, tmp_path):
    from retrieval.encoders import deeplab, openclip

    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path
    for load, spec in ((openclip.load, OPENCLIP_VIT_B_32), (deeplab.load, DEEPLABV3_RESNET101)):
        with pytest.raises(FileNotFoundError, match="fetch_weights"):
            load(spec)


def test_a_safetensors_file_is_read_straight_into_the_model_or_refused_when_it_does_not_fit(tmp_path):
    from safetensors.torch import save_file

    from retrieval.encoders.safetensors_io import safetensors_read_into

    torch.manual_seed(3)
    source = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    state = source.state_dict()
    state["0.weight"] = state["0.weight"].half()  # a file may store another dtype: converted on the way in
    save_file(state, str(tmp_path / "m.safetensors"))
    target = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    before = target[0].weight.data_ptr()
    safetensors_read_into(target, tmp_path / "m.safetensors")
    assert target[0].weight.data_ptr() == before  # filled in place, not replaced
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, state[name].to(tensor.dtype)), name
    with pytest.raises(RuntimeError, match="missing"):
        safetensors_read_into(torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "m.safetensors")
    save_file({**state, "0.weight": torch.zeros(3, 5)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(RuntimeError, match="shape"):
        safetensors_read_into(target, tmp_path / "bad.safetensors")


def test_a_large_embedding_table_can_stay_in_the_file_and_reads_the_same(tmp_path):
    """`mapped`: the table becomes a private mapping of the file's bytes (only the rows a pass reads
    become resident): the same values and lookups as a copied one, and a write to it never reaches
    the file. Tables below the size limit and other parameters are copied as before."""
    from safetensors.torch import save_file

    from retrieval.encoders.safetensors_io import large_embedding_tables, safetensors_read_into

    def build() -> torch.nn.Module:
        return torch.nn.ModuleDict({"tokens": torch.nn.Embedding(5000, 64), "small": torch.nn.Embedding(10, 64),
                                    "head": torch.nn.Linear(64, 8)})

    torch.manual_seed(4)
    source = build()
    save_file(source.state_dict(), str(tmp_path / "m.safetensors"))
    file_bytes = (tmp_path / "m.safetensors").read_bytes()
    target = build()
    mapped = large_embedding_tables(target, min_bytes=1 << 20)
    assert mapped == {"tokens.weight"}  # 5000 × 64 × 4 B = 1.2 MiB; "small" stays below the limit
    head_before, tokens_before = target["head"].weight.data_ptr(), target["tokens"].weight.data_ptr()
    safetensors_read_into(target, tmp_path / "m.safetensors", mapped=mapped)
    assert target["head"].weight.data_ptr() == head_before  # copied in place as before
    assert target["tokens"].weight.data_ptr() != tokens_before  # replaced: over the mapping
    assert not target["tokens"].weight.requires_grad
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name
    tokens = torch.tensor([[3, 4999, 17]])
    assert torch.equal(target["tokens"](tokens), source["tokens"](tokens))
    with torch.no_grad():
        target["tokens"].weight[3] += 1  # copy-on-write: this process's page only
    assert (tmp_path / "m.safetensors").read_bytes() == file_bytes


ACCELERATORS = [torch.device("cuda")] if torch.cuda.is_available() else []
WORDS = ["a cat on a sofa", "a cup of coffee", "a rocket on its launch pad"]


@pytest.mark.gpu
@pytest.mark.parametrize("device", [torch.device("cpu"), *ACCELERATORS], ids=str)
def test_standard_models_run_on_the_device_and_keep_half_precision_only_where_it_agrees(weights_dir, device):
    """CLIP ViT-B-32 and DeepLabV3-ResNet101 (random weights: the architectures and the code are what is
    checked) placed on the device; the first batch decides the precision, later batches agree with it;
    on an accelerator the fp32 results also agree with the CPU's. On CPU-only machines the same checks
    run on the CPU (bf16 tried for the segmenter where the CPU has native bf16)."""
    from skimage import data as skdata

    from retrieval.encoders.precision import MASK_IOU_BAR, VECTOR_COSINE_BAR, masks_agreement, vectors_agreement

    folder, _ = weights_dir
    photos = [PILImage.fromarray(getattr(skdata, name)()).convert("RGB") for name in ("chelsea", "coffee")]
    profile = dict(IMAGINAITION_WEIGHTS_DIR=folder, IMAGINAITION_MODEL_PROFILE="standard",
                   IMAGINAITION_SEGMENTER_RUNTIME="torch")
    registry.unload_all()
    try:
        with override_settings(**profile, IMAGINAITION_DEVICE=device.type, IMAGINAITION_PRECISION="auto"):
            clip, segmenter = registry.get_model(CLIP_KEY), registry.get_model(DEEPLAB_KEY)
            placed = {p.device.type for model in (clip.model, segmenter.model) for p in model.parameters()}
            assert placed == {device.type}
            vectors, masks = clip.encode_images(photos), segmenter.segment(photos)  # the deciding batch: fp32
            texts = clip.encode_texts(WORDS)  # the text tower decides on its own first batch
            for choice in (clip.image_precision, clip.text_precision, segmenter.precision):
                assert choice.decided
                tried = choice.measured is not None
                assert (choice.dtype is not None) == (tried and choice.measured >= choice.bar), choice.describe()
            assert vectors_agreement(vectors, clip.encode_images(photos)) >= VECTOR_COSINE_BAR
            assert vectors_agreement(texts, clip.encode_texts(WORDS)) >= VECTOR_COSINE_BAR
            assert masks_agreement(masks, segmenter.segment(photos)) >= MASK_IOU_BAR
        registry.unload_all()
        assert all(masks), "random weights still find labels: the comparisons compared masks"
        if device.type != "cpu":
            with override_settings(**profile, IMAGINAITION_DEVICE="cpu", IMAGINAITION_PRECISION="fp32"):
                cpu_clip = registry.get_model(CLIP_KEY)
                on_cpu = cpu_clip.encode_images(photos), registry.get_model(DEEPLAB_KEY).segment(photos)
                cpu_texts = cpu_clip.encode_texts(WORDS)
            assert vectors_agreement(on_cpu[0], vectors) >= VECTOR_COSINE_BAR
            assert vectors_agreement(cpu_texts, texts) >= VECTOR_COSINE_BAR
            assert masks_agreement(on_cpu[1], masks) >= MASK_IOU_BAR
    finally:
        registry.unload_all()
