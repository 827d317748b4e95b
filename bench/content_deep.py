"""A deeper variant of the content autoencoder, trained and measured like `autoencoder/v2` (an experiment:
the product ships ConvAutoencoder only; docs/CONTENT_MODEL.md has the numbers).

    python -m bench.content_deep --train-data /tmp/ae2-data --out /tmp/deep.pt [--epochs 1] [--consistency 1] \
        [--views near-copies|strong] [--architecture deep|shallow] [--hybrid] [--distillation W]

Same block design (3×3 conv + ReLU + BatchNorm, MaxPool downsampling, transposed convolutions back
to 64×64, a 1,024-value code), but four poolings instead of two: 64 → 32 → 16 → 8 → 4, the code a
64×4×4 map whose values each see the whole 64×64 picture (a receptive field of 92 pixels)
instead of a 24-pixel patch.
The question it answers: does a wider receptive field, with the same training, raise category
precision? Measured on the evaluation set of `bench.content_variants` (built when missing). With
`--hybrid`, also the hybrid policy (`retrieval.policy.merge`, default preferences) over exact top-50
lists of the active semantic model and of each content model (`autoencoder/v2`, the variant): category
P@10 and near-dup R@1 as `manage.py evaluate` measures them, without a database. `--views strong`
trains with SimCLR-strength views instead of near-copies (`retrieval.autoencoder_training.strong_view`);
`--architecture shallow` trains ConvAutoencoder (the product's network) instead of the deeper one.
`--distillation W` adds the relational distillation from the active semantic model
(`retrieval.autoencoder_training.distillation_loss`; `--teacher-cache F.npy` keeps its vectors of the
training pictures for the next run).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.content_variants import encode_all, evaluation_pictures, measure  # sets Django up
from retrieval.autoencoder_training import VIEWS, autoencoder_train
from retrieval.encoders import registry
from retrieval.encoders.autoencoder import AutoencoderEncoder, ConvAutoencoder, conv_block
from retrieval.policy import Candidate, Preferences, merge


class DeepAutoencoder(ConvAutoencoder):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            *conv_block(nn.Conv2d(3, 16, 3, padding=1), 16), *conv_block(nn.Conv2d(16, 16, 3, padding=1), 16),
            nn.MaxPool2d(2),  # 64 → 32
            *conv_block(nn.Conv2d(16, 32, 3, padding=1), 32), *conv_block(nn.Conv2d(32, 32, 3, padding=1), 32),
            nn.MaxPool2d(2),  # 32 → 16
            *conv_block(nn.Conv2d(32, 64, 3, padding=1), 64), *conv_block(nn.Conv2d(64, 64, 3, padding=1), 64),
            nn.MaxPool2d(2),  # 16 → 8
            *conv_block(nn.Conv2d(64, 64, 3, padding=1), 64),
            nn.MaxPool2d(2),  # 8 → 4
            nn.Conv2d(64, 64, 3, padding=1),  # the code: 64×4×4 = 1024
        )
        self.decoder = nn.Sequential(
            *conv_block(nn.ConvTranspose2d(64, 64, 3, padding=1), 64),
            *conv_block(nn.ConvTranspose2d(64, 64, 2, stride=2), 64),  # 4 → 8
            *conv_block(nn.ConvTranspose2d(64, 32, 2, stride=2), 32),  # 8 → 16
            *conv_block(nn.ConvTranspose2d(32, 16, 2, stride=2), 16),  # 16 → 32
            *conv_block(nn.ConvTranspose2d(16, 16, 2, stride=2), 16),  # 32 → 64
            nn.Conv2d(16, 3, 3, padding=1),
        )


ARCHITECTURES: dict[str, type[ConvAutoencoder]] = {"deep": DeepAutoencoder, "shallow": ConvAutoencoder}


def hybrid_scores(semantic: np.ndarray, content: np.ndarray, labels: np.ndarray, copies_of: list[int]) -> tuple[float, float]:
    """(category P@10, near-dup R@1) of the default hybrid policy; the first len(labels) rows are the
    originals (queries among each other), the rest the copies (queries among everything)."""
    def merged(query: int, pool: np.ndarray) -> list[int]:
        squared = ((semantic[pool] - semantic[query]) ** 2).sum(axis=1)
        l1 = np.abs(content[pool] - content[query]).sum(axis=1)
        found = [[Candidate(int(pool[i]), float(1 - d[i] / 2)) for i in np.argsort(d, kind="stable")[:50]]
                 for d in (squared, l1)]
        return [r.image_id for r in merge(semantic=found[0], content=found[1], preferences=Preferences())]
    originals, everything = len(labels), np.arange(len(semantic))
    precision = np.mean([np.mean(labels[merged(q, np.delete(everything[:originals], q))[:10]] == labels[q])
                         for q in range(originals)])
    recall = np.mean([merged(originals + j, np.delete(everything, originals + j))[0] == original
                      for j, original in enumerate(copies_of)])
    return float(precision), float(recall)


def _semantic_teacher(cache: Path | None):
    """The active semantic model's vectors of the training pictures (read from `cache` when it holds
    as many rows; the training split is seeded, so the same seed gives the same pictures)."""
    def teacher(pictures) -> np.ndarray:
        if cache is not None and cache.exists():
            vectors = np.load(cache)
            if len(vectors) == len(pictures):
                return vectors
        started = time.perf_counter()
        vectors = encode_all(registry.get_model(registry.active_models().semantic), list(pictures), batch=32)
        print(f"teacher: {len(pictures)} pictures in {time.perf_counter() - started:.0f} s", flush=True)
        if cache is not None:
            np.save(cache, vectors)
        return vectors
    return teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-data", type=Path, required=True, help="python -m bench.autoencoder_data DIR")
    parser.add_argument("--data", type=Path, default=Path("/tmp/evalset/objects"), help="the evaluation set")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--consistency", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", choices=[v for v in VIEWS if v != "crops"], default="near-copies")
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="deep")
    parser.add_argument("--hybrid", action="store_true", help="also the hybrid policy with v2 and with the variant")
    parser.add_argument("--distillation", type=float, default=0.0,
                        help="weight of the relational distillation from the active semantic model (0: none)")
    parser.add_argument("--teacher-cache", type=Path, help="a .npy file keeping the teacher's vectors between runs")
    args = parser.parse_args()
    network = ARCHITECTURES[args.architecture]
    report = autoencoder_train(data_dir=args.train_data, out=args.out, epochs=args.epochs, batch_size=64,
                               seed=args.seed, progress=True, consistency=args.consistency, views=args.views,
                               model_factory=network, distillation=args.distillation,
                               teacher=_semantic_teacher(args.teacher_cache) if args.distillation else None)
    print(f"trained in {report.seconds:.0f} s; held-out copy R@1 {report.heldout_copy_recall_at_1:.3f}")

    pictures, labels, copies_of = evaluation_pictures(args.data, near_duplicates=200, seed=args.seed)
    checkpoint = torch.load(args.out, map_location="cpu", weights_only=True)
    model = network()
    model.load_state_dict(checkpoint["state_dict"])
    encoder = AutoencoderEncoder(key="deep", model=model, mean=checkpoint["mean"], std=checkpoint["std"])
    started = time.perf_counter()
    scores = measure(encoder, pictures, labels, copies_of)
    print(f"P@10 {scores['P@10']:.3f}, near-dup R@1 {scores['R@1']:.3f}, R@10 {scores['R@10']:.3f} "
          f"({time.perf_counter() - started:.0f} s)")
    if args.hybrid:
        semantic = encode_all(registry.get_model(registry.active_models().semantic), pictures, batch=32)
        semantic /= np.linalg.norm(semantic, axis=1, keepdims=True)
        for name, content in (("autoencoder/v2", encode_all(registry.get_model("autoencoder/v2"), pictures, batch=32)),
                              ("the variant", encode_all(encoder, pictures, batch=32))):
            precision, recall = hybrid_scores(semantic, content, labels, copies_of)
            print(f"hybrid with {name}: P@10 {precision:.3f}, near-dup R@1 {recall:.3f}", flush=True)


if __name__ == "__main__":
    main()
