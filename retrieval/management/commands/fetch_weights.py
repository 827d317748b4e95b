from __future__ import annotations

from argparse import ArgumentTypeError
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gallery.management.arguments import number_or_nan
from retrieval.checks import model_settings_check
from retrieval.encoders.registry import active_profile
from retrieval.weights import weights_fetch


MAX_TIMEOUT_S = 3600.0


def positive_seconds(text: str) -> float:
    value = number_or_nan(text)
    if not 0 < value <= MAX_TIMEOUT_S:  # NaN fails both; inf and 1e12 overflowed the socket's timer
        raise ArgumentTypeError(f"must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds, not {text}")
    return value


class Command(BaseCommand):
    requires_system_checks: list[str] = []  # it is how missing weights (a check's error) get fixed
    help = ("Download the standard profile's weight files (CLIP ViT-B-32, DeepLabV3-ResNet101) into the weights "
            "folder, verifying their SHA-256. Without a network it says so within seconds and exits 0: the "
            "offline profile is used. Exits non-zero when a file fails verification, a site answers wrongly, or the "
            "active profile still lacks a file (e.g. the autoencoder this project ships, in another weights folder).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=positive_seconds, default=5.0,
                            help="seconds to wait for the download sites")
        parser.add_argument("--model", action="append", dest="keys", metavar="KEY",
                            help="a registry key to fetch (repeatable; default: the standard profile's models)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def handle(self, *args: Any, timeout: float, keys: list[str] | None, no_progress: bool,
               **options: Any) -> None:
        try:
            active_profile()  # a wrong IMAGINAITION_MODEL_PROFILE is said first, not after minutes of downloads
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        try:
            report = weights_fetch(keys=keys, connect_timeout=timeout, progress=not no_progress)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if report.results:
            self.stdout.write(report.summary())
        self.stdout.write(f"active model profile: {active_profile()}")
        problems = model_settings_check()  # what no download fixes, e.g. a weights folder without our own files
        if problems:
            raise CommandError(f"{problems[0].msg}. {problems[0].hint}")  # the check gives one at most
        if not report.ok:
            raise CommandError("some weight files could not be fetched or failed verification (see above); no "
                               "partial download was kept, but a file already there that fails its check stays "
                               "where it is: replace or delete it")
