import math
from argparse import ArgumentTypeError
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gallery.management.arguments import at_least, number_or_nan, output_file_check
from retrieval.autoencoder_training import CONTRASTS, VIEWS, autoencoder_train
from retrieval.encoders.registry import MODELS

DEFAULT_MODEL = "autoencoder/v2"


def fraction(text: str) -> float:
    """A share of the pictures to hold out: more than 0 (the report and the checkpoint give a held-out loss, and
    the weights are kept only if it is finite) and below 1."""
    value = number_or_nan(text)
    if not 0 < value < 1:  # NaN fails too
        raise ArgumentTypeError(f"must be more than 0 and below 1, not {text}")
    return value


def above_zero(text: str) -> float:
    """An argparse type, as `at_least` for integers: a finite number above 0."""
    value = number_or_nan(text)
    if not 0 < value < math.inf:  # NaN fails both
        raise ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def zero_or_more(text: str) -> float:
    """An argparse type: a finite number of at least 0 (a weight)."""
    value = number_or_nan(text)
    if not 0 <= value < math.inf:  # NaN fails both
        raise ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


CROPS_PER_IMAGE = 64  # random crops of each picture per epoch with --views crops (v1's training)


class Command(BaseCommand):
    help = ("Train the content autoencoder on the pictures in a folder: near-copy views with a consistency "
            "term (autoencoder/v2, the default) or v1's random crops (--views crops --consistency 0).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", type=Path, required=True, help="folder of training pictures (searched recursively)")
        parser.add_argument("--epochs", type=at_least(1), default=7, help="7: autoencoder/v2's recipe")
        parser.add_argument("--batch-size", type=at_least(2), default=64)
        parser.add_argument("--views", choices=VIEWS, default="near-copies",
                            help="near-copies: two altered views of each picture per epoch (v2); "
                                 "strong: two SimCLR-strength views (an experiment, docs/CONTENT_MODEL.md); "
                                 "crops: fixed random crops (v1)")
        parser.add_argument("--crops-per-image", type=at_least(1), default=None,
                            help=f"with --views crops (default {CROPS_PER_IMAGE})")
        parser.add_argument("--consistency", type=zero_or_more, default=None,
                            help="weight of the term pulling the codes of two views of a picture together "
                                 "(default: 1 with two views a picture, as autoencoder/v2; 0 with --views crops)")
        parser.add_argument("--contrast", choices=CONTRASTS, default="infonce")
        parser.add_argument("--temperature", type=above_zero, default=0.1, help="of the InfoNCE term (above 0)")
        parser.add_argument("--learning-rate", type=above_zero, default=2e-3)
        parser.add_argument("--max-side", type=at_least(64), default=512,
                            help="pictures are shrunk to this longest side when read (the model sees 64×64)")
        parser.add_argument("--heldout-fraction", type=fraction, default=0.1,
                            help="share of the pictures held out to measure the model, more than 0 and below 1; "
                                 "at least one picture is held out, and at least one must remain to train on")
        parser.add_argument("--seed", type=at_least(0), default=0)
        parser.add_argument("--out", type=Path, default=None,
                            help=f"checkpoint file to write, in an existing folder (default: the catalog's file of "
                                 f"{DEFAULT_MODEL}); an existing file is replaced only with --force")
        parser.add_argument("--force", action="store_true", help="replace the --out file if it exists")
        parser.add_argument("--describe", default="", help="a description of the data, stored in the checkpoint")

    def handle(self, *args: Any, data: Path, epochs: int, batch_size: int, views: str, crops_per_image: int | None,
               consistency: float | None, contrast: str, temperature: float, learning_rate: float, max_side: int,
               heldout_fraction: float, seed: int, out: Path | None, force: bool, describe: str, verbosity: int,
               **options: Any) -> None:
        if crops_per_image is not None and views != "crops":  # it trained with two views a picture, the option unread
            raise CommandError(f"--crops-per-image is for --views crops; --views {views} makes two views of each "
                               "picture per epoch.")
        crops_per_image = crops_per_image or CROPS_PER_IMAGE
        if not data.is_dir():
            raise CommandError(f"{data}: {'a file, not a folder of pictures' if data.exists() else 'no such folder'}")
        out = out or MODELS[DEFAULT_MODEL].weight_path()
        output_file_check("--out", out, "autoencoder.pt")  # before training: a run of hours
        catalog_files = {path.resolve() for spec in MODELS.values() for path in spec.weight_files_present()}
        if out.exists() and not force and out.resolve() in catalog_files:
            raise CommandError(
                f"{out} exists: a gallery's content vectors were computed with it, and a model under the same key "
                "must not change. Write elsewhere with --out, or add --force to replace it (e.g. to reproduce the "
                "shipped weights; a new model needs a new key in retrieval/encoders/catalog.py, "
                "docs/CONTENT_MODEL.md).")
        if out.exists() and not force:
            raise CommandError(f"{out} exists: add --force to replace it, or write elsewhere with --out")
        if consistency is None:
            consistency = 0.0 if views == "crops" else 1.0
        try:
            report = autoencoder_train(data_dir=data, out=out, epochs=epochs, batch_size=batch_size, seed=seed,
                                       heldout_fraction=heldout_fraction, crops_per_image=crops_per_image,
                                       progress=verbosity > 0, data_description=describe, views=views,
                                       consistency=consistency, contrast=contrast, temperature=temperature,
                                       max_side=max_side, learning_rate=learning_rate)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        recall = (f"{report.heldout_copy_recall_at_1:.3f}" if not math.isnan(report.heldout_copy_recall_at_1)
                  else "not measured (it needs 2 held-out pictures: raise --heldout-fraction)")
        for skipped in report.skipped:
            self.stderr.write(f"skipped {skipped}")
        self.stdout.write(
            f"trained on {report.images} images ({report.crops} inputs per epoch; {report.heldout_images} held out, "
            f"{len(report.skipped)} skipped) for {report.epochs} epochs in {report.seconds:.0f} s\n"
            f"reconstruction MSE: train loss {report.train_loss:.4f}, held-out {report.heldout_loss:.4f} "
            f"(untrained: {report.untrained_heldout_loss:.4f}); held-out near-copy R@1 {recall}\nwrote {report.out}")
