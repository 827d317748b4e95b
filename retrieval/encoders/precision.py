"""Half precision where it keeps a model's results, decided once per model and process on real input.

IMAGINAITION_PRECISION: auto (default) or fp32. With auto, a model runs under autocast in half precision
(bf16 where the device supports it, else fp16) when its device is an accelerator, or, on the CPU, when
the model family says half precision pays there (the segmenters: oneDNN runs bf16 convolutions natively
on CPUs with AVX512-BF16/AMX) and the CPU has bf16 support. Whether it keeps the results is checked on
the first batch the model sees: that batch runs in fp32 and in half precision, the fp32 results are
used, and half precision stays on only when the two agree (vectors: cosine >= 0.999 for every row;
masks: the same labels, each at IoU >= 0.98). Otherwise the model stays in fp32 for the process's life.
The decision and its figures are logged and shown by the status API.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import torch
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .base import SoftMask

logger = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32")
VECTOR_COSINE_BAR = 0.999
MASK_IOU_BAR = 0.98
Output = TypeVar("Output")


def cpu_supports_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    check = getattr(mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and check is not None and check())
    except RuntimeError:
        return False


def precision_setting() -> str:
    """IMAGINAITION_PRECISION; ImproperlyConfigured for a value it cannot have (also a system check)."""
    wanted = settings.IMAGINAITION_PRECISION
    if wanted not in PRECISIONS:
        raise ImproperlyConfigured(f"IMAGINAITION_PRECISION must be one of {', '.join(PRECISIONS)}, not {wanted!r}")
    return wanted


def half_dtype(device: torch.device, *, pays_on_cpu: bool) -> torch.dtype | None:
    """The half precision to try on `device`, or None to stay in fp32 (the setting, or no support)."""
    if precision_setting() == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if pays_on_cpu and cpu_supports_bf16() else None


def vectors_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """The lowest cosine similarity between matching rows."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min((a * b).sum(axis=1) / np.maximum(norms, 1e-12))) if len(a) else 1.0


def mask_ious(reference: Sequence[Sequence[SoftMask]], other: Sequence[Sequence[SoftMask]]) -> tuple[list[float], int]:
    """Two segmentations of the same pictures compared: the IoU (probability >= 0.5) of every label both
    found in a picture (empty masks skipped), and how many labels only one of them found."""
    ious: list[float] = []
    unmatched = 0
    for masks_a, masks_b in zip(reference, other, strict=True):
        by_label_a = {mask.label: mask.probability >= 0.5 for mask in masks_a}
        by_label_b = {mask.label: mask.probability >= 0.5 for mask in masks_b}
        unmatched += len(set(by_label_a) ^ set(by_label_b))
        for label in set(by_label_a) & set(by_label_b):
            a, b = by_label_a[label], by_label_b[label]
            union = np.logical_or(a, b).sum()
            if union:
                ious.append(float(np.logical_and(a, b).sum() / union))
    return ious, unmatched


def masks_agreement(reference: Sequence[Sequence[SoftMask]], other: Sequence[Sequence[SoftMask]]) -> float:
    """The lowest IoU of a label's masks, over pictures; 0 when the labels differ."""
    ious, unmatched = mask_ious(reference, other)
    return 0.0 if unmatched else min(ious, default=1.0)


@dataclass
class PrecisionChoice(Generic[Output]):
    """Runs a model's forward work in the precision that keeps its results (see the module's doc)."""

    key: str
    device: torch.device
    dtype: torch.dtype | None  # the half precision being tried or used; None: fp32
    agreement: Callable[[Output, Output], float]
    bar: float
    decided: bool = field(init=False)  # fp32 from the start, or once the first batch has decided
    measured: float | None = field(init=False, default=None)  # the agreement on the first batch

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.decided = self.dtype is None

    @staticmethod
    def for_vectors(key: str, device: torch.device, *, pays_on_cpu: bool = False) -> PrecisionChoice[np.ndarray]:
        return PrecisionChoice(key=key, device=device, dtype=half_dtype(device, pays_on_cpu=pays_on_cpu),
                               agreement=vectors_agreement, bar=VECTOR_COSINE_BAR)

    @staticmethod
    def fp32(key: str, device: torch.device, *, agreement: Callable[[Output, Output], float],
             bar: float) -> PrecisionChoice[Output]:
        """fp32 whatever the setting (a reference other runtimes are checked against)."""
        return PrecisionChoice(key=key, device=device, dtype=None, agreement=agreement, bar=bar)

    @staticmethod
    def for_masks(key: str, device: torch.device, *,
                  pays_on_cpu: bool = True) -> PrecisionChoice[list[list[SoftMask]]]:
        return PrecisionChoice(key=key, device=device, dtype=half_dtype(device, pays_on_cpu=pays_on_cpu),
                               agreement=masks_agreement, bar=MASK_IOU_BAR)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def describe(self) -> str:
        if not self.decided:
            return f"{self.name} to be checked on the first batch"
        if self.measured is None:
            return self.name
        return f"{self.name} (half precision vs fp32 on the first batch: {self.measured:.4f}, bar {self.bar})"

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def run(self, forward: Callable[[], Output]) -> Output:
        """forward() under the chosen precision; the first call decides it (fp32 results returned)."""
        if self.decided:
            with self._autocast():
                return forward()
        with self._lock:
            if self.decided:  # another thread decided meanwhile
                with self._autocast():
                    return forward()
            reference = forward()
            half_name = self.name
            with self._autocast():
                half = forward()
            self.measured = self.agreement(reference, half)
            if self.measured < self.bar:
                self.dtype = None
            self.decided = True
            logger.info("%s runs in %s on %s (%s vs fp32 on the first batch: %.4f, bar %.3f)", self.key, self.name,
                        self.device, half_name, self.measured, self.bar)
            return reference
