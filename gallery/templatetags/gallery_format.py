"""How the pages write the gallery's numbers."""

import math

from django import template

from gallery import thumbnails
from gallery.models import Image

register = template.Library()


@register.filter
def share_of_picture(fraction: float) -> str:
    """A mask's share of the picture as its label shows it: whole percents rounded down, so that a label
    reading "1%" meets a 1 % bar (rounded, a mask of 0.95 % read "1%" and had no region search); "<1%"
    under one percent."""
    percent = math.floor(fraction * 100 + 1e-9)  # 0.29 * 100 is 28.999999999999996
    return f"{percent}%" if percent >= 1 else "<1%"


@register.filter
def thumbnail_url(image: Image, size: int | None = None) -> str:
    """{{ image|thumbnail_url }} or {{ image|thumbnail_url:128 }}: thumbnails.thumbnail_url."""
    return thumbnails.thumbnail_url(image, size)
