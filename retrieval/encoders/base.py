"""The contracts every model family implements. Inputs are RGB PIL images (ingestion has already
applied EXIF orientation and composited alpha); outputs are numpy arrays, one row per input."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from PIL import Image

from retrieval.spaces import Space

Role = Literal["semantic", "content", "segmenter"]  # a Space's value, or segmenter


class ImageEncoder(ABC):
    """Maps images to vectors. One forward pass per call: callers batch."""

    key: str
    space: Space
    dim: int

    @abstractmethod
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(len(images), dim) float32; semantic rows have L2 norm 1, content rows have L1 norm 1."""


@dataclass(frozen=True)
class TextReading:
    """How a text tower reads a text: its tokens (without the model's own start and end markers), how
    many of them its vocabulary lacks (each read as one "unknown"), and the most tokens it reads (the
    rest is cut off)."""

    tokens: int
    unknown: int
    limit: int


class SemanticEncoder(ImageEncoder):
    """A semantic image encoder whose text tower maps text into the same space."""

    space: Space = Space.SEMANTIC

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized, comparable with encode_images rows."""

    def read_text(self, text: str) -> TextReading | None:
        """How the text tower reads `text`; None where the model cannot tell."""
        return None


def share_more_likely_than_not(probability: np.ndarray) -> float:
    """Fraction of a soft mask's pixels where the label is more likely than not (a label's percentage)."""
    return float((probability >= 0.5).mean())


@dataclass(frozen=True)
class SoftMask:
    label: str  # VOC label where one exists (cat, dog, car, ...), else the model's class name
    class_index: int
    probability: np.ndarray  # (H, W) float32 in [0, 1], the input image's size

    @cached_property  # asked when choosing regions and again when storing the mask: one pass over the pixels
    def area_fraction(self) -> float:
        """Fraction of pixels where the label is more likely than not."""
        return share_more_likely_than_not(self.probability)

    @property
    def covers_a_pixel(self) -> bool:
        """Whether the label is more likely than not somewhere (area_fraction > 0). A segmenter keeps
        only such masks: one that a tiny or thin picture's upsampling left below 0.5 everywhere would
        be listed at 0 % and have no region to search."""
        return bool(self.probability.max() >= 0.5)


class Segmenter(ABC):
    key: str

    @abstractmethod
    def segment(self, images: Sequence[Image.Image]) -> list[list[SoftMask]]:
        """Per image, one SoftMask per detected label (background excluded) that covers a pixel."""


# Forward passes kept within a shared_passes() block: key -> (the picture, its outputs). Holding the
# picture keeps its id() from being reused by another picture while the block lasts.
_shared_passes: ContextVar[dict[Any, tuple[Image.Image, Any]] | None] = ContextVar("shared_passes", default=None)


@contextlib.contextmanager
def shared_passes() -> Iterator[None]:
    """Within the block, models built on one network reuse its forward pass over a picture they were
    given before (the same picture object, same input, same precision) instead of running it again:
    the pipeline gives a batch's decoded pictures to the semantic encoder and then to the segmenter,
    and the offline profile's two are one EfficientNet. What a block keeps goes with it."""
    token = _shared_passes.set({})
    try:
        yield
    finally:
        _shared_passes.reset(token)


def shared_passes_memo() -> dict[Any, tuple[Image.Image, Any]] | None:
    """The current shared_passes() block's memo, or None outside one."""
    return _shared_passes.get()


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def l1_normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.abs(vectors).sum(axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
