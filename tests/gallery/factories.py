"""Builders for test objects (real rows, real files)."""

from __future__ import annotations

import hashlib
import io
import itertools

import numpy as np
from django.core.files.base import ContentFile
from PIL import Image as PILImage

from gallery.models import Image, Mask, ProcessingStatus
from retrieval.models import Embedding


_sequence = itertools.count()


def png_bytes(color=(200, 30, 30), size=(32, 24), *, unique: bool = True) -> bytes:
    """A small PNG; unique=True marks one pixel so every call gives different bytes (new SHA-256)."""
    picture = PILImage.new("RGB", size, color)
    if unique:
        n = next(_sequence)
        picture.putpixel((0, 0), (n % 256, (n // 256) % 256, (n // 65536) % 256))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def make_image(*, color=(200, 30, 30), size=(32, 24), name="red.png", status=ProcessingStatus.READY) -> Image:
    data = png_bytes(color, size)
    image = Image(sha256=hashlib.sha256(data).hexdigest(), original_name=name, width=size[0],
                  height=size[1], format="PNG", byte_size=len(data), status=status)
    image.file.save(name, ContentFile(data), save=False)
    image.save()
    return image


def add_embedding(image: Image, *, space: str, model_key: str, vector) -> Embedding:
    return Embedding.objects.create(image=image, space=space, model_key=model_key,
                                    vector=np.asarray(vector, dtype=np.float32))


def add_mask(image: Image, *, label="cat", class_index=8, segmenter="test/segmenter") -> Mask:
    return Mask.objects.create(image=image, label=label, class_index=class_index, segmenter=segmenter,
                               probability_png=png_bytes((128, 128, 128)), area_fraction=0.4)
