"""Shared benchmark plumbing: a separate database, synthetic data, machine facts, the results file.

Benchmarks never touch the user's database: they run on `imaginaition_bench` (created and migrated
here) on the same PostgreSQL server (embedded, or the one DATABASE_URL points at).
"""

from __future__ import annotations

import os
import platform
import re
import statistics
from datetime import date
from pathlib import Path

BENCH_DATABASE = "imaginaition_bench"
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def setup_django(database: str = BENCH_DATABASE) -> None:
    """Point Django at the benchmark database (creating and migrating it), then set it up."""
    os.environ["IMAGINAITION_DATABASE_NAME"] = database
    bench_folders(database)  # index files and media of the benchmark database live apart from the user's
    # Benchmarks import the photo folders they assemble under var/ (import_folder reads only under the roots).
    os.environ.setdefault("IMAGINAITION_IMPORT_ROOTS", str(Path(__file__).resolve().parent.parent / "var"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{database}"')
    with connection.cursor() as cursor:
        # Every benchmark loads its own data. Empty the vectors a previous run left before migrate,
        # whose post-migrate step (re)creates pgvector's HNSW indexes: over 1M rows that takes 30+ min.
        cursor.execute("SELECT to_regclass('gallery_embedding')")
        if cursor.fetchone()[0] is not None:
            cursor.execute("TRUNCATE gallery_embedding")
    call_command("migrate", verbosity=0)


def vector_units(flags: set[str]) -> str:
    """The CPU features that decide the models' speed here (the same cloud CPU name comes with and
    without AVX512): the widest vector unit, native bf16, int8 dot products."""
    widest = next((name for flag, name in (("avx512f", "AVX512"), ("avx2", "AVX2"), ("asimd", "NEON"))
                   if flag in flags), "no AVX2")
    extras = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX"), ("avx512_vnni", "VNNI"))
              if flag in flags]
    if not extras:
        return widest if widest == "no AVX2" else f"{widest} only"
    return ", ".join([widest, *extras])


def machine() -> str:
    model = "unknown CPU"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith(("flags", "Features"))), [])
        model += f" ({vector_units(set(flags))})"
    except OSError:
        pass
    memory = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} cores, {model}{memory}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def percentiles(samples_ms: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples_ms)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return q[49], q[94], q[98]


def table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def section_title(name: str, sizes: list[int], default_sizes: list[int]) -> str:
    """Runs at other sizes (e.g. 1M) get a section of their own instead of replacing the default run's."""
    if sorted(sizes) == sorted(default_sizes):
        return name
    return f"{name} (N = {', '.join(f'{n:,}' for n in sizes)})"


def write_section(name: str, command: str, body: str) -> None:
    """Replace (or add) the section `name` of docs/BENCHMARKS.md with today's results."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n\nEach section is rewritten by its benchmark.\n"
    section = (f"<!-- {name}:start -->\n## {name}\n\n- date: {date.today().isoformat()}\n- machine: {machine()}\n"
               f"- command: `{command}`\n\n{body.strip()}\n<!-- {name}:end -->")
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


REPO_ROOT = Path(__file__).resolve().parent.parent


def bench_folders(database: str) -> Path:
    """Point media and index folders at var/<database>/ (whatever the environment says: never the user's)."""
    folder = REPO_ROOT / "var" / database
    os.environ["IMAGINAITION_MEDIA_ROOT"] = str(folder / "media")
    os.environ["IMAGINAITION_INDEX_DIR"] = str(folder / "indexes")
    return folder


# --- Real photos for the ingest and memory benchmarks -------------------------------------------------

PHOTO_CACHE = REPO_ROOT / "var" / "bench-photos"  # var/ is git-ignored

# Photographs (not illustrations or clip art) that Debian packages ship, picked by looking at each file.
DEBIAN_PHOTOS: dict[str, list[str]] = {
    "mate-backgrounds": [f"usr/share/backgrounds/mate/nature/{name}.jpg" for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")],
    "lomiri-wallpapers-16.04": [f"usr/share/backgrounds/{name}.jpg" for name in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich",
        "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")],
    "lomiri-wallpapers-20.04": ["usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"],
    "plasma-workspace-wallpapers": [f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg" for name in (
        "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
        "OneStandsOut", "Path", "summer_1am")],
}
# Photographs bundled with Python packages of the test environment (file names in the package folder).
PACKAGE_PHOTOS: dict[str, list[str]] = {
    "skimage.data": ["astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
                     "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
                     "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png"],
    "sklearn.datasets.images": ["china.jpg", "flower.jpg"],
}


