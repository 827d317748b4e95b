"""DeepLabV3 with a ResNet-101 backbone (torchvision, PASCAL-VOC labels): the standard segmenter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from .base import Segmenter, SoftMask

VOC_LABELS = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
              "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
              "train", "tvmonitor")
INPUT_SIZE = 520  # torchvision's evaluation size for these weights
MIN_AREA = 0.005  # a label is reported when it wins at least 0.5 % of the pixels
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DeepLabSegmenter(Segmenter):
    def __init__(self, *, key: str, model: torch.nn.Module):
        self.key = key
        self.model = model.eval()

    def segment(self, images: Sequence[PILImage.Image]) -> list[list[SoftMask]]:
        if not images:
            return []
        # One fixed size for the whole batch, so it is one forward pass; masks go back to each size.
        arrays = [np.asarray(image.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), PILImage.Resampling.BILINEAR),
                             dtype=np.float32) / 255.0 for image in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        batch = (batch - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        with torch.inference_mode():
            probabilities = self.model(batch)["out"].softmax(dim=1)
        results = []
        for image, probability in zip(images, probabilities, strict=True):
            resized = F.interpolate(probability[None], size=(image.height, image.width), mode="bilinear",
                                    align_corners=False)[0]
            winners = resized.argmax(dim=0)
            masks = []
            for class_index in range(1, len(VOC_LABELS)):
                if (winners == class_index).float().mean().item() >= MIN_AREA:
                    masks.append(SoftMask(label=VOC_LABELS[class_index], class_index=class_index,
                                          probability=resized[class_index].numpy().astype(np.float32)))
            results.append(masks)
        return results


def build_model() -> torch.nn.Module:
    from torchvision.models.segmentation import deeplabv3_resnet101

    # weights=None AND weights_backbone=None: otherwise torchvision downloads the backbone.
    return deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=len(VOC_LABELS), aux_loss=True)


def load(spec) -> DeepLabSegmenter:
    model = build_model()
    model.load_state_dict(torch.load(spec.weight_path(spec.weights[0].filename), map_location="cpu",
                                     weights_only=True))
    return DeepLabSegmenter(key=spec.key, model=model)
