"""Our content encoder: the original product's convolutional autoencoder.

Encoder: blocks of 3×3 convolution + ReLU + BatchNorm with MaxPool downsampling (64 → 32 → 16);
decoder: transposed convolutions upsampling back to 64×64. The input is a 3×64×64 image normalized
with the training set's per-channel mean/std (stored in the checkpoint); the code, 4×16×16 = 1024
values flattened and L1-normalized, is the content embedding. The whole image is resized to 64×64
(aspect ratio not kept): the embedding describes the whole picture's colours and layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn

from retrieval.spaces import Space

from .base import ImageEncoder, l1_normalize
from .devices import model_device
from .precision import PrecisionChoice

if TYPE_CHECKING:
    from .specs import ModelSpec

INPUT_SIZE = 64
CODE_SHAPE = (4, 16, 16)


def conv_block(conv: nn.Module, channels: int) -> list[nn.Module]:
    """A (transposed) convolution, ReLU, BatchNorm: the design's building block."""
    return [conv, nn.ReLU(inplace=True), nn.BatchNorm2d(channels)]


class ConvAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Narrow on purpose: it trains on a 2-core CPU in minutes and encodes fast at ingest time.
        self.encoder = nn.Sequential(
            *conv_block(nn.Conv2d(3, 16, 3, padding=1), 16),
            *conv_block(nn.Conv2d(16, 16, 3, padding=1), 16),
            nn.MaxPool2d(2),  # 64 → 32
            *conv_block(nn.Conv2d(16, 32, 3, padding=1), 32),
            *conv_block(nn.Conv2d(32, 32, 3, padding=1), 32),
            nn.MaxPool2d(2),  # 32 → 16
            nn.Conv2d(32, CODE_SHAPE[0], 3, padding=1),  # the code: 4×16×16
        )
        self.decoder = nn.Sequential(
            *conv_block(nn.ConvTranspose2d(CODE_SHAPE[0], 32, 3, padding=1), 32),
            *conv_block(nn.ConvTranspose2d(32, 16, 2, stride=2), 16),  # 16 → 32
            *conv_block(nn.ConvTranspose2d(16, 16, 2, stride=2), 16),  # 32 → 64
            nn.Conv2d(16, 3, 3, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def to_unit_tensor(pictures: Sequence[PILImage.Image]) -> torch.Tensor:
    """(n, 3, 64, 64) float in [0, 1]. Pillow's bilinear filter widens its kernel when shrinking, so this
    is antialiased: a 4000-px photo and its 400-px copy give nearly the same 64×64 input."""
    arrays = [np.asarray(p.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE), PILImage.Resampling.BILINEAR,
                                                  reducing_gap=None), dtype=np.float32) for p in pictures]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0


def normalize_batch(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return (batch - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def preprocess(pictures: Sequence[PILImage.Image], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The model's input for RGB pictures: (n, 3, 64, 64), normalized with the training set's mean/std.
    Training goes through the same two steps (it needs the unit tensor first to compute mean/std)."""
    return normalize_batch(to_unit_tensor(pictures), mean, std)


class AutoencoderEncoder(ImageEncoder):
    space = Space.CONTENT
    dim = int(np.prod(CODE_SHAPE))

    def __init__(self, *, key: str, model: ConvAutoencoder, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | None = None) -> None:
        self.key = key
        self.device = device or torch.device("cpu")
        self.model = model.eval().to(self.device)
        self.mean, self.std = list(mean), list(std)
        self.precision = PrecisionChoice.for_vectors(key, self.device)

    def encode_images(self, images: Sequence[PILImage.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = preprocess(images, self.mean, self.std).to(self.device)  # built on the CPU, moved once
        self.model.eval()  # BatchNorm must use its running statistics, whatever a caller did to the module

        def forward() -> np.ndarray:
            with torch.inference_mode():
                codes = self.model.encode(batch)  # one forward pass for the whole batch
            return l1_normalize(codes.flatten(1).float().cpu().numpy())

        return self.precision.run(forward)


def load_checkpoint(path: Path) -> tuple[ConvAutoencoder, dict[str, Any]]:
    """The model (eval mode) and the checkpoint dict: state_dict, mean, std, meta."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = ConvAutoencoder()
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def load(spec: ModelSpec) -> AutoencoderEncoder:
    """The registry's loader: only the spec knows where the weights live."""
    model, checkpoint = load_checkpoint(spec.weight_path())
    return AutoencoderEncoder(key=spec.key, model=model, mean=checkpoint["mean"], std=checkpoint["std"],
                              device=model_device())