def _debian_package_root(package: str) -> Path | None:
    """Where the package's files are: / when installed, else the .deb downloaded and unpacked in the cache."""
    if all(Path("/", member).is_file() for member in DEBIAN_PHOTOS[package]):
        return Path("/")
    import subprocess

    root = PHOTO_CACHE / "debs" / package
    if root.is_dir():
        return root
    downloads = PHOTO_CACHE / "debs"
    downloads.mkdir(parents=True, exist_ok=True)

    def download() -> list[Path]:
        subprocess.run(["apt-get", "download", package], cwd=downloads, capture_output=True)
        return sorted(downloads.glob(f"{package}_*.deb"))

    debs = download()
    if not debs and os.geteuid() == 0:  # stale or missing package lists
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        debs = download()
    if not debs:
        print(f"  ! could not download Debian package {package}; its photos are left out", flush=True)
        return None
    partial = root.with_name(root.name + ".partial")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(partial)], check=True)
    partial.rename(root)
    return root


def _package_folder(module: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def bench_photos(n: int = 200, seed: int = 0) -> tuple[Path, dict]:
    """A folder of n distinct real-photo files (different bytes), built once under var/bench-photos/.

    The photos come from Debian packages (downloaded with apt-get, unpacked, never installed) and from
    scikit-image / scikit-learn. When fewer than n exist, the rest are crops of them (random regions of
    30-90 % of each side of the larger photos, saved as JPEG quality 92). Returns (folder, facts).
    """
    import hashlib
    import io
    import json
    import random
    import shutil

    from PIL import Image as PILImage

    folder = PHOTO_CACHE / f"photos-{n}-seed{seed}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        facts = json.loads(manifest.read_text())
        if all((folder / item["file"]).is_file() for item in facts["files"]):
            return folder, facts
    shutil.rmtree(folder, ignore_errors=True)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    originals: list[tuple[str, Path]] = []  # (source, path)
    for package, members in DEBIAN_PHOTOS.items():
        root = _debian_package_root(package)
        originals += [(f"debian:{package}", root / member) for member in members
                      if root is not None and (root / member).is_file()]
    for module, names in PACKAGE_PHOTOS.items():
        package_folder = _package_folder(module)
        originals += [(f"pypi:{module.split('.')[0]}", package_folder / name) for name in names
                      if package_folder is not None and (package_folder / name).is_file()]

    files, digests = [], set()

    def keep(data: bytes, name: str, source: str, kind: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if digest in digests or len(files) >= n:
            return
        digests.add(digest)
        (staging / name).write_bytes(data)
        with PILImage.open(staging / name) as picture:
            width, height = picture.size
        files.append({"file": name, "source": source, "kind": kind, "width": width, "height": height,
                      "bytes": len(data)})

    for index, (source, path) in enumerate(originals):
        keep(path.read_bytes(), f"{index:03d}-{path.name}", source, "photo")
    real = len(files)
    rng = random.Random(seed)

    def smaller_side(path: Path) -> int:
        with PILImage.open(path) as picture:
            return min(picture.size)

    croppable = [(source, path) for source, path in originals if smaller_side(path) >= 480]
    attempt = 0
    while len(files) < n and croppable and attempt < 10 * n:
        source, path = croppable[attempt % len(croppable)]
        attempt += 1
        with PILImage.open(path) as picture:
            picture.load()
            width, height = picture.size
            crop_w, crop_h = int(width * rng.uniform(0.3, 0.9)), int(height * rng.uniform(0.3, 0.9))
            left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
            crop = picture.crop((left, top, left + crop_w, top + crop_h))
            crop = crop.convert("RGB") if crop.mode not in ("RGB", "L") else crop
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=92)
        keep(buffer.getvalue(), f"{len(files):03d}-crop-{path.stem}-{left}x{top}+{crop_w}x{crop_h}.jpg", source, "crop")
    facts = {"n": len(files), "real_photos": real, "crops": len(files) - real, "seed": seed, "files": files}
    (staging / "manifest.json").write_text(json.dumps(facts, indent=1))
    staging.rename(folder)
    return folder, facts


def photo_folder_subset(folder: Path, facts: dict, n: int, target: Path) -> Path:
    """`target` holding the first n photos of `folder` (hard links: import_folder refuses symlinks)."""
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for item in facts["files"][:n]:
        try:
            os.link(folder / item["file"], target / item["file"])
        except OSError:
            shutil.copyfile(folder / item["file"], target / item["file"])
    return target


def describe_photos(facts: dict, n: int | None = None) -> str:
    """One paragraph: how many real photos and crops, where from, their sizes."""
    files = facts["files"][:n] if n else facts["files"]
    sources: dict[str, int] = {}
    for item in files:
        if item["kind"] == "photo":
            sources[item["source"]] = sources.get(item["source"], 0) + 1
    real = sum(item["kind"] == "photo" for item in files)
    pixels = sorted(item["width"] * item["height"] / 1e6 for item in files)
    sizes = sorted(item["bytes"] / 1e6 for item in files)
    text = (f"{len(files)} image files: {real} distinct real photos ("
            + ", ".join(f"{count} from {source}" for source, count in sources.items()) + ")")
    if real < len(files):
        text += (f" and {len(files) - real} distinct crops of them (random regions of 30-90 % of each side, "
                 "JPEG quality 92), because fewer than that many real photos are available offline")
    return (text + f"; {pixels[0]:.2f}-{pixels[-1]:.1f} MP (median {statistics.median(pixels):.1f} MP), "
            f"{sizes[0] * 1000:.0f} KB-{sizes[-1]:.1f} MB per file (median {statistics.median(sizes):.2f} MB), "
            "given to the pipeline as they are (not resized).")


def empty_bench_database() -> None:
    """Empty the benchmark database's gallery, task queue and index state, and its media and index folders."""
    import shutil

    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE gallery_image, gallery_embedding, gallery_mask, retrieval_deletedimage, "
                       "retrieval_indexstate, django_q_ormq, django_q_task CASCADE")
    for folder in (Path(settings.MEDIA_ROOT), Path(settings.IMAGINAITION_INDEX_DIR)):
        if PHOTO_CACHE.parent in folder.resolve().parents:  # only ever the benchmark's own folders under var/
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)


