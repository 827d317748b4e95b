"""Measure the offline semantic encoder (EfficientNet-Lite0 bridged into MiniLM) on a labelled folder.

    python -m bench.offline_semantic --data DIR [--captions FILE] [--variants default|all]
    python -m bench.offline_semantic --data DIR --build-openclipart [--set top|objects]

DIR holds one sub-folder per category. Reported per bridge variant:
- text->image, one query per category ("a picture of a <category>", underscores read as spaces):
  R@1 and R@10 (a query scores when an image of its category is among the first 1 / 10 results),
  P@10 (fraction of the first 10 in the category) and mAP;
- with --captions (lines "relative/path<TAB>caption"): caption->image R@1 / R@10 against its one image;
- image->image: category precision@10 of each image's 10 nearest other images.

--build-openclipart fills DIR from Debian's openclipart-png package (public domain clip art,
`apt-get install openclipart-png`): at most --per-category images per category, picked with a fixed
seed, alpha composited on white, longest side cut to 384 px; the PNG titles (e.g. "Angry Monkey",
some in Italian or French) become DIR/captions.tsv for --captions.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from retrieval.encoders.offline import Bridge

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OPENCLIPART = Path("/usr/share/openclipart/png")
# Concrete sub-folders of openclipart (at least ~15 images each) for the "objects" set.
OPENCLIPART_OBJECTS = (
    "animals/mammals", "animals/birds", "animals/bugs", "animals/fish", "animals/dinosaurs", "food/fruit",
    "food/desserts", "food/beverages", "food/vegetables", "food/breads_and_carbs", "plants/flowers",
    "plants/trees", "transportation/vehicles", "transportation/boating", "recreation/music",
    "recreation/sports", "recreation/toys", "tools/weapons", "buildings/homes", "people/clothing",
    "signs_and_symbols/clocks", "signs_and_symbols/weather", "signs_and_symbols/flags",
    "education/books", "computer/hardware", "office/telephone",
)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}


def build_openclipart(target: Path, *, which: str, per_category: int, seed: int) -> None:
    """Sample openclipart into target/<category>/ as RGB PNGs (alpha composited on white), and the
    images' titles into target/captions.tsv."""
    if not OPENCLIPART.is_dir():
        raise SystemExit(f"{OPENCLIPART} is missing: apt-get install openclipart-png")
    folders = ([p for p in sorted(OPENCLIPART.iterdir()) if p.is_dir()] if which == "top"
               else [OPENCLIPART / name for name in OPENCLIPART_OBJECTS])
    rng = random.Random(seed)
    captions = []
    for folder in folders:
        files = sorted(folder.rglob("*.png"))
        picked = rng.sample(files, min(per_category, len(files)))
        out = target / folder.name
        out.mkdir(parents=True, exist_ok=True)
        for path in picked:
            source = Image.open(path)
            title = " ".join(str(source.info.get("Title", "")).split())
            image = _on_white(source)
            image.thumbnail((384, 384), Image.Resampling.LANCZOS)
            name = str(path.relative_to(folder)).replace("/", "__")
            image.save(out / name)
            if title:
                captions.append(f"{folder.name}/{name}\t{title}")
        print(f"{folder.name}: {len(picked)} of {len(files)}")
    (target / "captions.tsv").write_text("\n".join(captions) + "\n")
    print(f"{len(captions)} captions in {target / 'captions.tsv'}")


def _on_white(image: Image.Image) -> Image.Image:
    """Transparent clip art over white, as a viewer shows it (convert('RGB') would turn it black)."""
    image = image.convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, image).convert("RGB")


@dataclass(frozen=True)
class Dataset:
    paths: list[Path]
    labels: np.ndarray  # (n,) category index per image
    categories: list[str]


