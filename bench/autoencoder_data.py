"""The training pictures of the content autoencoder v2, sampled reproducibly from offline sources.

    python -m bench.autoencoder_data DIR [--seed 0]

Writes DIR/openclipart/, DIR/wallpapers/, DIR/skimage/ (RGB PNGs, longest side at most 160 px: the
model sees 64×64) and DIR/manifest.tsv (one line per picture: file, source, licence, crop box).

- Debian `openclipart-png` (public domain): only files outside the evaluation categories
  (`bench.offline_semantic.OPENCLIPART_OBJECTS`), and none with the name or the bytes of a file in
  those categories (the same drawing is sometimes filed twice); at most --per-folder files per folder
  (seeded pick; `shapes/stars` alone holds 1,378), alpha composited on white like the evaluation set.
- Debian `plasma-workspace-wallpapers` (GPL-2+): the largest file of each wallpaper, --wallpaper-crops
  seeded crops each (10–70 % of the shorter side, aspect 3:4…4:3).
- scikit-image's bundled photos (BSD-3-Clause), except the photos the tests hold out (chelsea = cat,
  coffee, rocket, astronaut): the whole photo plus --photo-crops seeded crops each.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

import numpy as np
from PIL import Image
try:
    from skimage import data as skdata
except ImportError:  # the test extra's: `make run` alone does not install it
    raise SystemExit("bench.autoencoder_data needs scikit-image: run `make test` once (it installs the test extras), "
                     "or `.venv/bin/python -m pip install scikit-image`") from None

from bench.offline_semantic import OPENCLIPART, OPENCLIPART_OBJECTS, _on_white

WALLPAPERS = Path("/usr/share/wallpapers")
LONGEST_SIDE = 160
# Bundled with scikit-image (no download); chelsea (also `cat`), coffee, rocket and astronaut are the
# tests' held-out photos.
SKIMAGE_PHOTOS = ("brick", "camera", "checkerboard", "clock", "coins", "colorwheel", "grass", "gravel", "horse",
                  "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
                  "text")
HELDOUT_PHOTOS = ("chelsea", "cat", "coffee", "rocket", "astronaut")


def _small(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    image.thumbnail((LONGEST_SIDE, LONGEST_SIDE), Image.Resampling.LANCZOS)
    return image


def _crop(image: Image.Image, rng: random.Random, smallest: float, largest: float) -> tuple[Image.Image, str]:
    width, height = image.size
    side = min(width, height) * rng.uniform(smallest, largest)
    aspect = rng.uniform(0.75, 4 / 3)
    crop_w, crop_h = min(width, round(side * aspect ** 0.5)), min(height, round(side / aspect ** 0.5))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    box = (left, top, left + crop_w, top + crop_h)
    return image.crop(box), ",".join(map(str, box))


def evaluation_clipart() -> tuple[set[Path], set[str], set[str]]:
    """The files of the evaluation categories, their names and their SHA-256s."""
    paths = {p for name in OPENCLIPART_OBJECTS for p in (OPENCLIPART / name).rglob("*.png")}
    return paths, {p.name for p in paths}, {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def clipart_training_files(*, per_folder: int, rng: random.Random) -> list[Path]:
    held_paths, held_names, held_hashes = evaluation_clipart()
    by_folder: dict[Path, list[Path]] = {}
    for path in sorted(OPENCLIPART.rglob("*.png")):
        if path in held_paths or path.name in held_names:
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() in held_hashes:
            continue
        by_folder.setdefault(path.parent, []).append(path)
    picked: list[Path] = []
    for folder in sorted(by_folder):
        files = by_folder[folder]
        picked += sorted(rng.sample(files, min(per_folder, len(files))))
    return picked


def prepare(target: Path, *, seed: int, per_folder: int, wallpaper_crops: int, photo_crops: int) -> dict[str, int]:
    """Fill target (sub-folders and manifest.tsv); the count of pictures per source."""
    rng = random.Random(seed)
    manifest = ["file\tsource\tlicence\tcrop"]
    counts = {"openclipart": 0, "wallpapers": 0, "skimage": 0}
    seen: set[str] = set()  # the same drawing twice outside the evaluation categories: kept once
    (target / "openclipart").mkdir(parents=True, exist_ok=True)
    for path in clipart_training_files(per_folder=per_folder, rng=rng):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        relative = str(path.relative_to(OPENCLIPART))
        try:
            drawing = Image.open(path)
            drawing.load()
        except (Image.DecompressionBombError, OSError) as exc:  # a few posters of 100+ megapixels
            print(f"skipped {relative}: {exc}")
            continue
        name = f"openclipart/{relative.replace('/', '__')}"
        _small(_on_white(drawing)).save(target / name)
        manifest.append(f"{name}\tdebian:openclipart-png:{relative}\tpublic domain\t")
        counts["openclipart"] += 1

    (target / "wallpapers").mkdir(exist_ok=True)
    for folder in sorted(p for p in WALLPAPERS.iterdir() if p.is_dir()):
        files = sorted((folder / "contents" / "images").glob("*.[jp][pn]g"), key=lambda p: (-p.stat().st_size, p.name))
        if not files:
            continue
        wallpaper = Image.open(files[0]).convert("RGB")
        for index in range(wallpaper_crops):
            crop, box = _crop(wallpaper, rng, 0.1, 0.7)
            name = f"wallpapers/{folder.name}-{index:03d}.png"
            _small(crop).save(target / name)
            manifest.append(f"{name}\tdebian:plasma-workspace-wallpapers:{files[0].relative_to(WALLPAPERS)}\t"
                            f"GPL-2+\t{box}")
            counts["wallpapers"] += 1



    (target / "skimage").mkdir(exist_ok=True)
    for photo in SKIMAGE_PHOTOS:
        assert photo not in HELDOUT_PHOTOS
        array = np.asarray(getattr(skdata, photo)())
        picture = Image.fromarray(array.astype(np.uint8) if array.dtype != np.uint8 else array).convert("RGB")
        crops = [(picture, "")] + [_crop(picture, rng, 0.3, 0.9) for _ in range(photo_crops)]
        for index, (crop, box) in enumerate(crops):
            name = f"skimage/{photo}-{index:03d}.png"
            _small(crop).save(target / name)
            manifest.append(f"{name}\tpypi:scikit-image:data.{photo}\tBSD-3-Clause\t{box}")
            counts["skimage"] += 1
    (target / "manifest.tsv").write_text("\n".join(manifest) + "\n")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-folder", type=int, default=150)
    parser.add_argument("--wallpaper-crops", type=int, default=60)
    parser.add_argument("--photo-crops", type=int, default=30)
    args = parser.parse_args()
    missing = [f"{folder} (Debian package {package})" for folder, package in
               ((OPENCLIPART, "openclipart-png"), (WALLPAPERS, "plasma-workspace-wallpapers")) if not folder.is_dir()]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)}; install with `apt-get install openclipart-png "
                         "plasma-workspace-wallpapers`")
    if args.target.exists() and any(args.target.iterdir()):
        raise SystemExit(f"{args.target} is not empty")
    counts = prepare(args.target, seed=args.seed, per_folder=args.per_folder,
                     wallpaper_crops=args.wallpaper_crops, photo_crops=args.photo_crops)
    print(", ".join(f"{source}: {count}" for source, count in counts.items()), f"total {sum(counts.values())}")


if __name__ == "__main__":
    main()
