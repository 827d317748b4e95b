"""Training our content autoencoder (`manage.py train_autoencoder`) on the pictures in a folder, with a
held-out split by source picture and the training set's mean/std stored with the weights.

Three recipes (`views`):
- "near-copies" (autoencoder/v2): every epoch each picture gives two views, each the whole picture or
  a near-copy of it (the alterations a near-duplicate has: crop, small rotation, colour jitter,
  downscale, JPEG); the loss is the reconstruction of both views plus `consistency` × a term that pulls
  the L1-normalized codes of the two views together (InfoNCE over the batch with the L1 distance, or the
  plain L1 distance), so that a near-copy's code stays near its original's;
- "strong": the same loss, but both views are strongly altered as in SimCLR (a random 20–100 % of the
  area at aspect 3:4–4:3, mirrored at even odds, colour jitter ×0.6–1.4 and a hue shift, sometimes
  greyscale): views of one picture that share less than near-copies do, so the codes must keep what
  a picture shows rather than where its pixels are (an experiment: docs/CONTENT_MODEL.md);
- "crops" (autoencoder/v1): fixed random square crops of 30–100 % of each picture, reconstruction only.

With two views, `distillation` > 0 adds a teacher (e.g. the semantic model; `bench.content_deep`):
each code's distances to the batch's other codes should rank them as the teacher's vectors do
(`distillation_loss`). An experiment for category precision (docs/CONTENT_MODEL.md); the command does
not offer it.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import io

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageEnhance, ImageOps
from tqdm import tqdm

from gallery.imaging import ImageRejected, decode_image
from retrieval.encoders.autoencoder import (
    INPUT_SIZE,
    ConvAutoencoder,
    normalize_batch,
    preprocess,
    to_unit_tensor,
)
from retrieval.weights import readable_as_created

logger = logging.getLogger(__name__)
TRAINING_THREADS = 2
VIEWS = ("near-copies", "strong", "crops")
CONTRASTS = ("infonce", "l1")
# The changes a near-duplicate has (bench/evaluation.py makes the evaluation's copies the same way).
COPY_CROP_SIDE = (0.70, 0.90)  # share of each side kept
COPY_ROTATION_DEGREES = (-8.0, 8.0)
COPY_SCALE = (0.5, 1.0)
COPY_JITTER = (0.8, 1.2)  # brightness, contrast, saturation factors
COPY_JPEG_QUALITY = (30, 70)
# SimCLR-strength views ("strong")
STRONG_AREA = (0.2, 1.0)  # share of the picture's area a view keeps
STRONG_ASPECT = (3 / 4, 4 / 3)
STRONG_JITTER = (0.6, 1.4)  # brightness, contrast, saturation factors
STRONG_JITTER_ODDS, STRONG_HUE_ODDS, STRONG_GREY_ODDS = 0.8, 0.5, 0.2
STRONG_HUE_SHIFT = 25  # of 256 hue steps, either way
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class TrainingReport:
    images: int  # training pictures (views or crops are cut from these)
    heldout_images: int
    crops: int  # training inputs per epoch (two views per picture, or the fixed crops)
    skipped: tuple[str, ...]  # "path: reason" for each unreadable file
    train_loss: float
    heldout_loss: float
    untrained_heldout_loss: float
    heldout_copy_recall_at_1: float  # a near-copy of each held-out picture finds its original first (L1)
    epochs: int
    seconds: float
    out: Path


def _read_pictures(data_dir: Path, max_side: int = 512) -> tuple[list[PILImage.Image], list[str]]:
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
        picture = picture.convert("RGB")
        picture.thumbnail((max_side, max_side))  # the model sees 64×64: no need to keep huge originals
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


def near_copy(picture: PILImage.Image, rng: random.Random) -> PILImage.Image:
    """The picture rotated ±8°, cropped to 70–90 % of each side, colour-jittered ×0.8–1.2, downscaled
    ×0.5–1 and saved as JPEG of quality 30–70, decoded again: what a near-duplicate looks like."""
    picture = picture.convert("RGB")
    pixels = np.asarray(picture)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    border = tuple(int(v) for v in np.median(edge, axis=0))  # fills the corners the rotation uncovers
    rotated = picture.rotate(rng.uniform(*COPY_ROTATION_DEGREES), resample=PILImage.Resampling.BICUBIC,
                             fillcolor=border)
    width, height = rotated.size
    side = rng.uniform(*COPY_CROP_SIDE)
    crop_w, crop_h = max(1, round(width * side)), max(1, round(height * side))
    left, top = round((width - crop_w) * rng.random()), round((height - crop_h) * rng.random())
    copy = rotated.crop((left, top, left + crop_w, top + crop_h))
    copy = ImageEnhance.Brightness(copy).enhance(rng.uniform(*COPY_JITTER))
    copy = ImageEnhance.Contrast(copy).enhance(rng.uniform(*COPY_JITTER))
    copy = ImageEnhance.Color(copy).enhance(rng.uniform(*COPY_JITTER))
    scale = rng.uniform(*COPY_SCALE)
    copy = copy.resize((max(16, round(crop_w * scale)), max(16, round(crop_h * scale))),
                       PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=rng.randint(*COPY_JPEG_QUALITY))
    return PILImage.open(buffer).convert("RGB")


def strong_view(picture: PILImage.Image, rng: random.Random) -> PILImage.Image:
    """A SimCLR-strength view: a random part of the picture (area and aspect as STRONG_*), mirrored at
    even odds, colour-jittered and hue-shifted, sometimes greyscale."""
    picture = picture.convert("RGB")
    width, height = picture.size
    crop_w, crop_h = width, height  # the whole picture when no drawn box fits (a very narrow picture)
    for _ in range(10):
        area = width * height * rng.uniform(*STRONG_AREA)
        aspect = float(np.exp(rng.uniform(*np.log(STRONG_ASPECT))))
        w, h = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            crop_w, crop_h = w, h
            break
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    view = picture.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        view = ImageOps.mirror(view)
    if rng.random() < STRONG_JITTER_ODDS:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            view = enhance(view).enhance(rng.uniform(*STRONG_JITTER))
        if rng.random() < STRONG_HUE_ODDS:
            hsv = np.array(view.convert("HSV"))
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + rng.randint(-STRONG_HUE_SHIFT, STRONG_HUE_SHIFT)) % 256
            view = PILImage.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < STRONG_GREY_ODDS:
        view = ImageOps.grayscale(view).convert("RGB")
    return view


def _two_views(pictures: Sequence[PILImage.Image], rng: random.Random, views: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) unit tensors. "near-copies": first is the picture itself or a near-copy (even
    odds), second a near-copy; so the pairs teach both copy → original and copy → copy. "strong": two
    strong views."""
    if views == "strong":
        first = [strong_view(picture, rng) for picture in pictures]
        second = [strong_view(picture, rng) for picture in pictures]
    else:
        first = [picture if rng.random() < 0.5 else near_copy(picture, rng) for picture in pictures]
        second = [near_copy(picture, rng) for picture in pictures]
    return to_unit_tensor(first), to_unit_tensor(second)


