"""Search by region, measured (`manage.py evaluate --regions`).

Composite scenes: objects with alpha (clip art, one sub-folder per category) pasted onto photo
backgrounds at a random place and scale, 1-2 objects of different categories per scene, seeded. The
scenes go through the real pipeline (import, embed, segment, region vectors, indexes). Each pasted
object is then looked for among the masks the active segmenter found in its scene (the one that
overlaps it most, by IoU with the pasted alpha); that mask queries by region, its scene queries as a
whole picture, and both are scored against the same relevant set: the other scenes that contain an
object of the same category.
"""

from __future__ import annotations

import io
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import fmean

import numpy as np
from PIL import Image as PILImage

from bench.evaluation import PRECISION_K, EvaluationError, Progress, categories_of, no_progress, precision_at_k
from gallery.models import Image, Mask, ProcessingStatus
from gallery.services import folder_import
from retrieval.encoders.registry import active_models, model_dim
from retrieval.indexes import index_rebuild
from retrieval.models import RegionEmbedding
from retrieval.pipeline import process_all_pending
from retrieval.policy import Preferences
from retrieval.search import QueryVectors, search, vectors_for_image_id, vectors_for_mask
from retrieval.spaces import VECTOR_OWNERS

SCENE_SIZE = (512, 384)
OBJECT_SIDE = (0.35, 0.6)  # an object's longest side, as a share of the scene's shorter side
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp"}
MIN_IOU = 0.1  # below this, the segmenter did not find the object (no region query for it)


@dataclass(frozen=True)
class PastedObject:
    category: str
    source: str
    box: tuple[int, int, int, int]  # left, top, right, bottom in the scene


@dataclass
class RegionReport:
    profile: str
    models: dict[str, str]
    segmenter: str
    region_style: str
    scenes: int
    objects: int
    objects_found: int  # a mask of the segmenter overlaps the object (IoU ≥ MIN_IOU)
    mean_iou: float | None  # best mask's IoU per object, over all objects (0 where none)
    region_precision_at_10: float | None  # over the objects found
    whole_precision_at_10: float | None  # the same objects' scenes, queried as whole pictures
    whole_precision_at_10_all: float | None  # every object's scene as a whole picture
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RegionReport:
        return cls(**json.loads(text))


