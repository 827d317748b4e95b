"""Segmenters on OpenVINO (IMAGINAITION_SEGMENTER_RUNTIME=openvino): converted once per weight file, checked
against torch fp32 on the first picture, kept only where the masks agree, and torch whenever anything
about OpenVINO fails.

Real conversions of torchvision's networks with random weights saved under the registry's file names:
LR-ASPP (a few seconds) for the behaviour, the ResNet-101 once for the standard segmenter itself."""

import logging

import numpy as np
import pytest
import torch
from django.core.exceptions import ImproperlyConfigured
from PIL import Image as PILImage

from retrieval.encoders import deeplab, openvino_runtime, registry
from retrieval.encoders.catalog import DEEPLABV3_RESNET101, LRASPP_MOBILENET
from retrieval.encoders.precision import mask_ious


def photos() -> list[PILImage.Image]:
    from skimage import data as skdata

    return [PILImage.fromarray(skdata.astronaut()), PILImage.fromarray(skdata.chelsea()),
            PILImage.fromarray(skdata.coffee())]


def decisive_weights(architecture: str, seed: int) -> dict[str, torch.Tensor]:
    """Random weights whose class scores are far apart, so that masks at probability 0.5 are large regions
    to compare, as a trained network's are: the last layers (the logits are linear in them) scaled to
    scores of standard deviation 5 on a photo."""
    torch.manual_seed(seed)
    model = deeplab.build_model(architecture).eval()
    with torch.inference_mode():
        scale = 5.0 / float(model(deeplab.preprocess(photos()[:1]))["out"].std())
    state = model.state_dict()
    for name, tensor in state.items():
        if name.startswith("classifier.") and tensor.shape[:1] == (len(deeplab.VOC_LABELS),):
            tensor.mul_(scale)  # the 21-class layers' weights and biases
    return state


@pytest.fixture
def lraspp(settings, tmp_path, monkeypatch):
    """LR-ASPP's file in a weights folder, the registry set to OpenVINO, and every class that wins a pixel
    reported (random weights spread the pixels over many labels)."""
    torch.save(decisive_weights(LRASPP_MOBILENET.options["architecture"], seed=2),
               tmp_path / LRASPP_MOBILENET.weights[0].filename)
    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path
    settings.IMAGINAITION_MODEL_CACHE_DIR = tmp_path / "models"
    settings.IMAGINAITION_SEGMENTER_RUNTIME = "openvino"
    monkeypatch.setattr(deeplab, "MIN_AREA", 0.0)
    registry.unload_all()
    yield registry.MODELS[LRASPP_MOBILENET.key]
    registry.unload_all()


def torch_masks(spec, pictures, settings):
    settings.IMAGINAITION_SEGMENTER_RUNTIME = "torch"
    reference = deeplab.load(spec)
    assert reference.openvino is None
    return reference.segment(pictures)


def test_the_runtime_setting_is_resolved_or_refused_with_the_reason(settings):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert settings.IMAGINAITION_SEGMENTER_RUNTIME == "torch"  # the default: faster for this machine's workers
    assert openvino_runtime.segmenter_runtime(cpu) == "torch" and openvino_runtime.segmenter_runtime(cuda) == "torch"
    settings.IMAGINAITION_SEGMENTER_RUNTIME = "openvino"
    assert openvino_runtime.segmenter_runtime(cpu) == "openvino"
    with pytest.raises(ImproperlyConfigured, match="runs segmenters on the CPU"):
        openvino_runtime.segmenter_runtime(cuda)
    settings.IMAGINAITION_SEGMENTER_RUNTIME = "onnx"
    with pytest.raises(ImproperlyConfigured, match="torch, openvino"):
        openvino_runtime.segmenter_runtime(cpu)


def test_openvino_segments_like_torch_after_its_first_batch_agreed(lraspp, settings):
    pictures = photos()
    reference = torch_masks(lraspp, pictures, settings)
    settings.IMAGINAITION_SEGMENTER_RUNTIME = "openvino"

    segmenter = deeplab.load(lraspp)
    choice = segmenter.openvino
    assert choice is not None and not choice.decided and choice.candidates == ["f32"]  # no native bf16 here
    converted = choice.path
    assert converted.is_file() and converted.with_suffix(".bin").is_file()
    assert converted.is_relative_to(settings.IMAGINAITION_MODEL_CACHE_DIR)

    first = segmenter.segment(pictures)  # the first picture decides (torch's masks), OpenVINO does the rest
    assert choice.decided and choice.chosen is not None and choice.measured["f32"] >= 0.98
    assert segmenter.model is None  # the torch network is released: OpenVINO holds the weights
    later = segmenter.segment(pictures)  # OpenVINO alone now
    for masks in (first, later):
        assert [[m.label for m in picture] for picture in masks] == [[m.label for m in picture] for picture in reference]
        ious, unmatched = mask_ious(reference, masks)
        assert unmatched == 0 and len(ious) >= 3 and min(ious) >= 0.98
        for picture, picture_masks in zip(pictures, masks, strict=True):
            assert all(m.probability.shape == (picture.height, picture.width) for m in picture_masks)
    probabilities = np.concatenate([m.probability.ravel() for picture in later for m in picture])
    expected = np.concatenate([m.probability.ravel() for picture in reference for m in picture])
    assert np.abs(probabilities - expected).max() < 1e-2  # the same network, not merely the same argmax
    assert segmenter.segment([]) == []
    assert "openvino f32" in choice.describe()


