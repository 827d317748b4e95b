"""Mask overlays rendered server-side at the user's threshold from the stored soft mask (no segmentation
is recomputed)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage

from gallery.imaging import MODEL_MAX_SIDE

OUTSIDE_ALPHA = 100  # as the original: pixels outside the mask are dimmed to alpha ≈ 100/255


def overlay_size(size: tuple[int, int], max_side: int = MODEL_MAX_SIDE) -> tuple[int, int]:
    """The image's aspect at no more than the masks' own resolution (the page stretches it over the image)."""
    width, height = size
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def overlay_png(*, mask_png: bytes | memoryview, size: tuple[int, int], threshold_percent: int) -> bytes:
    """A PNG with the image's aspect (`size`, capped at MODEL_MAX_SIDE): transparent where the
    probability ≥ threshold, black at alpha OUTSIDE_ALPHA elsewhere. Laid over the image, it dims
    everything outside the mask."""
    target = overlay_size(size)
    with PILImage.open(io.BytesIO(bytes(mask_png))) as mask:
        probability = mask.convert("L").resize(target, PILImage.Resampling.BILINEAR)
    cutoff = round(max(0, min(100, threshold_percent)) * 255 / 100)
    inside = np.asarray(probability, dtype=np.uint8) >= cutoff
    rgba = np.zeros((target[1], target[0], 4), dtype=np.uint8)
    rgba[..., 3] = np.where(inside, 0, OUTSIDE_ALPHA)
    buffer = io.BytesIO()
    PILImage.fromarray(rgba, "RGBA").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
