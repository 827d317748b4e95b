"""How the commands write: --verbosity 0 (cron, scripts) only what went wrong, on stderr; progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from django.core.management.base import BaseCommand
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class CommandOutput(NamedTuple):
    say: Callable[[str], None]  # progress and summaries: stdout, nothing at verbosity 0
    warn: Callable[[str], None]  # files refused, images failed: stdout beside the summary, stderr at verbosity 0


def command_output(command: BaseCommand, verbosity: int) -> CommandOutput:
    if verbosity:
        return CommandOutput(say=command.stdout.write, warn=command.stdout.write)
    return CommandOutput(say=lambda message: None, warn=command.stderr.write)


@contextmanager
def progress_bar(**options: Any) -> Iterator[tqdm]:
    """A tqdm bar (options as tqdm's) that log lines print above, where they cut it in two in a terminal: the
    workers' and the pipeline's messages go through tqdm while the bar shows (tqdm's logging_redirect_tqdm)."""
    with tqdm(**options) as bar:
        if bar.disable:  # not a terminal (or -v 0): log lines go where they always do
            yield bar
            return
        with logging_redirect_tqdm():
            yield bar
