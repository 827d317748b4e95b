"""Compare content-autoencoder checkpoints on a labelled folder, without a database.

    python -m bench.content_variants --data /tmp/evalset/objects --model weights/autoencoder-v1.pt \
        --model /tmp/variant-a.pt [--near-duplicates 200] [--seed 0]

For each checkpoint: content-only category P@10 (every image queries, itself excluded, L1 distance
between L1-normalized codes, as the content index searches) and near-duplicate R@1 / R@10 (a seeded
pick of images gets one copy each, made by `bench.evaluation`'s near-duplicate generator; each copy
queries among all originals and copies, itself excluded). Images are read like the product reads them
(`gallery.imaging.picture_for_models`); files with the same bytes are kept once (first category in
name order), as `manage.py evaluate` imports them. The folder is built with
`bench.offline_semantic.build_openclipart(Path('/tmp/evalset/objects'), which='objects', per_category=60, seed=0)`
when missing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import time
from pathlib import Path

import django
import numpy as np
import torch
from PIL import Image as PILImage

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
django.setup()

from bench.evaluation import copy_recipe, near_duplicate_copy  # noqa: E402  (needs Django set up)
from bench.offline_semantic import IMAGE_EXTENSIONS, build_openclipart  # noqa: E402
from gallery.imaging import picture_for_models  # noqa: E402
from retrieval.encoders.autoencoder import AutoencoderEncoder, load_checkpoint  # noqa: E402
from retrieval.encoders.base import ImageEncoder  # noqa: E402


def read_folder(root: Path) -> tuple[list[bytes], np.ndarray]:
    """The distinct files (bytes) of root/<category>/ and their category indexes."""
    files, labels, seen = [], [], set()
    for index, category in enumerate(sorted(p.name for p in root.iterdir() if p.is_dir())):
        for path in sorted((root / category).rglob("*")):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            files.append(data)
            labels.append(index)
    return files, np.array(labels)


def l1_ranks(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indexes (into vectors) of the k nearest by L1 to each row of `queries`, excluding each query itself
    (`queries` are indexes into vectors)."""
    tensor = torch.from_numpy(vectors)
    out = []
    for start in range(0, len(queries), 256):
        rows = queries[start:start + 256]
        distances = torch.cdist(tensor[rows], tensor, p=1)
        distances[torch.arange(len(rows)), torch.from_numpy(rows)] = float("inf")
        out.append(distances.topk(k, largest=False).indices.numpy())
    return np.concatenate(out)


def evaluation_pictures(data: Path, *, near_duplicates: int, seed: int) -> tuple[list[PILImage.Image], np.ndarray, list[int]]:
    """(the distinct originals then one near-copy of each of a seeded pick, the originals' category
    indexes, the picked originals' positions); the folder is built first when missing."""
    if not data.is_dir():
        build_openclipart(data, which="objects", per_category=60, seed=0)
    files, labels = read_folder(data)
    rng = random.Random(seed)
    copies_of = rng.sample(range(len(files)), min(near_duplicates, len(files)))
    copies = [near_duplicate_copy(picture_for_models(files[i]), copy_recipe(rng)) for i in copies_of]
    return [picture_for_models(data) for data in files + copies], labels, copies_of


def encode_all(encoder: ImageEncoder, pictures: list[PILImage.Image], batch: int = 64) -> np.ndarray:
    return np.concatenate([encoder.encode_images(pictures[i:i + batch]) for i in range(0, len(pictures), batch)])


def measure(encoder: AutoencoderEncoder, pictures: list, labels: np.ndarray, copies_of: list[int]) -> dict[str, float]:
    vectors = encode_all(encoder, pictures)
    originals = len(labels)
    # Category P@10 among the originals.
    ranked = l1_ranks(vectors[:originals], np.arange(originals), 10)
    precision = float((labels[ranked] == labels[:, None]).mean())
    # Near-duplicates: copy j sits at originals + j; its original is copies_of[j].
    queries = np.arange(originals, len(pictures))
    ranked = l1_ranks(vectors, queries, 10)
    targets = np.array(copies_of)[:, None]
    return {"P@10": precision, "R@1": float((ranked[:, :1] == targets).any(axis=1).mean()),
            "R@10": float((ranked == targets).any(axis=1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/tmp/evalset/objects"))
    parser.add_argument("--model", type=Path, action="append", required=True, help="a checkpoint (repeatable)")
    parser.add_argument("--near-duplicates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    pictures, labels, copies_of = evaluation_pictures(args.data, near_duplicates=args.near_duplicates, seed=args.seed)
    print(f"{len(labels)} images in {len(set(labels.tolist()))} categories, {len(copies_of)} near-duplicates "
          f"({time.perf_counter() - started:.0f} s to read)")
    print("| model | P@10 | near-dup R@1 | near-dup R@10 | seconds |")
    print("|---|---|---|---|---|")
    for path in args.model:
        started = time.perf_counter()
        model, checkpoint = load_checkpoint(path)
        encoder = AutoencoderEncoder(key=path.name, model=model, mean=checkpoint["mean"], std=checkpoint["std"])
        scores = measure(encoder, pictures, labels, copies_of)
        print(f"| {path.name} | {scores['P@10']:.3f} | {scores['R@1']:.3f} | {scores['R@10']:.3f} | "
              f"{time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
