"""Argument types and checks the project's commands share."""

from __future__ import annotations

import math
import tempfile
from argparse import ArgumentTypeError
from collections.abc import Callable
from pathlib import Path

from django.core.management.base import CommandError


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low` (its errors are argparse's message as they stand)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # argparse said "invalid integer of at least 1 value: 'abc'"
            raise ArgumentTypeError(f"must be a whole number, {low} or more, not {text}") from None
        if value < low:
            raise ArgumentTypeError(f"must be {low} or more, not {value}")
        return value
    return parse


def batch_size_with_sync(batch_size: int | None, *, sync: bool) -> None:
    """--batch-size sets this process's batches: refused without --sync (the workers batch by
    IMAGINAITION_BATCH_SIZE, and it was ignored without a word)."""
    if batch_size is not None and not sync:
        raise CommandError("--batch-size sets this process's batches: give it with --sync (the workers use "
                           "IMAGINAITION_BATCH_SIZE).")


def number_or_nan(text: str) -> float:
    """float(text), or NaN for a text that is no number: every range check then fails, naming the text."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def output_file_check(option: str, path: Path, example: str) -> None:
    """CommandError naming `path` unless a file can be written there: not a folder, in an existing folder this
    process may create files in (tried with a temporary file: permissions alone miss /proc, a read-only mount).
    Asked before a long run, which must not end in a traceback. example: a file name to suggest."""
    if path.is_dir():
        raise CommandError(f"{option} {path} is a folder: name the file to write, e.g. {path / example}")
    parent = path.parent
    if not parent.is_dir():
        what = "a file, not a folder" if parent.exists() else "no such folder"
        raise CommandError(f"{option} {path}: {parent} is {what}")
    try:
        with tempfile.TemporaryFile(dir=parent, suffix=".tmp"):
            pass
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot write in {parent} ({exc.strerror or exc})") from None
