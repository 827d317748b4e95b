"""Thumbnails, generated once per image and size and kept in the file storage under thumbs/."""

from __future__ import annotations

import io
import logging
import math
import time

from django.urls import reverse

from gallery.imaging import picture_for_models
from gallery.models import Image
from gallery.storage import STORAGE_ERRORS, storage_failure_noted, stored_delete, stored_read, stored_write_once

logger = logging.getLogger(__name__)

THUMBNAIL_SIZES = (128, 256, 512, 1024)
DISPLAY_SIZE = 1024  # a picture browsers cannot show (TIFF) is shown as this rendition: its masks' resolution
THUMBNAIL_FOLDER = "thumbs"
THUMBNAIL_VERSION_CHARS = 12  # of the SHA-256 in a thumbnail's address (?v=)


def _thumbnail_name(image: Image, size: int) -> str:
    return f"{THUMBNAIL_FOLDER}/{image.sha256[:2]}/{image.sha256}-{size}.webp"


def thumbnail_version(image: Image) -> str:
    """The query a thumbnail's address ends with, the picture's digest: browsers keep a thumbnail for a day, and a
    new picture under a reused id (a restored backup numbers new images from its ids again) showed the old one's."""
    return f"?v={image.sha256[:THUMBNAIL_VERSION_CHARS]}"


def thumbnail_url(image: Image, size: int | None = None) -> str:
    """The address of the image's thumbnail (`size`: one of THUMBNAIL_SIZES, else the default), versioned."""
    url = (reverse("gallery:image-thumbnail", args=[image.pk]) if size is None
           else reverse("gallery:image-thumbnail-size", args=[image.pk, size]))
    return url + thumbnail_version(image)


def thumbnail_sha256(name: str) -> str:
    """The SHA-256 of the image a stored thumbnail's name is of ("" if the name is not a thumbnail's)."""
    stem, _, size = name.rsplit("/", 1)[-1].removesuffix(".webp").rpartition("-")
    return stem if size.isdigit() and len(stem) == 64 else ""


def thumbnail_names(*, image: Image) -> list[str]:
    """Every thumbnail the image may have (to delete them with it)."""
    return [_thumbnail_name(image, size) for size in THUMBNAIL_SIZES]


def thumbnail_bytes(*, image: Image, size: int = 256) -> bytes:
    """The image's thumbnail (WebP, longest side `size`), made and stored on first request.
    FileNotFoundError when the original is missing."""
    if size not in THUMBNAIL_SIZES:
        raise ValueError(f"thumbnail size must be one of {THUMBNAIL_SIZES}")
    name = _thumbnail_name(image, size)
    try:
        return stored_read(name)
    except FileNotFoundError:
        pass
    with image.file.open("rb") as fh:
        data = webp_rendition(fh.read(), max_side=size)
    try:
        stored_write_once(name, data)
    except STORAGE_ERRORS as exc:  # a full disk, a read-only folder: shown all the same, kept next time
        storage_failure_noted(exc)
        _warn_not_kept(name, exc)
        return data
    # Deleted while this was made: its delete removed the thumbnails before this one existed. Checked
    # after the write, so a delete committed later removes this file itself.
    if not Image.objects.filter(sha256=image.sha256).exists():
        stored_delete([name])
    return data


def _warn_not_kept(name: str, exc: BaseException) -> None:
    """Once a minute at most: a gallery page asks for 50 thumbnails, each of which would say the same."""
    global _last_warned
    if time.monotonic() - _last_warned >= NOT_KEPT_WARNING_SECONDS:
        _last_warned = time.monotonic()
        logger.warning("thumbnails are served but not kept: %s could not be written (%r); (said once a minute)",
                       name, exc)


NOT_KEPT_WARNING_SECONDS = 60
_last_warned = -math.inf


def webp_rendition(data: bytes, *, max_side: int) -> bytes:
    """A picture's bytes as a WebP, longest side at most `max_side`: the same orientation and colours the
    models see; a JPEG decoded at the DCT scale that still covers it (a 64 MP photo's full decode took
    hundreds of MB of the web process per request)."""
    out = io.BytesIO()
    picture_for_models(data, max_side=max_side).save(out, format="WEBP", quality=82)
    return out.getvalue()
