"""torchvision's semantic segmentation models with PASCAL-VOC labels: DeepLabV3 with a ResNet-101 backbone
(the standard segmenter, as the original app) and the cheaper MobileNetV3 ones (IMAGINAITION_SEGMENTER).

The checkpoints are torchvision's COCO_WITH_VOC_LABELS_V1 files: plain state dicts. The DeepLabV3 ones
carry `aux_classifier.*` keys, so those models are built with `aux_loss=True` exactly as torchvision builds
them for those weights; LR-ASPP has no auxiliary head. All take the same 520x520 input and 21 labels.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torchvision.models.segmentation import (DeepLabV3_ResNet101_Weights, deeplabv3_mobilenet_v3_large,
                                             deeplabv3_resnet101, lraspp_mobilenet_v3_large)

from .base import Segmenter, SoftMask
from .devices import conv_memory_format, model_device
from .folding import fold_batch_norms
from .openvino_runtime import Logits, OpenVinoChoice, openvino_choice, segmenter_runtime
from .precision import MASK_IOU_BAR, PrecisionChoice, masks_agreement

if TYPE_CHECKING:
    from .specs import ModelSpec

# torchvision's spelling ("__background__", "aeroplane", ..., "tvmonitor"); reading meta downloads nothing.
VOC_LABELS: tuple[str, ...] = tuple(DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"])
INPUT_SIZE = 520  # torchvision's evaluation size for these weights; one square size lets a batch be one pass
# A label gets a mask when it is the most likely class on at least this fraction of the image's pixels:
# below it, masks are speckles of noise rather than objects.
MIN_AREA = 0.005
ACCELERATOR_PICTURES_PER_PASS = 16
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics the backbone was trained on


class DeepLabSegmenter(Segmenter):
    def __init__(self, *, key: str, model: torch.nn.Module, device: torch.device | None = None,
                 weights: Path | None = None, fold_norms: bool = True,
                 memory_format: torch.memory_format | None = None) -> None:
        """`weights`: the file `model` was loaded from; given, the segmenter runs on OpenVINO when
        IMAGINAITION_SEGMENTER_RUNTIME says so (the file names the converted copy). `fold_norms`: fold
        the batch norms into the convolutions; `memory_format`: the layout of weights and inputs (by
        default the device's, channels-last on a CPU). Both keep the masks (bench.segmentation)."""
        self.key = key
        self.device = device or torch.device("cpu")
        self.memory_format = memory_format or conv_memory_format(self.device)
        model.eval()
        # The auxiliary head (training only) runs on every forward pass when present, and its output is
        # never read: drop it (bench.segmentation measures the saving; masks are unchanged).
        if getattr(model, "aux_classifier", None) is not None:
            model.aux_classifier = None  # type: ignore[assignment]  # torchvision's models accept None
        if fold_norms:
            fold_batch_norms(model)
        self.model: torch.nn.Module | None = model.to(self.device).to(memory_format=self.memory_format)
        # On a CPU one picture per forward pass is faster than a batch (measured: bench.segmentation). On
        # an accelerator, passes of at most ACCELERATOR_PICTURES_PER_PASS: the activations at 520² grow
        # with the pass, and the pipeline's batch there is larger (devices.DEVICE_BATCH_SIZES).
        self.pictures_per_pass = 1 if self.device.type == "cpu" else ACCELERATOR_PICTURES_PER_PASS
        self.openvino: OpenVinoChoice | None = None
        if weights is not None and segmenter_runtime(self.device) == "openvino":
            self.openvino = openvino_choice(model, key=key, weights=weights, input_size=INPUT_SIZE,
                                            agreement=masks_agreement, bar=MASK_IOU_BAR)
        # Under OpenVINO torch is the first picture's fp32 reference: no half precision of its own.
        self.precision: PrecisionChoice[list[list[SoftMask]]] = (
            PrecisionChoice.for_masks(key, self.device) if self.openvino is None
            else PrecisionChoice.fp32(key, self.device, agreement=masks_agreement, bar=MASK_IOU_BAR))
        self._decide_lock = threading.Lock()

    def segment(self, images: Sequence[PILImage.Image]) -> list[list[SoftMask]]:
        if not images:
            return []
        batch = preprocess(images)  # built on the CPU, moved once per batch
        choice = self.openvino
        if choice is not None and not choice.decided:
            with self._decide_lock:
                if not choice.decided:  # the first picture decides (another thread's may have meanwhile)
                    reference = self._segment_with(self._torch_logits, images[:1], batch[:1])
                    choice.decide(reference, lambda logits: self._segment_with(logits, images[:1], batch[:1]))
                    if choice.chosen is not None:
                        self.model = None  # OpenVINO holds its own copy of the weights
                    return reference + self._segment_decided(images[1:], batch[1:])
        return self._segment_decided(images, batch)

    def _segment_decided(self, images: Sequence[PILImage.Image], batch: torch.Tensor) -> list[list[SoftMask]]:
        """With the runtime the first picture chose (torch under its precision choice, or OpenVINO)."""
        if not images:
            return []
        if self.openvino is not None and self.openvino.chosen is not None:
            return self._segment_with(self.openvino.chosen, images, batch)
        return self.precision.run(lambda: self._segment_with(self._torch_logits, images, batch))

    def _torch_logits(self, pictures: torch.Tensor) -> torch.Tensor:
        assert self.model is not None, "the torch network was released for OpenVINO"
        return self.model(pictures.to(self.device).contiguous(memory_format=self.memory_format))["out"]

    def _segment_with(self, logits: Logits, images: Sequence[PILImage.Image],
                      batch: torch.Tensor) -> list[list[SoftMask]]:
        step = self.pictures_per_pass or len(images)
        masks: list[list[SoftMask]] = []
        with torch.inference_mode():
            for start in range(0, len(images), step):
                # Masks come back to the CPU at their final size.
                probabilities = logits(batch[start:start + step]).softmax(dim=1)
                masks += [masks_at_size(probability, (image.height, image.width))
                          for image, probability in zip(images[start:start + step], probabilities, strict=True)]
        return masks


def preprocess(images: Sequence[PILImage.Image]) -> torch.Tensor:
    """(n, 3, 520, 520) ImageNet-normalized. Squashing (not cropping) keeps every pixel covered by a mask."""
    arrays = [np.asarray(image.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), PILImage.Resampling.BILINEAR),
                         dtype=np.float32) / 255.0 for image in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (batch - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def masks_at_size(probability: torch.Tensor, size: tuple[int, int]) -> list[SoftMask]:
    """Masks for the labels that win at least MIN_AREA of the pixels, upsampled to `size` (H, W), those
    that cover a pixel (SoftMask.covers_a_pixel).

    Winners are counted at the network's resolution (a squash keeps area fractions) and only their channels
    are upsampled, so a 12-megapixel photo never holds 21 full-size channels at once.
    """
    winners = probability.argmax(dim=0)
    shares = torch.bincount(winners.flatten(), minlength=len(VOC_LABELS)).float() / winners.numel()
    masks = []
    for class_index in range(1, len(VOC_LABELS)):  # 0 is background
        if shares[class_index].item() >= MIN_AREA:
            channel = F.interpolate(probability[None, class_index:class_index + 1], size=size, mode="bilinear",
                                    align_corners=False)[0, 0]
            masks.append(SoftMask(label=VOC_LABELS[class_index], class_index=class_index,
                                  probability=channel.clamp_(0.0, 1.0).float().cpu().numpy()))
    # A label can win pixels at under 0.5 (the rest split among others), and upsampling can lower a peak.
    return [mask for mask in masks if mask.covers_a_pixel]


# weights=None AND weights_backbone=None: otherwise torchvision downloads the ImageNet backbone.
ARCHITECTURES: dict[str, Callable[[], torch.nn.Module]] = {
    "deeplabv3_resnet101": lambda: deeplabv3_resnet101(weights=None, weights_backbone=None,
                                                       num_classes=len(VOC_LABELS), aux_loss=True),
    "deeplabv3_mobilenet_v3_large": lambda: deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                         num_classes=len(VOC_LABELS), aux_loss=True),
    "lraspp_mobilenet_v3_large": lambda: lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                   num_classes=len(VOC_LABELS)),
}


def build_model(architecture: str = "deeplabv3_resnet101") -> torch.nn.Module:
    """The architecture with random weights (load a checkpoint into it)."""
    return ARCHITECTURES[architecture]()


def load(spec: ModelSpec) -> DeepLabSegmenter:
    """Build the model from the registry's weight file. FileNotFoundError when it has not been fetched."""
    path = spec.weight_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python manage.py fetch_weights` (see weights/README.md)")
    model = build_model(spec.options.get("architecture", "deeplabv3_resnet101"))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return DeepLabSegmenter(key=spec.key, model=model, device=model_device(), weights=path)
