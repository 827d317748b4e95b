"""Training our content autoencoder (`manage.py train_autoencoder`): random 64×64 crops of the photos
in a folder, a held-out split by source photo, the training set's mean/std stored with the weights."""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch
from PIL import Image as PILImage
from tqdm import tqdm

from gallery.imaging import ImageRejected, decode_image
from retrieval.encoders.autoencoder import (
    INPUT_SIZE,
    ConvAutoencoder,
    normalize_batch,
    preprocess,
    to_unit_tensor,
)

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class TrainingReport:
    images: int  # training photos (crops are cut from these)
    heldout_images: int
    crops: int  # training crops per epoch
    skipped: tuple[str, ...]  # "path: reason" for each unreadable file
    train_loss: float
    heldout_loss: float
    untrained_heldout_loss: float
    epochs: int
    seconds: float
    out: Path


def _read_pictures(data_dir: Path) -> tuple[list[PILImage.Image], list[str]]:
    """The readable photos under data_dir (sorted by path, so runs are reproducible) and the skipped files."""
    pictures: list[PILImage.Image] = []
    skipped: list[str] = []
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            picture = decode_image(path.read_bytes()).picture
        except (ImageRejected, OSError) as exc:
            message = exc.message if isinstance(exc, ImageRejected) else str(exc)
            logger.warning("skipping %s: %s", path, message)
            skipped.append(f"{path}: {message}")
            continue
        picture.thumbnail((512, 512))  # crops are 64×64: no need to keep huge originals in memory
        pictures.append(picture)
    return pictures, skipped


def random_crops(pictures: Sequence[PILImage.Image], per_image: int, rng: random.Random) -> list[PILImage.Image]:
    """Square crops of 30–100 % of the shorter side, random flips, resized to 64×64, in [0, 1]."""
    crops = []
    for picture in pictures:
        width, height = picture.size
        for _ in range(per_image):
            side = int(min(width, height) * rng.uniform(0.3, 1.0))
            left, top = rng.randint(0, width - side), rng.randint(0, height - side)
            crop = picture.crop((left, top, left + side, top + side))
            if rng.random() < 0.5:
                crop = crop.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
            crops.append(crop)
    return crops


def reconstruction_loss(model: ConvAutoencoder, batch: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return float(torch.nn.functional.mse_loss(model(batch), batch))


def autoencoder_train(*, data_dir: Path, out: Path, epochs: int, batch_size: int, seed: int = 0,
                      heldout_fraction: float = 0.1, crops_per_image: int, progress: bool,
                      data_description: str = "") -> TrainingReport:
    """Train on random crops of the photos under data_dir and write the checkpoint to `out` atomically.
    Unreadable files are skipped with a warning. ValueError (naming data_dir) if fewer than 2 photos load."""
    started = time.perf_counter()
    rng = random.Random(seed)
    torch.manual_seed(seed)  # weight initialization
    pictures, skipped = _read_pictures(data_dir)
    if not pictures:
        raise ValueError(f"{data_dir}: no readable images")
    if len(pictures) < 2:
        raise ValueError(f"{data_dir}: need at least 2 readable images (one is held out), found 1")
    order = list(range(len(pictures)))
    rng.shuffle(order)
    heldout_count = max(1, round(len(pictures) * heldout_fraction))
    heldout = [pictures[i] for i in order[:heldout_count]]
    train = [pictures[i] for i in order[heldout_count:]]

    # The crops are cut once: a fixed, in-memory training set keeps epochs fast on a CPU.
    train_unit = to_unit_tensor(random_crops(train, crops_per_image, rng))
    mean = train_unit.mean(dim=(0, 2, 3)).tolist()
    std = train_unit.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    train_data = normalize_batch(train_unit, mean, std)
    heldout_data = preprocess(random_crops(heldout, max(8, crops_per_image // 4), rng), mean, std)

    model = ConvAutoencoder()
    untrained = reconstruction_loss(model, heldout_data)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    generator = torch.Generator().manual_seed(seed)
    train_loss = float("nan")
    for _ in tqdm(range(epochs), desc="epochs", disable=not progress):
        model.train()
        total, count = 0.0, 0
        for indices in torch.randperm(len(train_data), generator=generator).split(batch_size):
            batch = train_data[indices]
            loss = torch.nn.functional.mse_loss(model(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(indices)
            count += len(indices)
        scheduler.step()
        train_loss = total / count
    heldout_loss = reconstruction_loss(model, heldout_data)

    checkpoint = {
        "state_dict": model.state_dict(), "mean": mean, "std": std,
        "meta": {"data": data_description or str(data_dir), "images": len(train), "heldout_images": len(heldout),
                 "epochs": epochs, "seed": seed, "crops_per_image": crops_per_image, "input_size": INPUT_SIZE,
                 "train_loss": train_loss, "heldout_loss": heldout_loss, "untrained_heldout_loss": untrained,
                 "date": date.today().isoformat()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return TrainingReport(images=len(train), heldout_images=len(heldout), crops=len(train_data),
                          skipped=tuple(skipped), train_loss=train_loss,
                          heldout_loss=heldout_loss, untrained_heldout_loss=untrained, epochs=epochs,
                          seconds=time.perf_counter() - started, out=out)


def heldout_loss_of(model: ConvAutoencoder, mean: Sequence[float], std: Sequence[float],
                    pictures: Sequence[PILImage.Image], seed: int = 0) -> float:
    """Reconstruction MSE (normalized units) of 16 random crops per picture (tests, the weights README)."""
    return reconstruction_loss(model, preprocess(random_crops(pictures, 16, random.Random(seed)), mean, std))
