"""Segmenters on the CPU through OpenVINO (IMAGINAITION_SEGMENTER_RUNTIME: torch, the default, or openvino).

DeepLabV3-ResNet101 is 98 % of the standard profile's ingest on a CPU. OpenVINO runs the same network
with batch norm folded into the convolutions and its own CPU kernels. Measured on the 2-core AVX2
machine (docs/BENCHMARKS.md): with 2 threads in one process it segments 1.04-1.2x as fast as torch,
but with one thread per process, as two workers on two cores run, it took 15.9 s a picture against
torch's 11 s, so torch stays the default and OpenVINO is a choice for hosts where it measures faster
(one worker with many cores; CPUs with AMX, where it runs bf16).

The torch network is converted once per weight file and OpenVINO version (a trace: ~45 s for the
ResNet-101) and saved under IMAGINAITION_MODEL_CACHE_DIR; later processes compile the saved file in about
a second. Whether the converted network keeps the masks is checked on the first picture a process
segments, as half precision is: it runs in torch fp32 and in OpenVINO, torch's masks are used, and
OpenVINO stays on only when every mask agrees (the same labels, each at IoU >= 0.98). Where the CPU
runs bf16 natively and IMAGINAITION_PRECISION is auto, OpenVINO in bf16 is tried first, then in fp32.
Any failure to convert or compile is logged and torch keeps segmenting.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .specs import file_sha256

logger = logging.getLogger(__name__)
RUNTIMES = ("torch", "openvino")
Logits = Callable[[torch.Tensor], torch.Tensor]  # (n, 3, S, S) normalized pictures -> (n, classes, S, S)


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def segmenter_runtime(device: torch.device) -> str:
    """torch or openvino for a segmenter on `device`; ImproperlyConfigured for a setting that cannot hold."""
    wanted = settings.IMAGINAITION_SEGMENTER_RUNTIME
    if wanted not in RUNTIMES:
        raise ImproperlyConfigured(f"IMAGINAITION_SEGMENTER_RUNTIME must be one of {', '.join(RUNTIMES)}, "
                                   f"not {wanted!r}")
    if wanted == "openvino" and device.type != "cpu":
        raise ImproperlyConfigured(f"IMAGINAITION_SEGMENTER_RUNTIME=openvino runs segmenters on the CPU, but the "
                                   f"models run on {device.type} (IMAGINAITION_DEVICE): use torch")
    if wanted == "openvino" and not openvino_installed():
        raise ImproperlyConfigured("IMAGINAITION_SEGMENTER_RUNTIME=openvino, but the openvino package is not "
                                   "installed: pip install 'imaginaition[openvino]' (or openvino), or use torch")
    return wanted


def converted_path(key: str, weights: Path, input_size: int) -> Path:
    """Where the converted network of `key` with these weights lives (new weights: a new file)."""
    import openvino

    fingerprint = hashlib.sha256(f"{file_sha256(weights)}:{openvino.__version__}:{input_size}".encode())
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", key)
    return Path(settings.IMAGINAITION_MODEL_CACHE_DIR) / f"{name}-{fingerprint.hexdigest()[:16]}" / "model.xml"


class _LogitsOnly(torch.nn.Module):
    """torchvision's segmentation models return a dict; the converted network returns the logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pictures: torch.Tensor) -> torch.Tensor:
        return self.model(pictures)["out"]


def convert(model: torch.nn.Module, *, key: str, weights: Path, input_size: int) -> Path:
    """The saved OpenVINO network for `model` (converted now when absent). One process of a host converts
    while the others wait for it (a file lock); the copy is written aside and renamed into place, so a
    folder shared by hosts never shows half a network and the first finished copy is kept."""
    target = converted_path(key, weights, input_size)
    if target.is_file():
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent.parent / ".converting.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not target.is_file():  # not converted meanwhile by the process that held the lock
            _convert_into(model, key=key, target=target, input_size=input_size)
    return target


