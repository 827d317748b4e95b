"""glibc malloc settings for the project's long-lived processes (Linux; elsewhere nothing is changed).

Set with mallopt() at start, before a process starts its threads or forks its workers (who inherit
them); the matching MALLOC_*_ variable in the environment wins over each.
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def _mallopt(parameter: int, value: int, environment_name: str) -> None:
    if sys.platform != "linux" or environment_name in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(parameter, value)
    except (OSError, AttributeError):  # not glibc (musl has neither arenas nor these thresholds)
        pass


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread of a threaded server a malloc arena of its own, which keeps what it
    freed: with gunicorn's 4 threads each search by upload left its peak in another arena (bench.memory:
    ~30 MB of peak RSS). Two arenas serve this load."""
    _mallopt(M_ARENA_MAX, arenas, "MALLOC_ARENA_MAX")


def reuse_large_blocks(threshold: int = 256 << 20) -> None:
    """Model workers: serve blocks up to `threshold` bytes from the heap and keep freed ones for reuse.
    By default glibc maps every block above 32 MiB afresh and unmaps it when freed, so each forward pass
    of the ResNet-101 segmenter (feature maps of 17-35 MB) faulted in ~270,000 zeroed pages: measured on
    the 2-core machine with getrusage, 1.07 s of system time per pass and 5.42 s -> 4.93 s a pass with
    this setting (two 1-thread processes side by side, as two workers: 11.9 s -> 10.9 s, peak RSS
    +2 %). The peak RSS barely moves: the blocks are the ones each pass needs anyway."""
    _mallopt(M_MMAP_THRESHOLD, threshold, "MALLOC_MMAP_THRESHOLD_")
    _mallopt(M_TRIM_THRESHOLD, 2 * threshold, "MALLOC_TRIM_THRESHOLD_")