def _l1_rows(codes: torch.Tensor) -> torch.Tensor:
    """Codes as the content index compares them: flattened, each row L1-normalized."""
    rows = codes.flatten(1)
    return rows / rows.abs().sum(dim=1, keepdim=True).clamp_min(1e-8)


def _normalized_codes(model: ConvAutoencoder, batch: torch.Tensor) -> torch.Tensor:
    return _l1_rows(model.encode(batch))


def consistency_loss(first: torch.Tensor, second: torch.Tensor, *, contrast: str, temperature: float) -> torch.Tensor:
    """Between L1-normalized codes (rows) of two views of the same pictures. "l1": their mean L1 distance;
    "infonce": cross-entropy of finding the other view among the batch's, logits −L1 distance / temperature
    (scale-free, so the codes cannot shrink their differences away)."""
    if contrast == "l1":
        return (first - second).abs().sum(dim=1).mean()
    logits = -torch.cdist(first, second, p=1) / temperature
    targets = torch.arange(len(first))
    return (torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.T, targets)) / 2


def copy_recall_at_1(model: ConvAutoencoder, mean: Sequence[float], std: Sequence[float],
                     pictures: Sequence[PILImage.Image], seed: int = 0) -> float:
    """Share of the pictures whose near-copy has its original as the nearest (L1, normalized codes)."""
    if len(pictures) < 2:
        return float("nan")
    rng = random.Random(seed)
    model.eval()
    with torch.inference_mode():
        originals = _normalized_codes(model, preprocess(pictures, mean, std))
        copies = _normalized_codes(model, preprocess([near_copy(p, rng) for p in pictures], mean, std))
    nearest = torch.cdist(copies, originals, p=1).argmin(dim=1)
    return float((nearest == torch.arange(len(pictures))).float().mean())


