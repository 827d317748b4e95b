"""Thumbnails, generated once per image and size and cached under MEDIA_ROOT/thumbs/."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.conf import settings
from PIL import Image as PILImage

from gallery.imaging import decode_image

from gallery.models import Image

THUMBNAIL_SIZES = (128, 256, 512)


def _thumbnail_path(image: Image, size: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "thumbs" / image.sha256[:2] / f"{image.sha256}-{size}.webp"


def thumbnail_files(*, image: Image) -> list[Path]:
    """Every thumbnail path the image may have (to delete them with it)."""
    return [_thumbnail_path(image, size) for size in THUMBNAIL_SIZES]


def thumbnail_file(*, image: Image, size: int = 256) -> Path:
    """Path of the image's thumbnail (longest side `size`), creating it on first request."""
    if size not in THUMBNAIL_SIZES:
        raise ValueError(f"thumbnail size must be one of {THUMBNAIL_SIZES}")
    path = _thumbnail_path(image, size)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with image.file.open("rb") as fh:
        picture = decode_image(fh.read()).picture  # the same orientation and colours the models see
    picture.thumbnail((size, size), PILImage.Resampling.LANCZOS)
    # Written aside then renamed: a concurrent request never reads a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        picture.save(out, format="WEBP", quality=82)
    os.replace(tmp, path)
    return path
