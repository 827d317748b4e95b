"""Ingest on an accelerator: the standard profile's models on --device against the same machine's CPU
(issue 14).

    python -m bench.ingest_device [--device cuda] [--n 120] [--workers 2] [--cpu-n 16] [--photos FOLDER] [--no-write]

The standard profile (CLIP ViT-B-32, autoencoder v2, DeepLabV3-ResNet101) with random weights of the
real architectures (same cost; bench.common.standard_random_weights), on its own database
(`imaginaition_bench_device`) and folders, emptied before each run. Photos: --photos (any folder of
images), else bench.common.bench_photos.
1. load: each model's load time on the device;
2. bare forward on the device: the three models called directly on the decoded pictures, in batches of
   16, 32 and 64 pictures (and the pipeline's own batch size), after a warm-up batch; the precision each
   model chose on its first batch (half precision kept only where it agrees with fp32: vectors cosine
   >= 0.999, masks IoU >= 0.98);
3. `import_folder --sync` in this process (models loaded), stages timed as in bench.ingest;
4. `import_folder` with --workers real `manage.py qcluster` processes on the device, from the start of
   the import until every image has embeddings and masks (each worker loads the models on its first
   task: included);
5. the same bare forward on this machine's CPU (fp32, the process's threads) on the first --cpu-n
   pictures: the speed-up of the device over its own host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from bench.common import (REPO_ROOT, bench_photos, describe_photos, empty_bench_database, load_average,
                          photo_folder_subset, setup_django, standard_random_weights, table, write_section)
from bench.ingest import bare_forward, decode_all, run_sync, run_workers

DATABASE = "imaginaition_bench_device"
BENCH_VAR = REPO_ROOT / "var" / DATABASE
BATCH_SIZES = (16, 32, 64)


def accelerator_name(device: str) -> str:
    import torch

    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        driver = ""
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
        return (f"{properties.name} ({properties.total_memory / 2**30:.0f} GiB, driver {driver or '?'}), "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    return f"{device}, torch {torch.__version__}"


def photo_folder(args) -> tuple[Path, str]:
    """The folder of --n photos to import, and a sentence saying what they are."""
    if args.photos:
        source = Path(args.photos)
        files = sorted(path for path in source.iterdir() if path.is_file() and path.name != "manifest.json")[:args.n]
        target = BENCH_VAR / "import"
        facts = {"files": [{"file": path.name} for path in files]}
        photo_folder_subset(source, facts, len(files), target)
        sizes = sorted(path.stat().st_size for path in files)
        return target, (f"{len(files)} image files from {source.name}/ ({sizes[0] / 1e3:.0f} KB-{sizes[-1] / 1e6:.1f} MB "
                        f"per file, median {sizes[len(sizes) // 2] / 1e6:.2f} MB).")
    photos, facts = bench_photos(max(args.n, 200))
    return photo_folder_subset(photos, facts, args.n, BENCH_VAR / "import"), describe_photos(facts, args.n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "mps", "cpu"], default="cuda")
    parser.add_argument("--n", type=int, default=120, help="photos to ingest")
    parser.add_argument("--workers", type=int, default=2, help="qcluster worker processes (IMAGINAITION_WORKERS)")
    parser.add_argument("--cpu-n", type=int, default=16, help="pictures of the host CPU's bare forward")
    parser.add_argument("--photos", help="a folder of images to use instead of bench_photos")
    parser.add_argument("--raw", help="also write the raw figures to this JSON file")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/BENCHMARKS.md")
    args = parser.parse_args()
    import torch

    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available, "cpu": lambda: True}
    if not available[args.device]():  # else a traceback from deep in torch, after the photos were listed
        raise SystemExit(f"--device {args.device}: this machine has no such device for PyTorch; run it where one "
                         "is (bench/gpu_check.sh), or measure the CPU with --device cpu")
    os.environ["IMAGINAITION_DEVICE"] = args.device  # read by the settings, inherited by the workers
    os.environ["IMAGINAITION_MODEL_PROFILE"] = "standard"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("IMAGINAITION_LOG_LEVEL", "WARNING")
    all_started = time.perf_counter()
    setup_django(DATABASE)
    os.environ["IMAGINAITION_WEIGHTS_DIR"] = str(standard_random_weights())  # the workers' too
    from django.conf import settings
    from django.test import override_settings

    from retrieval.encoders import registry

    settings.IMAGINAITION_WEIGHTS_DIR = Path(os.environ["IMAGINAITION_WEIGHTS_DIR"])
    folder, photos_text = photo_folder(args)
    print(photos_text, flush=True)
    from retrieval.encoders.devices import batch_size as device_batch_size

    raw: dict = {"device": accelerator_name(args.device), "n": args.n, "pipeline_batch": device_batch_size()}

    def save_raw() -> None:  # after each step: a run cut short still leaves what it measured
        if args.raw:
            Path(args.raw).write_text(json.dumps(raw, indent=1))

    models = registry.active_models()
    keys = (models.semantic, models.content, models.segmenter)
    raw["loads"] = {}
    for key in keys:
        started = time.perf_counter()
        registry.get_model(key)
        raw["loads"][key] = time.perf_counter() - started
    pictures, raw["decode_s"] = decode_all(folder)
    raw["bare"] = {}
    for batch_size in sorted({*BATCH_SIZES, raw["pipeline_batch"]}):
        raw["bare"][batch_size] = bare_forward(models, pictures, batch_size)
        print(f"bare forward on {args.device}, batches of {batch_size}: "
              f"{sum(raw['bare'][batch_size].values()):.2f} s for {len(pictures)} pictures", flush=True)
        save_raw()
    raw["precisions"] = registry.loaded_precisions()

    empty_bench_database()
    mask_sample: list = []
    sync_wall, watch = run_sync(folder, models, mask_sample)
    raw["sync"] = {"wall": sync_wall, "stages": dict(watch.seconds)}
    print(f"import_folder --sync: {sync_wall:.1f} s", flush=True)
    save_raw()
    empty_bench_database()
    raw["workers"] = run_workers(folder, len(pictures), args.workers, database=DATABASE, bench_var=BENCH_VAR)
    raw["worker_log_precisions"] = [line.split("] ", 1)[-1] for line in
                                    (BENCH_VAR / "qcluster.log").read_text(errors="replace").splitlines()
                                    if " vs fp32 on the first batch" in line][:6]
    print(f"workers: {raw['workers']['wall']:.1f} s", flush=True)
    save_raw()
    empty_bench_database()
    registry.unload_all()

    cpu_pictures = pictures[:args.cpu_n]
    with override_settings(IMAGINAITION_DEVICE="cpu", IMAGINAITION_PRECISION="fp32"):
        raw["cpu_bare"] = bare_forward(models, cpu_pictures, device_batch_size())
        registry.unload_all()
    raw["cpu_threads"] = torch.get_num_threads()
    raw["total_s"] = time.perf_counter() - all_started
    save_raw()
    print(json.dumps(raw, indent=1), flush=True)
    body = report(raw, args, photos_text, models)
    print(body)
    if not args.no_write:
        command = f"python -m bench.ingest_device --device {args.device}" + ("" if args.n == 120 else f" --n {args.n}")
        write_section(f"Ingest on an accelerator ({args.device})", command, body)


def report(raw: dict, args, photos_text: str, models) -> str:
    n, cpu_n = raw["n"], args.cpu_n
    roles = (("semantic", models.semantic), ("content", models.content), ("segmenter", models.segmenter))
    best_batch = min(raw["bare"], key=lambda size: sum(raw["bare"][size].values()))
    device_ms = {key: 1000 * raw["bare"][best_batch][key] / n for _, key in roles}
    cpu_ms = {key: 1000 * raw["cpu_bare"][key] / cpu_n for _, key in roles}
    model_rows = [[role, f"`{key}`", raw["loads"][key], *(1000 * raw["bare"][size][key] / n for size in raw["bare"]),
                   cpu_ms[key], cpu_ms[key] / device_ms[key]] for role, key in roles]
    model_rows.append(["all three", "", sum(raw["loads"].values()),
                       *(1000 * sum(raw["bare"][size].values()) / n for size in raw["bare"]),
                       sum(cpu_ms.values()), sum(cpu_ms.values()) / sum(device_ms.values())])
    model_table = table(["role", "model", "load s", *(f"{args.device} ms/image, batch {size}" for size in raw["bare"]),
                         f"host CPU ms/image ({raw['cpu_threads']} threads, fp32)",
                         f"speed-up ({args.device}, batch {best_batch})"], model_rows)
    pipeline_batch = raw["pipeline_batch"]
    model_s = sum(raw["bare"][pipeline_batch].values())
    sync, workers = raw["sync"]["wall"], raw["workers"]["wall"]
    runs_table = table(["path", "wall s", "images/s", f"model s (bare forward, batch {pipeline_batch})", "overhead %"], [
        ["`import_folder --sync` (1 process)", sync, n / sync, model_s, 100 * (sync - model_s) / model_s],
        [f"`import_folder` + {args.workers} `qcluster` workers", workers, n / workers, model_s,
         100 * (workers - model_s) / model_s]])
    stages = sorted(raw["sync"]["stages"].items(), key=lambda item: -item[1])
    stage_table = table(["stage of the sync run", "s", "ms/image"], [[name, s, 1000 * s / n] for name, s in stages])
    precisions = "; ".join(f"{key}: {text}" for key, text in raw["precisions"].items())
    cpu_standard_images_s = 1000 / sum(cpu_ms.values())
    return "\n\n".join([
        f"Accelerator: {raw['device']}. {photos_text} Standard profile, random weights of the real architectures "
        "(same cost as the real ones).",
        runs_table,
        f"Per model: bare forward on the device over all {n} pictures after a warm-up batch, at three batch sizes; "
        f"the host's CPU on the first {cpu_n} pictures (one pass per picture for the segmenter, as on any CPU); "
        "load s is the one-time load per process:",
        model_table,
        f"Precision chosen on the first batch (this process): {precisions}. In the workers: "
        + ("; ".join(raw["worker_log_precisions"]) or "not logged") + ".",
        stage_table,
        f"Notes: the pipeline's batch is {pipeline_batch} images (the device's default, or IMAGINAITION_BATCH_SIZE). "
        "The workers' wall time includes each worker "
        f"process loading the models on its first task; every image was searchable after "
        f"{raw['workers']['embedded']:.1f} s; {raw['workers']['failed']} images failed. For comparison, the same "
        f"three models on this host's CPU alone would ingest at most {cpu_standard_images_s:.2f} images/s (model time "
        f"only). Decoding the {n} files for the bare forward took {raw['decode_s']:.1f} s. Whole benchmark: "
        f"{raw['total_s'] / 60:.1f} min; load average at the end {load_average()}.",
    ])


if __name__ == "__main__":
    main()