def _convert_into(model: torch.nn.Module, *, key: str, target: Path, input_size: int) -> None:
    import openvino

    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent.parent))
    try:
        logger.info("converting %s for OpenVINO (once for these weights; about a minute for the ResNet-101)", key)
        with warnings.catch_warnings():  # the trace OpenVINO converts from warns that tracing is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            network = openvino.convert_model(_LogitsOnly(model).eval(), input=[1, 3, input_size, input_size],
                                             example_input=torch.zeros(1, 3, input_size, input_size))
        openvino.save_model(network, scratch / "model.xml", compress_to_fp16=False)
        try:
            os.rename(scratch, target.parent)
        except OSError:  # another host's copy is already in place
            if not target.is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class OpenVinoLogits:
    """A compiled network answering one picture per inference (its input shape is fixed)."""

    def __init__(self, path: Path, *, precision: str, threads: int) -> None:
        import openvino

        self.precision = precision  # "bf16" or "f32"
        self._compiled = openvino.Core().compile_model(str(path), "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    def __call__(self, pictures: torch.Tensor) -> torch.Tensor:
        with self._lock:
            rows = [np.asarray(self._compiled(picture[None].numpy())[0]) for picture in pictures]
        return torch.from_numpy(np.concatenate(rows))


def cpu_precisions() -> list[str]:
    """OpenVINO precisions to try, fastest first: bf16 only where the CPU runs it natively and the
    precision setting allows half precision."""
    import openvino

    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ["bf16", "f32"] if settings.IMAGINAITION_PRECISION == "auto" and "BF16" in capabilities else ["f32"]


@dataclass
class OpenVinoChoice:
    """Whether a segmenter's masks come from OpenVINO, decided on its first picture (see the module's doc)."""

    key: str
    path: Path
    threads: int
    candidates: list[str]  # OpenVINO precisions still to try, fastest first
    agreement: Callable[[list, list], float]  # of two segmentations of the same pictures
    bar: float  # the agreement OpenVINO's masks must reach
    chosen: OpenVinoLogits | None = field(default=None, init=False)
    decided: bool = field(default=False, init=False)
    measured: dict[str, float] = field(default_factory=dict, init=False)  # precision -> agreement with torch

    def describe(self) -> str:
        figures = ", ".join(f"openvino {name} vs torch fp32 on the first picture: {value:.4f}"
                            for name, value in self.measured.items())
        if not self.decided:
            return "openvino, to be checked against torch fp32 on the first picture"
        runtime = f"openvino {self.chosen.precision}" if self.chosen else "torch fp32"
        return f"{runtime} ({figures}, bar {self.bar})" if figures else runtime

    def decide(self, reference: list, segment_with: Callable[[Logits], list]) -> None:
        """Try each candidate on the picture(s) whose torch masks are `reference`; keep the first that agrees."""
        for precision in self.candidates:
            try:
                candidate = OpenVinoLogits(self.path, precision=precision, threads=self.threads)
                self.measured[precision] = self.agreement(reference, segment_with(candidate))
            except Exception:  # noqa: BLE001 - OpenVINO failing here leaves torch segmenting
                logger.exception("%s: OpenVINO %s failed on the first picture; trying the next", self.key, precision)
                continue
            if self.measured[precision] >= self.bar:
                self.chosen = candidate
                break
        self.decided = True
        logger.info("%s segments with %s", self.key, self.describe())


def openvino_choice(model: torch.nn.Module, *, key: str, weights: Path, input_size: int,
                    agreement: Callable[[list, list], float], bar: float) -> OpenVinoChoice | None:
    """The converted network, ready to be checked on the first picture; None (logged) when conversion fails."""
    try:
        path = convert(model, key=key, weights=weights, input_size=input_size)
        return OpenVinoChoice(key=key, path=path, threads=torch.get_num_threads(), candidates=cpu_precisions(),
                              agreement=agreement, bar=bar)
    except Exception:  # noqa: BLE001 - an unconvertible network still segments with torch
        logger.exception("%s: conversion for OpenVINO failed; segmenting with torch", key)
        return None
