"""map_on_threads: the pipeline's decoding and PNG encoding on the process's CPU threads."""

import threading
import time

import pytest

from retrieval.helper_threads import map_on_threads


def test_results_keep_the_items_order_and_use_at_most_the_threads_given():
    seen: dict[int, str] = {}

    def slow_square(n: int) -> int:
        time.sleep(0.002)  # long enough for the runs to overlap
        seen[n] = threading.current_thread().name
        return n * n

    items = list(range(23))
    assert map_on_threads(slow_square, items, 3) == [n * n for n in items]
    threads = set(seen.values())
    # Helpers took part; one may take both helper runs, when the other has not woken yet on a loaded machine.
    assert 2 <= len(threads) <= 3 and threading.current_thread().name in threads
    # Each thread took one contiguous run of the items.
    runs = [[n for n in items if seen[n] == name] for name in threads]
    assert all(run == list(range(run[0], run[-1] + 1)) for run in runs)


def test_one_thread_or_one_item_stays_on_the_calling_thread():
    here = threading.current_thread().name
    assert map_on_threads(lambda n: threading.current_thread().name, [1, 2, 3], 1) == [here] * 3
    assert map_on_threads(lambda n: threading.current_thread().name, [1], 8) == [here]
    assert map_on_threads(lambda n: n, [], 4) == []


def test_an_error_on_a_helper_reaches_the_caller():
    def fails_on_the_last(n: int) -> int:
        if n == 9:
            raise ValueError("item 9")
        return n

    with pytest.raises(ValueError, match="item 9"):
        map_on_threads(fails_on_the_last, list(range(10)), 2)
