"""Mask overlays rendered server-side at the user's threshold (no segmentation is recomputed)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage

OUTSIDE_ALPHA = 100  # the original dims pixels outside the mask to alpha ≈ 100/255


def overlay_png(*, mask_png: bytes, size: tuple[int, int], threshold_percent: int) -> bytes:
    """A transparent PNG of `size`: clear where the probability ≥ threshold, dark (alpha 100) elsewhere.
    Laid over the image, it dims everything outside the mask."""
    with PILImage.open(io.BytesIO(bytes(mask_png))) as mask:
        probability = mask.convert("L").resize(size, PILImage.Resampling.BILINEAR)
    inside = np.asarray(probability, dtype=np.uint8) >= round(threshold_percent * 255 / 100)
    rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    rgba[..., 3] = np.where(inside, 0, OUTSIDE_ALPHA)
    buffer = io.BytesIO()
    PILImage.fromarray(rgba, "RGBA").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