def region_markdown(report: RegionReport) -> str:
    def number(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    gain = (None if report.region_precision_at_10 is None or report.whole_precision_at_10 is None
            else report.region_precision_at_10 - report.whole_precision_at_10)
    return "\n".join([
        "| query | P@10 | queries |",
        "|---|---|---|",
        f"| region (the segmenter's mask of the object) | {number(report.region_precision_at_10)} | {report.objects_found} |",
        f"| whole scene, same objects | {number(report.whole_precision_at_10)} | {report.objects_found} |",
        f"| whole scene, every object | {number(report.whole_precision_at_10_all)} | {report.objects} |",
        "",
        f"Region minus whole-scene P@10 (same objects): **{number(gain)}** (goal ≥ 0.10: "
        f"{'met' if gain is not None and gain >= 0.10 else 'not met'}).",
        "",
        f"{report.scenes} scenes, {report.objects} pasted objects; the segmenter (`{report.segmenter}`) found "
        f"{report.objects_found} of them (a mask with IoU ≥ {MIN_IOU} against the pasted alpha); mean best IoU over "
        f"all objects {number(report.mean_iou)}. Region style `{report.region_style}`; profile {report.profile} "
        f"(semantic `{report.models['semantic']}`, content `{report.models['content']}`). Relevant: the other scenes "
        "with an object of the same category; hybrid policy, default preferences. Time: "
        + ", ".join(f"{name} {value:.0f} s" for name, value in report.seconds.items()) + ".",
    ])


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def build_scenes(*, objects: Path, backgrounds: Path, out: Path, count: int,
                 seed: int) -> dict[str, list[PastedObject]]:
    """Write `count` scenes into `out`; return each scene file's pasted objects."""
    categories = categories_of(objects)
    sources = {category: _files(objects / category) for category in categories}
    sources = {category: files for category, files in sources.items() if files}
    photos = _files(backgrounds)
    if len(sources) < 2 or not photos:
        raise EvaluationError(f"need ≥ 2 object categories under {objects} and photos under {backgrounds}")
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    scenes: dict[str, list[PastedObject]] = {}
    for n in range(count):
        background = None
        for _ in range(10 * len(photos)):
            background = _opened(rng.choice(photos), "RGB")
            if background is not None:
                break
        if background is None:
            raise EvaluationError(f"no photo under {backgrounds} can be read")
        scale = max(SCENE_SIZE[0] / background.width, SCENE_SIZE[1] / background.height) * rng.uniform(1.0, 1.6)
        background = background.resize((max(SCENE_SIZE[0], round(background.width * scale)),
                                        max(SCENE_SIZE[1], round(background.height * scale))))
        left, top = rng.randint(0, background.width - SCENE_SIZE[0]), rng.randint(0, background.height - SCENE_SIZE[1])
        scene = background.crop((left, top, left + SCENE_SIZE[0], top + SCENE_SIZE[1]))
        pasted: list[PastedObject] = []
        for category in rng.sample(sorted(sources), rng.choice((1, 2))):
            source = rng.choice(sources[category])
            art = _opened(source, "RGBA")
            bbox = art.getchannel("A").getbbox() if art is not None else None
            if art is None or bbox is None:
                continue
            art = art.crop(bbox)
            side = rng.uniform(*OBJECT_SIDE) * min(SCENE_SIZE)
            factor = side / max(art.size)
            art = art.resize((max(8, round(art.width * factor)), max(8, round(art.height * factor))))
            x, y = rng.randint(0, SCENE_SIZE[0] - art.width), rng.randint(0, SCENE_SIZE[1] - art.height)
            scene.paste(art, (x, y), art)
            pasted.append(PastedObject(category, str(source), (x, y, x + art.width, y + art.height)))
        name = f"scene-{n:04d}.png"
        buffer = io.BytesIO()
        scene.save(buffer, format="PNG")
        (out / name).write_bytes(buffer.getvalue())
        scenes[name] = pasted
    return scenes


def _opened(path: Path, mode: str) -> PILImage.Image | None:
    """The picture in `mode`, or None for a file Pillow refuses (too many pixels, not an image)."""
    try:
        with PILImage.open(path) as picture:
            return picture.convert(mode)
    except (OSError, PILImage.DecompressionBombError):
        return None


def _alpha_mask(obj: PastedObject) -> np.ndarray:
    """The pasted object's alpha in scene coordinates (> 0.5), later objects not subtracted."""
    with PILImage.open(obj.source) as art:
        art = art.convert("RGBA")
    bbox = art.getchannel("A").getbbox()
    assert bbox is not None
    left, top, right, bottom = obj.box
    alpha = np.asarray(art.crop(bbox).getchannel("A").resize((right - left, bottom - top)), dtype=np.float32) / 255
    full = np.zeros((SCENE_SIZE[1], SCENE_SIZE[0]), dtype=bool)
    full[top:bottom, left:right] = alpha > 0.5
    return full


def _mask_array(mask: Mask) -> np.ndarray:
    with PILImage.open(io.BytesIO(bytes(mask.probability_png))) as png:
        probability = png.convert("L").resize(SCENE_SIZE, PILImage.Resampling.BILINEAR)
    return np.asarray(probability, dtype=np.uint8) >= 128


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def region_evaluation_run(*, objects: Path, backgrounds: Path, scenes: int, seed: int, work_dir: Path,
                          batch_size: int | None = None, progress: Progress = no_progress) -> RegionReport:
    """In the (empty) evaluation database: build, import and process the scenes, then query."""
    from django.conf import settings

    models = active_models()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    folder = work_dir / "scenes"
    pasted = build_scenes(objects=objects, backgrounds=backgrounds, out=folder, count=scenes, seed=seed)
    seconds["scenes"] = time.perf_counter() - started
    started = time.perf_counter()
    report = folder_import(root=folder, enqueue=False)
    scene_of = {image_id: name for name, image_id in zip(report.added, report.added_ids, strict=True)}
    with progress("embedding and segmenting", len(scene_of)) as bar:
        process_all_pending(batch_size=batch_size, progress=bar.update)
    seconds["pipeline"] = time.perf_counter() - started
    started = time.perf_counter()
    for owner in VECTOR_OWNERS:
        for space, key in (("semantic", models.semantic), ("content", models.content)):
            index_rebuild(space=space, model_key=key, dim=model_dim(key), owner=owner)
    seconds["indexes"] = time.perf_counter() - started

    ready = set(Image.objects.filter(pk__in=scene_of, status=ProcessingStatus.READY,
                                     masks_status=ProcessingStatus.READY).values_list("pk", flat=True))
    with_category: dict[str, set[int]] = {}
    for image_id in ready:
        for obj in pasted[scene_of[image_id]]:
            with_category.setdefault(obj.category, set()).add(image_id)
    preferences = Preferences()
    region_scores, whole_same, whole_all, ious = [], [], [], []
    embedded_masks = set(RegionEmbedding.objects.filter(image_id__in=ready, model_key=models.content)
                         .values_list("mask_id", flat=True))
    started = time.perf_counter()
    queries = [(image_id, obj) for image_id in sorted(ready) for obj in pasted[scene_of[image_id]]]
    with progress("region queries", len(queries)) as bar:
        for image_id, obj in queries:
            relevant = with_category[obj.category] - {image_id}
            whole = [hit.image.pk for hit in search(query=vectors_for_image_id(image_id=image_id, models=models),
                                                     preferences=preferences, models=models).hits]
            whole_all.append(precision_at_k(whole, relevant, PRECISION_K))
            alpha = _alpha_mask(obj)
            candidates = [(m, _iou(_mask_array(m), alpha)) for m in Mask.objects.filter(image_id=image_id)]
            best = max(candidates, key=lambda pair: pair[1], default=(None, 0.0))
            ious.append(best[1])
            bar.update(1)
            if best[0] is None or best[1] < MIN_IOU or best[0].pk not in embedded_masks:
                continue
            vectors: QueryVectors = vectors_for_mask(mask=best[0], models=models)
            ranked = [hit.image.pk for hit in search(query=vectors, preferences=preferences, models=models).hits]
            region_scores.append(precision_at_k(ranked, relevant, PRECISION_K))
            whole_same.append(whole_all[-1])
    seconds["queries"] = time.perf_counter() - started
    return RegionReport(
        profile=models.profile, models={"semantic": models.semantic, "content": models.content},
        segmenter=models.segmenter, region_style=settings.IMAGINAITION_REGION_STYLE, scenes=len(ready),
        objects=len(queries), objects_found=len(region_scores), mean_iou=fmean(ious) if ious else None,
        region_precision_at_10=fmean(region_scores) if region_scores else None,
        whole_precision_at_10=fmean(whole_same) if whole_same else None,
        whole_precision_at_10_all=fmean(whole_all) if whole_all else None,
        seconds={name: round(value, 1) for name, value in seconds.items()})
