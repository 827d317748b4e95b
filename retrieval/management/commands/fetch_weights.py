from django.core.management.base import BaseCommand, CommandError

from retrieval.encoders.registry import active_profile
from retrieval.weights import weights_fetch


class Command(BaseCommand):
    help = ("Download the standard profile's weight files (CLIP ViT-B-32, DeepLabV3-ResNet101) into weights/, "
            "verifying their SHA-256. Without a network it says so within seconds; the offline profile is used.")

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a connection")

    def handle(self, *args, timeout: float, **options):
        report = weights_fetch(connect_timeout=timeout)
        self.stdout.write(report.summary())
        self.stdout.write(f"active model profile: {active_profile()}")
        if not report.ok:
            raise CommandError("some weight files failed verification (see above); nothing partial was kept")