# --- The standard profile's models with random weights (same cost as the real ones) ---------------------

RANDOM_WEIGHTS = REPO_ROOT / "var" / "bench-weights-random"


def standard_random_weights() -> Path:
    """A weights folder holding every standard-profile file, with random weights, under the registry's file
    names (as tests/retrieval/test_standard_models.py builds them). For timing and memory only."""
    import shutil

    import torch

    from retrieval.encoders import registry
    from retrieval.encoders.catalog import DEEPLABV3_RESNET101, OPENCLIP_VIT_B_32

    folder = RANDOM_WEIGHTS
    folder.mkdir(parents=True, exist_ok=True)
    clip_file = folder / OPENCLIP_VIT_B_32.weights[0].filename
    if not clip_file.is_file():
        import open_clip
        from safetensors.torch import save_file

        torch.manual_seed(0)
        clip, _, _ = open_clip.create_model_and_transforms(OPENCLIP_VIT_B_32.options["architecture"], pretrained=None,
                                                          force_quick_gelu=True)
        save_file({name: tensor.contiguous() for name, tensor in clip.state_dict().items()}, str(clip_file) + ".tmp")
        os.replace(str(clip_file) + ".tmp", clip_file)
        del clip
    from retrieval.encoders.deeplab import build_model

    deeplab_file = folder / DEEPLABV3_RESNET101.weights[0].filename
    if not deeplab_file.is_file():
        torch.manual_seed(0)
        torch.save(build_model().state_dict(), str(deeplab_file) + ".tmp")
        os.replace(str(deeplab_file) + ".tmp", deeplab_file)
    from retrieval.encoders.catalog import DEEPLABV3_MOBILENET, LRASPP_MOBILENET

    for spec in (DEEPLABV3_MOBILENET, LRASPP_MOBILENET):  # the cheaper segmenters (IMAGINAITION_SEGMENTER)
        target = folder / spec.weights[0].filename
        if not target.is_file():
            torch.manual_seed(0)
            torch.save(build_model(spec.options["architecture"]).state_dict(), str(target) + ".tmp")
            os.replace(str(target) + ".tmp", target)
    for spec in registry.MODELS.values():  # the autoencoders this project ships
        if spec.loader.startswith("retrieval.encoders.autoencoder:"):
            shipped = spec.weights[0]
            if not (folder / shipped.filename).is_file():
                shutil.copy(shipped.path(), folder / shipped.filename)
    return folder