def load_dataset(root: Path) -> Dataset:
    categories = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for index, category in enumerate(categories):
        for path in sorted((root / category).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(path)
                labels.append(index)
    return Dataset(paths=paths, labels=np.array(labels), categories=categories)


def _batches(paths: list[Path], size: int) -> Iterator[list[Image.Image]]:
    for start in range(0, len(paths), size):
        yield [_on_white(Image.open(path)) for path in paths[start:start + size]]


def text_to_image(similarity: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """similarity (queries, images); relevant (queries, images) bool."""
    order = np.argsort(-similarity, axis=1)
    hits = np.take_along_axis(relevant, order, axis=1)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    average_precision = (precision_at * hits).sum(axis=1) / np.maximum(hits.sum(axis=1), 1)
    return {"R@1": hits[:, :1].any(axis=1).mean(), "R@10": hits[:, :10].any(axis=1).mean(),
            "P@10": hits[:, :10].mean(), "mAP": average_precision.mean()}


def image_to_image_precision(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    return float((labels[nearest] == labels[:, None]).mean())


def variants(which: str) -> dict[str, Bridge]:
    from retrieval.encoders.offline import DEFAULT_BRIDGE, Bridge

    if which == "default":
        return {"default": DEFAULT_BRIDGE}
    first = Bridge()  # the first version: first ImageNet name, no template, T=1
    photo = replace(first, templates=("a photo of a {}.",))
    gloss = replace(photo, gloss=True)
    found = {
        "first-name": first,
        "+photo-template": photo,
        "+synonyms": replace(photo, names="synonyms"),
        "+synonyms+gloss": replace(photo, names="synonyms", gloss=True),
        "+gloss": gloss,
        "+synonyms+gloss+drawing-template": replace(
            gloss, names="synonyms", templates=("a photo of a {}.", "a drawing of a {}.")),
    }
    for temperature in (0.5, 1.5, 2.0, 2.5, 3.0):
        found[f"+gloss T={temperature:g}"] = replace(gloss, temperature=temperature)
    for top_k in (5, 50):
        found[f"+gloss T=2 top{top_k}"] = replace(gloss, temperature=2.0, top_k=top_k)
    for resize in ("pad", "crop"):
        found[f"+gloss T=2 {resize}"] = replace(gloss, temperature=2.0, resize=resize)
    found["default"] = DEFAULT_BRIDGE
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--captions", type=Path)
    parser.add_argument("--query", default="a picture of a {}")
    parser.add_argument("--variants", choices=("default", "all"), default="all")
    parser.add_argument("--build-openclipart", action="store_true")
    parser.add_argument("--set", choices=("top", "objects"), default="top")
    parser.add_argument("--per-category", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    if args.build_openclipart:
        build_openclipart(args.data, which=args.set, per_category=args.per_category, seed=args.seed)

    from retrieval.encoders.offline import (
        bridge_images,
        bridge_texts,
        class_text_matrix,
        image_logits,
    )
    from retrieval.encoders.registry import get_model

    encoder = get_model("offline/effnet-lite0+minilm")  # its network and MiniLM serve every variant

    data = load_dataset(args.data)
    print(f"{args.data}: {len(data.paths)} images, {len(data.categories)} categories; "
          f"random text->image P@10 ~ {1 / len(data.categories):.3f}")
    queries = [args.query.format(c.replace("_", " ")) for c in data.categories]
    relevant = data.labels[None, :] == np.arange(len(data.categories))[:, None]
    captions: list[tuple[int, str]] = []
    if args.captions:
        index_of = {p.relative_to(args.data).as_posix(): i for i, p in enumerate(data.paths)}
        for line in args.captions.read_text().splitlines():
            if line.strip():
                path, caption = line.split("\t", 1)
                captions.append((index_of[path], caption))

    chosen = variants(args.variants)
    logits: dict[str, np.ndarray] = {}
    for resize in sorted({bridge.resize for bridge in chosen.values()}):
        start = time.perf_counter()
        rows = []
        for images in _batches(data.paths, args.batch_size):
            rows.append(image_logits(encoder.network, images, resize))
        logits[resize] = np.concatenate(rows)
        print(f"logits ({resize}): {time.perf_counter() - start:.1f}s")

    default = encoder.bridge
    matrices = {(default.templates, default.names, default.gloss): (encoder.centred_classes, encoder.text_mean)}
    header = f"{'variant':34} {'t2i R@1':>8} {'R@10':>6} {'P@10':>6} {'mAP':>6} {'i2i P@10':>9}"
    header += f" {'cap R@1':>8} {'cap R@10':>8}" if captions else ""
    print(header)
    for name, bridge in chosen.items():
        text_key = (bridge.templates, bridge.names, bridge.gloss)
        if text_key not in matrices:
            matrices[text_key] = class_text_matrix(encoder.text_model, bridge)
        centred, mean = matrices[text_key]
        images = bridge_images(logits[bridge.resize], centred, bridge)
        texts = bridge_texts(encoder.text_model, queries, mean)
        t2i = text_to_image(texts @ images.T, relevant)
        line = (f"{name:34} {t2i['R@1']:8.3f} {t2i['R@10']:6.3f} {t2i['P@10']:6.3f} {t2i['mAP']:6.3f} "
                f"{image_to_image_precision(images, data.labels):9.3f}")
        if captions:
            caption_texts = bridge_texts(encoder.text_model, [c for _, c in captions], mean)
            targets = np.array([i for i, _ in captions])
            ranked = np.argsort(-(caption_texts @ images.T), axis=1)[:, :10]
            line += f" {(ranked[:, 0] == targets).mean():8.3f} {(ranked == targets[:, None]).any(1).mean():8.3f}"
        print(line, flush=True)
    print(f"\n{datetime.date.today().isoformat()}  python -m bench.offline_semantic {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
