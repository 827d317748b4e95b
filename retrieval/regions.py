"""How a mask becomes a picture the encoders can embed (search by region).

A region is the mask's bounding box at the default mask threshold; inside the box, pixels are kept in
proportion to the soft mask and blended toward a neutral grey elsewhere ("masked"), or kept as they
are ("box"). Masks covering less than IMAGINAITION_REGION_MIN_AREA of the picture get no vectors: too
few pixels to say anything, and they would flood the region index with noise. That share is the one a
label's percentage shows (at probability 0.5), so a label offers "Search with this region" exactly when
its region has vectors.
"""

from __future__ import annotations

from typing import Literal, cast

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from retrieval.preferences import preference_defaults

RegionStyle = Literal["masked", "box"]
NEUTRAL_FILL = (124, 116, 104)  # ImageNet's mean colour: "nothing" to the encoders


def region_threshold() -> float:
    """The default mask threshold preference, as a probability: a stored region is what a user
    sees outlined at that threshold."""
    return preference_defaults()["mask_threshold"] / 100


def large_enough_for_a_region(area_fraction: float) -> bool:
    """Whether a mask whose area at probability 0.5 (SoftMask.area_fraction, Mask.area_fraction) is
    this share of the picture gets region vectors; the pages offer its region search by the same bar."""
    return area_fraction >= settings.IMAGINAITION_REGION_MIN_AREA


def region_area(probability: np.ndarray, *, threshold: float | None = None) -> float:
    """Fraction of the picture inside the mask at the threshold."""
    cut = region_threshold() if threshold is None else threshold
    return float((probability >= cut).mean())


def region_picture(picture: PILImage.Image, probability: np.ndarray, *, style: RegionStyle | None = None,
                   threshold: float | None = None) -> PILImage.Image | None:
    """The region's picture, or None when it is below the minimum area.

    `probability` is the soft mask (H, W) in [0, 1]; it is resized to the picture when sizes differ.
    """
    style = style or cast(RegionStyle, settings.IMAGINAITION_REGION_STYLE)
    cut = region_threshold() if threshold is None else threshold
    if probability.shape != (picture.height, picture.width):
        resized = PILImage.fromarray(np.clip(probability * 255, 0, 255).astype(np.uint8), "L")
        probability = np.asarray(resized.resize(picture.size, PILImage.Resampling.BILINEAR),
                                 dtype=np.float32) / 255
    inside = probability >= cut
    if inside.mean() < settings.IMAGINAITION_REGION_MIN_AREA:
        return None
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if style not in ("masked", "box"):
        raise ValueError(f"region style must be masked or box, not {style!r}")
    box = picture.crop((int(left), int(top), int(right), int(bottom))).convert("RGB")
    if style == "box":
        return box
    # Blend toward the neutral fill in proportion to the mask, in Pillow's 8-bit arithmetic (a fifth of
    # the time of the same blend in float32; at most one grey level apart).
    keep = PILImage.fromarray(np.rint(probability[top:bottom, left:right] * 255).astype(np.uint8), "L")
    return PILImage.composite(box, PILImage.new("RGB", box.size, NEUTRAL_FILL), keep)