# --- Processes the benchmarks start (workers, web server) ----------------------------------------------

def bench_env(database: str, **extra: str) -> dict[str, str]:
    """The environment of a `manage.py` / gunicorn process on the benchmark database and folders."""
    from django.conf import settings

    return {**os.environ, "IMAGINAITION_DATABASE_NAME": database, "IMAGINAITION_MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "IMAGINAITION_INDEX_DIR": str(settings.IMAGINAITION_INDEX_DIR), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "IMAGINAITION_LOG_LEVEL": "INFO", **extra}


def start_qcluster(env: dict[str, str], log: Path, timeout: float = 180, repo: Path | None = None):
    """A real `manage.py qcluster` (of `repo`, default this checkout) in its own process group, returned
    once it says it is running."""
    import subprocess
    import sys
    import time

    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=repo or REPO_ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while "running." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            raise RuntimeError(f"qcluster did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return process


def ingest_by_workers(*, env: dict[str, str], log: Path, n: int, enqueue, repo: Path | None = None,
                      timeout: float = 3600) -> dict[str, float]:
    """Start a real qcluster (of `repo`), call enqueue() (an import that queues the images), wait until
    all n images have embeddings and masks (ready or failed), stop the cluster. Seconds from the start of
    enqueue(): wall, enqueue, embedded (every image embedded); and the count of failed images."""
    import time

    from django.db.models import Q

    from gallery.models import Image, ProcessingStatus

    done = [ProcessingStatus.READY, ProcessingStatus.FAILED]
    process = start_qcluster(env, log, repo=repo)
    try:
        started = time.perf_counter()
        enqueue()
        enqueued = time.perf_counter() - started
        embedded = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"qcluster exited:\n{log.read_text(errors='replace')[-3000:]}")
            if embedded is None and Image.objects.filter(status__in=done).count() == n:
                embedded = time.perf_counter() - started
            if Image.objects.filter(status__in=done, masks_status__in=done).count() == n:
                break
            time.sleep(0.25)
        else:
            raise RuntimeError(f"workers did not finish within {timeout / 60:.0f} minutes")
        wall = time.perf_counter() - started
    finally:
        stop_process_group(process)
    failed = Image.objects.filter(Q(status=ProcessingStatus.FAILED) | Q(masks_status=ProcessingStatus.FAILED)).count()
    return {"wall": wall, "enqueue": enqueued, "embedded": embedded or wall, "failed": failed}


def stop_process_group(process, grace: float = 60) -> None:
    """SIGTERM to a process started with start_new_session=True (it stops its children), then SIGKILL
    whatever is left of its process group; never anything else."""
    import signal
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait(30)


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"
