"""Argument types the project's commands share."""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Callable


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low` (argparse names it in its error)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ArgumentTypeError(f"must be {low} or more, not {value}")
        return value
    parse.__name__ = f"integer of at least {low}"
    return parse
