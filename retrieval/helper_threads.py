"""This process's helper threads: for work that leaves Python's lock while it runs (FAISS, numpy,
Pillow's decoders, resizers and PNG encoder), so that one request or batch can use the cores the
process was given."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_helpers: tuple[int, ThreadPoolExecutor] | None = None
_helpers_lock = threading.Lock()


def helper_threads() -> ThreadPoolExecutor:
    """The pool (one thread per core), created after a fork, never inherited: a forked child has
    no threads of its parent's pool."""
    global _helpers
    with _helpers_lock:
        if _helpers is None or _helpers[0] != os.getpid():
            _helpers = (os.getpid(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="helper"))
        return _helpers[1]


def map_on_threads(function: Callable[[Item], Result], items: Sequence[Item], threads: int) -> list[Result]:
    """[function(item) for item in items], in order, on at most `threads` threads at once (this one
    among them): the items are cut into that many runs, the first run here, the others on helpers.
    An exception of `function` reaches the caller."""
    threads = min(threads, len(items))
    if threads <= 1:
        return [function(item) for item in items]

    def run(part: Sequence[Item]) -> list[Result]:
        return [function(item) for item in part]

    bounds = [len(items) * part // threads for part in range(threads + 1)]
    runs = [items[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]
    aside = [helper_threads().submit(run, part) for part in runs[1:]]
    results = run(runs[0])
    for future in aside:
        results += future.result()
    return results
