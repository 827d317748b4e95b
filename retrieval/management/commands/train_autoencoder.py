from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from retrieval.autoencoder_training import autoencoder_train
from retrieval.encoders.registry import MODELS


class Command(BaseCommand):
    help = "Train the content autoencoder on random 64×64 crops of the photos in a folder."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", type=Path, required=True, help="folder of training photos (searched recursively)")
        parser.add_argument("--epochs", type=int, default=30)
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument("--crops-per-image", type=int, default=64)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", type=Path, default=None,
                            help="checkpoint to write (default: the catalog's file of autoencoder/v1)")
        parser.add_argument("--describe", default="", help="a description of the data, stored in the checkpoint")

    def handle(self, *args: Any, data: Path, epochs: int, batch_size: int, crops_per_image: int, seed: int,
               out: Path | None, describe: str, verbosity: int, **options: Any) -> None:
        if not data.is_dir():
            raise CommandError(f"{data}: no such folder")
        out = out or MODELS["autoencoder/v1"].weight_path()
        try:
            report = autoencoder_train(data_dir=data, out=out, epochs=epochs, batch_size=batch_size, seed=seed,
                                       crops_per_image=crops_per_image, progress=verbosity > 0,
                                       data_description=describe)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        for skipped in report.skipped:
            self.stderr.write(f"skipped {skipped}")
        self.stdout.write(
            f"trained on {report.images} images ({report.crops} crops; {report.heldout_images} held out, "
            f"{len(report.skipped)} skipped) for {report.epochs} epochs in {report.seconds:.0f} s\n"
            f"reconstruction MSE: train {report.train_loss:.4f}, held-out {report.heldout_loss:.4f} "
            f"(untrained: {report.untrained_heldout_loss:.4f})\nwrote {report.out}")
