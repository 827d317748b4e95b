"""Ingest by workers: throughput by worker processes and torch threads, and the standard profile's
ingest before and after the hardware work (issue 14).

    python -m bench.ingest_workers [--n 100] [--standard-n 32] [--workers 1 2 4] [--no-write]
    python -m bench.ingest_workers --standard-only --standard-runs before now one-worker --no-write

On its own database (`imaginaition_bench_workers`) and folders, emptied before each run; wall time from
the start of `import_folder` (enqueue) until every image has its embeddings and its masks, with real
`manage.py qcluster` processes started just before (each worker process loads the models on its first
task: included, as for a user). Photos: bench.common.bench_photos.
1. Offline profile, --n photos, with 1, 2 and 4 worker processes (IMAGINAITION_WORKERS), each process
   with torch's default thread count (every core: what the workers did before) and with its share of
   the cores (cores / workers, at least 1: what they do now).
2. Standard profile (CLIP ViT-B-32, autoencoder v2, DeepLabV3-ResNet101; random weights of the same
   shapes: same cost), --standard-n photos, 2 workers: the code as it was when the issue was filed
   (commit 8b69465, checked out as a git worktree under var/, run with this environment) against the
   code now (torch), now with one worker process holding every core's threads (IMAGINAITION_WORKERS=1),
   now with IMAGINAITION_SEGMENTER_RUNTIME=openvino (converted once beforehand: the conversion's time
   is reported), and now with IMAGINAITION_SEGMENTER=torchvision/lraspp_mobilenet_v3_large.
--standard-only skips part 1, --standard-runs picks part 2's runs; only a whole run writes the docs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (REPO_ROOT, bench_env, bench_photos, describe_photos, empty_bench_database,
                          ingest_by_workers, load_average, photo_folder_subset, setup_django, standard_random_weights,
                          table, write_section)

DATABASE = "imaginaition_bench_workers"
BENCH_VAR = REPO_ROOT / "var" / DATABASE
BEFORE_COMMIT = "8b69465"  # the last commit before the hardware work
MODEL_CACHE = BENCH_VAR / "models"  # the workers' OpenVINO conversions


STANDARD_RUNS = ("before", "now", "one-worker", "openvino", "lraspp")


def before_checkout() -> Path:
    """The code as it was before the hardware work, as a git worktree (made once)."""
    folder = BENCH_VAR / f"before-{BEFORE_COMMIT}"
    if not (folder / "manage.py").is_file():
        subprocess.run(["git", "worktree", "prune"], cwd=REPO_ROOT, check=True)
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(folder), BEFORE_COMMIT], cwd=REPO_ROOT,
                       check=True, capture_output=True)
    return folder


def ingest(folder: Path, n: int, env: dict[str, str], *, repo: Path = REPO_ROOT) -> dict:
    """Start a cluster of `repo`, enqueue the folder's images with that repo's import_folder, wait; seconds."""
    empty_bench_database()
    log = BENCH_VAR / "qcluster.log"
    result = ingest_by_workers(
        env=env, log=log, n=n, repo=repo,
        enqueue=lambda: subprocess.run([sys.executable, "manage.py", "import_folder", str(folder)], cwd=repo, env=env,
                                       check=True, capture_output=True))
    text = log.read_text(errors="replace")
    decisions = sorted(set(re.findall(r"(\S+ runs in \w+ on \w+ \([^)]*\))", text))
                       | set(re.findall(r"(\S+ segments with [^\n]*)", text)))
    return {**result, "images_per_s": n / result["wall"], "precision": decisions}


def openvino_converted(weights: Path, key: str) -> float:
    """Load `key`'s segmenter from the weights folder with the OpenVINO runtime, which converts it as the
    first worker to load it would (into the cache the bench's workers use); seconds taken (about 0 when
    already converted)."""
    from django.test import override_settings

    from retrieval.encoders import deeplab, registry

    began = time.perf_counter()
    with override_settings(IMAGINAITION_WEIGHTS_DIR=weights, IMAGINAITION_MODEL_CACHE_DIR=MODEL_CACHE,
                           IMAGINAITION_SEGMENTER_RUNTIME="openvino"):
        deeplab.load(registry.MODELS[key])
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="photos for the offline-profile runs")
    parser.add_argument("--standard-n", type=int, default=32, help="photos for the standard-profile runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker process counts")
    parser.add_argument("--standard-only", action="store_true", help="skip the offline-profile thread table")
    parser.add_argument("--standard-runs", nargs="+", choices=STANDARD_RUNS, default=list(STANDARD_RUNS),
                        help="the standard-profile runs to make")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/BENCHMARKS.md")
    args = parser.parse_args()
    whole = not args.standard_only and args.standard_runs == list(STANDARD_RUNS)
    os.environ.setdefault("IMAGINAITION_LOG_LEVEL", "WARNING")
    setup_django(DATABASE)
    started = time.perf_counter()
    load_before = load_average()
    cores = os.cpu_count() or 1
    photos, facts = bench_photos(max(args.n, args.standard_n, 200))
    folder = photo_folder_subset(photos, facts, args.n, BENCH_VAR / "import")
    standard_folder = photo_folder_subset(photos, facts, args.standard_n, BENCH_VAR / "import-standard")

    thread_rows = []
    for workers in [] if args.standard_only else args.workers:
        row: list = [workers]
        for label, threads in (("default", str(cores)), ("share", "0")):
            result = ingest(folder, args.n, bench_env(DATABASE, IMAGINAITION_MODEL_PROFILE="offline",
                                                      IMAGINAITION_WORKERS=str(workers),
                                                      IMAGINAITION_TORCH_THREADS=threads))
            print(f"offline, {workers} workers, {label} threads: {result['wall']:.1f} s ({result['failed']} failed), "
                  f"load {load_average()}", flush=True)
            row += [result["images_per_s"]]
        row += [max(1, cores // workers), row[2] / row[1]]
        thread_rows.append(row)

    weights = standard_random_weights()
    standard_env = {"IMAGINAITION_MODEL_PROFILE": "standard", "IMAGINAITION_WEIGHTS_DIR": str(weights),
                    "IMAGINAITION_WORKERS": "2", "IMAGINAITION_MODEL_CACHE_DIR": str(MODEL_CACHE)}
    lraspp = "torchvision/lraspp_mobilenet_v3_large"
    conversions = ({"torchvision/deeplabv3_resnet101": openvino_converted(weights, "torchvision/deeplabv3_resnet101")}
                   if "openvino" in args.standard_runs else {})
    runs = {"before": (f"before (commit {BEFORE_COMMIT}): batches of 16 per forward pass, torch's default threads, fp32",
                       before_checkout, {"IMAGINAITION_VAR_DIR": str(REPO_ROOT / "var"),  # this checkout's database
                                         "IMAGINAITION_PGDATA": str(REPO_ROOT / "var" / "pgdata")}),
            "now": ("now (default): thread share, one picture per DeepLab pass, no auxiliary head, precision auto, "
                    "malloc reusing large blocks, one task per image (embed, then segment the same decoded batch), "
                    "batch norms folded into the convolutions",
                    lambda: REPO_ROOT, {}),
            "one-worker": ("now, IMAGINAITION_WORKERS=1 (one process with every core's threads)", lambda: REPO_ROOT,
                           {"IMAGINAITION_WORKERS": "1"}),
            "openvino": ("now, IMAGINAITION_SEGMENTER_RUNTIME=openvino (converted beforehand)", lambda: REPO_ROOT,
                         {"IMAGINAITION_SEGMENTER_RUNTIME": "openvino"}),
            "lraspp": (f"now, IMAGINAITION_SEGMENTER={lraspp}", lambda: REPO_ROOT, {"IMAGINAITION_SEGMENTER": lraspp})}
    standard_rows = []
    notes = []
    for short in args.standard_runs:
        name, repo_of, extra = runs[short]
        result = ingest(standard_folder, args.standard_n, bench_env(DATABASE, **{**standard_env, **extra}),
                        repo=repo_of())
        print(f"standard, {name}: {result['wall']:.1f} s ({result['failed']} failed), load {load_average()}", flush=True)
        standard_rows.append([name, result["wall"], result["images_per_s"], result["failed"]])
        notes += [f"{name}: {decision}" for decision in result["precision"]]
    baseline = standard_rows[0][1]
    for row in standard_rows:
        row.insert(3, baseline / row[1])

    offline_part = [
        f"Offline profile, {args.n} photos ({describe_photos(facts, args.n)}); `import_folder` + `qcluster`, from the "
        f"start of the import until every image has embeddings and masks, model loading in each worker included; "
        f"{cores} cores. Default threads: each process with torch's default (every core), as before; share: each "
        f"process with cores / workers threads (at least 1), as now.",
        table(["worker processes", "images/s, default threads", "images/s, thread share", "threads each (share)",
               "share / default"], thread_rows)] if thread_rows else []
    conversion_part = [
        "Conversion for OpenVINO before the runs (once per weight file, as the first worker to load a segmenter "
        "does; later processes compile the saved network in about a second): "
        + ", ".join(f"{key} {seconds:.0f} s" for key, seconds in conversions.items()) + "."] if conversions else []
    body = "\n\n".join([
        *offline_part,
        f"Standard profile (random weights of the real shapes: the same cost), {args.standard_n} photos, 2 worker "
        f"processes unless the row says otherwise, batches of 16 (IMAGINAITION_BATCH_SIZE); speed-up against the "
        f"first row:",
        table(["code", "wall s", "images/s", "speed-up (goal ≥ 1.5)", "failed"], standard_rows),
        *conversion_part,
        "Runtime and precision chosen by each worker process on its first batch (logged): "
        + ("; ".join(notes) if notes else "none logged") + ".",
        f"Load average at the start {load_before}, at the end {load_average()}; whole benchmark "
        f"{(time.perf_counter() - started) / 60:.1f} min.",
    ])
    print(body)
    if whole and not args.no_write:
        write_section("Ingest by workers: threads and the standard profile", "python -m bench.ingest_workers", body)


if __name__ == "__main__":
    main()
