"""Where models run and how many CPU threads a process gives them.

IMAGINAITION_DEVICE: auto (CUDA if available, else Apple MPS, else the CPU), cpu, cuda or mps. Every
model of a process runs on that one device; inputs are built on the CPU and moved once per batch.
Threads: each process takes its share of the cores (cores / processes sharing the machine, at least
one), so two workers on two cores do not each start a thread per core and fight over them.

CUDA and fork: django-q2 forks its workers from the cluster process, which says at start which device
it will use. torch's default availability check initializes the CUDA driver, and a process forked after
that cannot use CUDA ("CUDA initialization error"). The check asks NVML instead (torch's own switch),
which leaves the driver untouched until a model is placed, in the worker.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda", "mps")
# Images per pipeline batch when IMAGINAITION_BATCH_SIZE is unset. An accelerator spreads its per-call
# cost over more pictures (the segmenter still takes them in passes of its own, deeplab.py); on a CPU
# larger batches gained nothing (bench.ingest). The GPU figures are not measured yet: bench.ingest_device.
DEVICE_BATCH_SIZES = {"cpu": 16, "cuda": 64, "mps": 32}
# Read by torch.cuda.is_available() at each call; set before any check of this process.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")


def cuda_available() -> bool:
    """Whether a CUDA device is visible, without initializing CUDA (so the process can still fork)."""
    return torch.cuda.is_available()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(wanted: str) -> torch.device:
    """The torch device for a setting value; ImproperlyConfigured for an unknown or absent one."""
    if wanted not in DEVICES:
        raise ImproperlyConfigured(f"IMAGINAITION_DEVICE must be one of {', '.join(DEVICES)}, not {wanted!r}")
    if wanted == "auto":
        if cuda_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if wanted == "cuda" and not cuda_available():
        raise ImproperlyConfigured("IMAGINAITION_DEVICE=cuda, but this process sees no CUDA device "
                                   "(torch.cuda.is_available() is False): use auto or cpu")
    if wanted == "mps" and not _mps_available():
        raise ImproperlyConfigured("IMAGINAITION_DEVICE=mps, but Apple's MPS backend is not available: use auto or cpu")
    return torch.device(wanted)


def model_device() -> torch.device:
    """The device a model is placed on when it loads (the setting, read at each load: a loaded model
    keeps its device for the life of the process)."""
    return _resolved(settings.IMAGINAITION_DEVICE)


def conv_memory_format(device: torch.device) -> torch.memory_format:
    """How a convolutional network's weights and inputs are laid out on `device`. On a CPU channels-last
    (NHWC): with the batch norms folded, a pass ran 1.1-1.2x (DeepLabV3-ResNet101) to 1.75-1.9x
    (EfficientNet-Lite2, whose depthwise convolutions oneDNN runs far better on NHWC) faster on it than
    on NCHW (bench.layouts). Elsewhere torch's default layout: not measured on an accelerator here."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def batch_size() -> int:
    """Images per pipeline batch: IMAGINAITION_BATCH_SIZE, else the model device's default."""
    return settings.IMAGINAITION_BATCH_SIZE or DEVICE_BATCH_SIZES[model_device().type]


@functools.cache
def _resolved(wanted: str) -> torch.device:
    """resolve_device once per value: the status API asks on every request, and until CUDA is
    initialized torch asks NVML again at every check."""
    device = resolve_device(wanted)
    logger.debug("models run on %s", device)  # log_active_models says it at start
    return device


def thread_share(processes: int, cores: int | None = None) -> int:
    """This process's share of the CPU cores when `processes` share them (at least one)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, processes))


def cpu_threads() -> int:
    """The CPU threads this process works with: torch's, which threads_configure set to its share."""
    return torch.get_num_threads()


def threads_configure(processes: int) -> int:
    """Give torch (and its OpenMP pool) this process's share of the cores, or IMAGINAITION_TORCH_THREADS
    when set; returns the count."""
    threads = settings.IMAGINAITION_TORCH_THREADS or thread_share(processes)
    torch.set_num_threads(threads)
    return threads
