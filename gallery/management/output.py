"""How the commands honour --verbosity: 0 (cron, scripts) writes only what went wrong, on stderr."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from django.core.management.base import BaseCommand


class CommandOutput(NamedTuple):
    say: Callable[[str], None]  # progress and summaries: stdout, nothing at verbosity 0
    warn: Callable[[str], None]  # files refused, images failed: stdout beside the summary, stderr at verbosity 0


def command_output(command: BaseCommand, verbosity: int) -> CommandOutput:
    if verbosity:
        return CommandOutput(say=command.stdout.write, warn=command.stdout.write)
    return CommandOutput(say=lambda message: None, warn=command.stderr.write)