def distillation_loss(codes: torch.Tensor, teacher: torch.Tensor, *, temperature: float,
                      teacher_temperature: float) -> torch.Tensor:
    """Relational distillation: each row's distribution over the other rows, from −L1 distance of the
    L1-normalized codes / temperature, should match the teacher's, from cosine / teacher_temperature
    (teacher rows L2-normalized). Shapes the L1 geometry the content index searches, not a projection."""
    self_pairs = torch.eye(len(codes), dtype=torch.bool)
    student = (-torch.cdist(codes, codes, p=1) / temperature).masked_fill(self_pairs, float("-inf"))
    target = (teacher @ teacher.T / teacher_temperature).masked_fill(self_pairs, float("-inf")).softmax(dim=1)
    return -(target * student.log_softmax(dim=1).masked_fill(self_pairs, 0.0)).sum(dim=1).mean()


def autoencoder_train(*, data_dir: Path, out: Path, epochs: int, batch_size: int, seed: int = 0,
                      heldout_fraction: float = 0.1, crops_per_image: int = 1, progress: bool,
                      data_description: str = "", views: str = "near-copies", consistency: float = 0.0,
                      contrast: str = "infonce", temperature: float = 0.1, max_side: int = 512,
                      learning_rate: float = 2e-3,
                      model_factory: Callable[[], ConvAutoencoder] = ConvAutoencoder,
                      teacher: Callable[[Sequence[PILImage.Image]], np.ndarray] | None = None,
                      distillation: float = 0.0, teacher_temperature: float = 0.1) -> TrainingReport:
    """Train on the pictures under data_dir (recipe `views`, see the module) and write the checkpoint to
    `out` atomically. Unreadable files are skipped with a warning. `heldout_fraction` (more than 0, below 1)
    of the pictures, at least one, are held out. ValueError (naming data_dir) if fewer than 2 pictures load,
    none would be left to train on, or an option is out of range; ValueError, nothing written, if training
    ends with a loss or a weight that is not finite (it diverged). `model_factory` builds the network (a
    variant's architecture in `bench.content_deep`; the product loads only ConvAutoencoder)."""
    if views not in VIEWS or contrast not in CONTRASTS:
        raise ValueError(f"views must be one of {VIEWS}, contrast one of {CONTRASTS}")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"the held-out fraction must be more than 0 and below 1, not {heldout_fraction}")
    if not 0 < temperature < float("inf"):  # 0 divides the logits by zero: every loss NaN
        raise ValueError(f"temperature must be more than 0, not {temperature}")
    if consistency < 0 or (consistency > 0 and views == "crops"):
        raise ValueError("consistency must be ≥ 0, and needs two views a picture (views 'near-copies' or 'strong')")
    if distillation < 0 or (distillation > 0 and (teacher is None or views == "crops")):
        raise ValueError("distillation must be ≥ 0, and needs a teacher and two views a picture")
    started = time.perf_counter()
    torch.set_num_threads(TRAINING_THREADS)
    rng = random.Random(seed)
    torch.manual_seed(seed)  # weight initialization
    pictures, skipped = _read_pictures(data_dir, max_side)
    if not pictures:
        raise ValueError(f"{data_dir}: no readable images")
    if len(pictures) < 2:
        raise ValueError(f"{data_dir}: need at least 2 readable images (one is held out), found 1")
    order = list(range(len(pictures)))
    rng.shuffle(order)
    heldout_count = max(1, round(len(pictures) * heldout_fraction))
    if heldout_count >= len(pictures):
        raise ValueError(f"{data_dir}: a held-out fraction of {heldout_fraction:g} holds out {heldout_count} of the "
                         f"{len(pictures)} readable pictures, leaving none to train on: lower it or add pictures")
    heldout = [pictures[i] for i in order[:heldout_count]]
    train = [pictures[i] for i in order[heldout_count:]]

    if views == "crops":
        # The crops are cut once: a fixed, in-memory training set keeps epochs fast on a CPU.
        train_unit = to_unit_tensor(random_crops(train, crops_per_image, rng))
        heldout_inputs = random_crops(heldout, max(8, crops_per_image // 4), rng)
    else:
        train_unit = to_unit_tensor(train)  # mean/std of the pictures as the gallery sees them
        heldout_inputs = list(heldout)
    teacher_rows = None
    if teacher is not None and distillation > 0:
        teacher_rows = torch.from_numpy(np.asarray(teacher(train), dtype=np.float32))
        teacher_rows = teacher_rows / teacher_rows.norm(dim=1, keepdim=True).clamp_min(1e-8)
    mean = train_unit.mean(dim=(0, 2, 3)).tolist()
    std = train_unit.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    train_data = normalize_batch(train_unit, mean, std)
    heldout_data = preprocess(heldout_inputs, mean, std)

    model = model_factory()
    untrained = reconstruction_loss(model, heldout_data)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    generator = torch.Generator().manual_seed(seed)
    train_loss = float("nan")
    inputs_per_epoch = len(train_data) if views == "crops" else 2 * len(train)
    for _ in tqdm(range(epochs), desc="epochs", disable=None if progress else True):  # None: not in a log file
        model.train()
        total, count = 0.0, 0
        for indices in torch.randperm(len(train_data), generator=generator).split(batch_size):
            if views == "crops":
                batch = train_data[indices]
                loss = torch.nn.functional.mse_loss(model(batch), batch)
            else:
                first, second = _two_views([train[i] for i in indices.tolist()], rng, views)
                batch = normalize_batch(torch.cat([first, second]), mean, std)
                codes = model.encode(batch)  # both views in one pass: BatchNorm sees one batch
                loss = torch.nn.functional.mse_loss(model.decoder(codes), batch)
                normalized = _l1_rows(codes)
                if consistency > 0 and len(indices) > 1:
                    loss = loss + consistency * consistency_loss(normalized[:len(indices)], normalized[len(indices):],
                                                                 contrast=contrast, temperature=temperature)
                if teacher_rows is not None and len(indices) > 1:
                    targets = teacher_rows[indices].repeat(2, 1)  # both views of a picture share its target
                    loss = loss + distillation * distillation_loss(normalized, targets, temperature=temperature,
                                                                   teacher_temperature=teacher_temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(indices)
            count += len(indices)
        scheduler.step()
        train_loss = total / count
    heldout_loss = reconstruction_loss(model, heldout_data)
    copy_recall = copy_recall_at_1(model, mean, std, heldout, seed)
    weights = [value for value in model.state_dict().values() if value.is_floating_point()]
    if not (np.isfinite([train_loss, heldout_loss]).all() and all(bool(value.isfinite().all()) for value in weights)):
        raise ValueError(f"training diverged (final train loss {train_loss:.4g}, held-out {heldout_loss:.4g}): "
                         f"nothing was written to {out}; try a lower learning rate or a higher temperature")

    checkpoint = {
        "state_dict": model.state_dict(), "mean": mean, "std": std,
        "meta": {"data": data_description or str(data_dir), "images": len(train), "heldout_images": len(heldout),
                 "epochs": epochs, "seed": seed, "views": views, "crops_per_image": crops_per_image,
                 "consistency": consistency, "contrast": contrast, "temperature": temperature,
                 "distillation": distillation, "teacher_temperature": teacher_temperature,
                 "batch_size": batch_size, "max_side": max_side, "learning_rate": learning_rate,
                 "input_size": INPUT_SIZE, "train_loss": train_loss, "heldout_loss": heldout_loss,
                 "untrained_heldout_loss": untrained, "heldout_copy_recall_at_1": copy_recall,
                 "date": date.today().isoformat()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        readable_as_created(tmp)  # (mkstemp's file is its owner's alone: the service's account reads it)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return TrainingReport(images=len(train), heldout_images=len(heldout), crops=inputs_per_epoch,
                          skipped=tuple(skipped), train_loss=train_loss,
                          heldout_loss=heldout_loss, untrained_heldout_loss=untrained,
                          heldout_copy_recall_at_1=copy_recall, epochs=epochs,
                          seconds=time.perf_counter() - started, out=out)


def heldout_loss_of(model: ConvAutoencoder, mean: Sequence[float], std: Sequence[float],
                    pictures: Sequence[PILImage.Image], seed: int = 0) -> float:
    """Reconstruction MSE (normalized units) of 16 random crops per picture (tests, the weights README)."""
    return reconstruction_loss(model, preprocess(random_crops(pictures, 16, random.Random(seed)), mean, std))