def test_the_converted_network_is_reused_by_later_processes(lraspp, settings, monkeypatch):
    first = deeplab.load(lraspp).openvino
    assert first is not None
    stamp = first.path.stat().st_mtime_ns

    import openvino

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    second = deeplab.load(lraspp)
    assert second.openvino is not None and second.openvino.path == first.path
    assert first.path.stat().st_mtime_ns == stamp
    left = sorted(p.name for p in first.path.parent.parent.iterdir())
    assert left == sorted([first.path.parent.name, ".converting.lock"])  # no scratch copy left behind

    # New weights in the same file name: a new conversion, beside the old one.
    torch.save(decisive_weights(LRASPP_MOBILENET.options["architecture"], seed=3), lraspp.weight_path())
    monkeypatch.undo()
    settings.IMAGINAITION_SEGMENTER_RUNTIME = "openvino"
    third = deeplab.load(lraspp).openvino
    assert third is not None and third.path != first.path and third.path.is_file()


def test_masks_that_disagree_keep_torch_for_good(lraspp, settings, monkeypatch, caplog):
    pictures = photos()
    monkeypatch.setattr(deeplab, "MASK_IOU_BAR", 1.01)  # nothing can agree this well: OpenVINO is refused
    segmenter = deeplab.load(lraspp)
    calls: list[int] = []
    with caplog.at_level(logging.INFO, logger="retrieval.encoders.openvino_runtime"):
        first = segmenter.segment(pictures)
    choice = segmenter.openvino
    assert choice is not None and choice.decided and choice.chosen is None and "f32" in choice.measured
    assert segmenter.model is not None  # torch keeps segmenting
    handle = segmenter.model.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    try:
        second = segmenter.segment(pictures)
    finally:
        handle.remove()
    assert calls == [1, 1, 1]  # torch, one picture per pass
    assert [[m.label for m in p] for p in first] == [[m.label for m in p] for p in second]
    assert "segments with torch fp32 (openvino f32 vs torch fp32" in caplog.text


def test_a_conversion_that_fails_leaves_torch_segmenting(lraspp, monkeypatch, caplog):
    import openvino

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(openvino, "convert_model", broken)
    with caplog.at_level(logging.ERROR, logger="retrieval.encoders.openvino_runtime"):
        segmenter = deeplab.load(lraspp)
    assert segmenter.openvino is None and segmenter.model is not None
    assert "conversion for OpenVINO failed; segmenting with torch" in caplog.text
    assert all(segmenter.segment(photos()))
    assert not any(lraspp.weight_path().parent.glob("*.xml"))


def test_the_status_names_the_runtime_each_segmenter_uses(lraspp, settings):
    settings.IMAGINAITION_SEGMENTER = LRASPP_MOBILENET.key
    segmenter = registry.get_model(LRASPP_MOBILENET.key)
    assert "to be checked" in registry.loaded_precisions()[LRASPP_MOBILENET.key]
    segmenter.segment(photos()[:1])
    assert registry.loaded_precisions()[LRASPP_MOBILENET.key].startswith("openvino f32 (openvino f32 vs torch fp32")


def test_the_standard_segmenter_converts_and_agrees_with_torch(settings, tmp_path, monkeypatch):
    """DeepLabV3-ResNet101 itself, random weights of its real shapes: the standard profile's segmenter."""
    torch.save(decisive_weights("deeplabv3_resnet101", seed=0), tmp_path / DEEPLABV3_RESNET101.weights[0].filename)
    settings.IMAGINAITION_WEIGHTS_DIR = tmp_path
    settings.IMAGINAITION_MODEL_CACHE_DIR = tmp_path / "models"
    monkeypatch.setattr(deeplab, "MIN_AREA", 0.0)
    pictures = photos()[:1]
    reference = torch_masks(DEEPLABV3_RESNET101, pictures, settings)
    settings.IMAGINAITION_SEGMENTER_RUNTIME = "openvino"
    segmenter = deeplab.load(DEEPLABV3_RESNET101)
    segmenter.segment(pictures)
    assert segmenter.openvino is not None and segmenter.openvino.chosen is not None
    masks = segmenter.segment(pictures)
    ious, unmatched = mask_ious(reference, masks)
    assert unmatched == 0 and ious and min(ious) >= 0.98


def test_processes_loading_at_once_convert_only_once(lraspp, monkeypatch):
    """Workers starting together: one converts, the others wait for its file (threads here: the lock is
    per open file, as between processes)."""
    import threading

    import openvino

    conversions: list[int] = []
    real_convert = openvino.convert_model

    def counted(*args, **kwargs):
        conversions.append(1)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(openvino, "convert_model", counted)
    model = deeplab.build_model(LRASPP_MOBILENET.options["architecture"]).eval()
    model.load_state_dict(torch.load(lraspp.weight_path(), weights_only=True))
    paths: list = []

    def load() -> None:
        paths.append(openvino_runtime.convert(model, key=lraspp.key, weights=lraspp.weight_path(),
                                              input_size=deeplab.INPUT_SIZE))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(paths) == 3 and len(set(paths)) == 1 and paths[0].is_file()
    assert conversions == [1]
