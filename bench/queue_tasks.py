"""The trivial task bench.queue_throughput enqueues: it does no work, so what is measured is the queue."""

from __future__ import annotations


def noop(sent: float) -> float:
    """Return the enqueue time (time.time()) it was given, so that its result row dates the round trip."""
    return sent
