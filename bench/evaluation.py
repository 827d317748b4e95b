"""Retrieval quality on a labelled folder: category retrieval, near-duplicates, text→image.

The folder holds one sub-folder per category (the category of an image is the name of the top-level
sub-folder it sits in). Everything happens in a database of its own, never the user's:
`evaluation_in_separate_database` (re)creates that database, then starts `manage.py evaluate` again
in a child process pointed at it and at media and index folders of its own. The child runs
`evaluation_run`, which goes through the product's own paths: `folder_import`, the embedding
pipeline, `index_rebuild`, and the search service with the merge policy.

Metrics (each a mean over queries):
- category retrieval, every image as a query (itself excluded): precision@10 and AP@50, for
  semantic only, content only and the hybrid policy (the product's default preferences);
- near-duplicates: N images picked with a seeded RNG get one altered copy each (crop, rotation,
  colour jitter, resize, JPEG); the copy is imported and queries; recall@1 / @10 of its original,
  twice: among the originals (the usual protocol of copy detection: altered copies query a gallery
  of originals), and among the originals and the other altered copies (harder: two copies of
  sibling drawings can share the same darker background or JPEG blocks and find each other first);
- with captions: text→image recall@1 / @10 of the captioned image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import fmean
from typing import Protocol

import numpy as np
from django.conf import settings
from django.db import connection
from PIL import Image as PILImage
from PIL import ImageEnhance

from gallery.imaging import decode_image
from gallery.models import Image, ProcessingStatus
from gallery.services import folder_files, folder_import
from retrieval.encoders.registry import MODELS, ActiveModels, active_models, active_profile, get_model
from retrieval.indexes import index_rebuild
from retrieval.pipeline import process_all_pending
from retrieval.policy import Preferences
from retrieval.search import QueryVectors, search, vectors_for_image_id, vectors_for_text

EVALUATION_DATABASE = "imaginaition_eval"
# Marks a database as created by `evaluate`: any other existing database is refused, never emptied.
DATABASE_MARKER = "imaginaition evaluation database: emptied by every `manage.py evaluate` run"
PRECISION_K = 10
MAP_K = 50
RECALL_KS = (1, 10)

# The three ways of answering a query. Hybrid is the product's default preferences.
HYBRID = Preferences()
POLICIES: dict[str, Preferences] = {
    "semantic only": Preferences(k=MAP_K, intersection_first=False, preferred_index="semantic", split=100),
    "content only": Preferences(k=MAP_K, intersection_first=False, preferred_index="content", split=100),
    "hybrid": replace(HYBRID, k=MAP_K),
}

# Goals of the offline profile (from the issue that asked for this evaluation).
GOAL_PRECISION_AT_10 = 0.70
GOAL_NEAR_DUPLICATE_RECALL_AT_1 = 0.95
GOAL_DISTRACTORS = 1000

# Near-duplicate copies: each parameter drawn uniformly from its range.
COPY_CROP_SIDE = (0.70, 0.90)  # share of each side kept
COPY_ROTATION_DEGREES = (-8.0, 8.0)
COPY_SCALE = (0.5, 1.0)  # resize after cropping
COPY_JITTER = (0.8, 1.2)  # brightness, contrast, saturation factors
COPY_JPEG_QUALITY = (30, 70)
COPY_MIN_SIDE = 16


class EvaluationError(Exception):
    """The evaluation cannot run (bad folder, refused database, the child process failed)."""


# --- metrics: pure functions over a ranked list of ids and the set of relevant ids -------------

def precision_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
    """Share of the first k places holding a relevant id; places the ranking does not fill are misses."""
    if k < 1:
        raise ValueError("k must be at least 1")
    return sum(1 for image_id in ranked[:k] if image_id in relevant) / k


def average_precision_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
    """AP@k = Σ precision@i over the relevant places i ≤ k, divided by min(|relevant|, k).

    1.0 when the first min(|relevant|, k) places are all relevant; 0.0 when nothing is relevant.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    hits, total = 0, 0.0
    for position, image_id in enumerate(ranked[:k], start=1):
        if image_id in relevant:
            hits += 1
            total += hits / position
    possible = min(len(relevant), k)
    return total / possible if possible else 0.0


def recall_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
    """Share of the relevant ids found in the first k places (1 or 0 for a single target)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    if not relevant:
        raise ValueError("recall needs at least one relevant id")
    return len(set(ranked[:k]) & set(relevant)) / len(relevant)


# --- near-duplicate copies ---------------------------------------------------------------------

@dataclass(frozen=True)
class CopyRecipe:
    """How one near-duplicate copy is made; `copy_recipe` draws one, `near_duplicate_copy` applies it."""

    rotation_degrees: float
    crop_side: float  # share of each side kept
    crop_left: float  # where the crop starts, as a share of the cut-off width / height
    crop_top: float
    scale: float
    brightness: float
    contrast: float
    saturation: float
    jpeg_quality: int


def copy_recipe(rng: random.Random) -> CopyRecipe:
    return CopyRecipe(
        rotation_degrees=rng.uniform(*COPY_ROTATION_DEGREES), crop_side=rng.uniform(*COPY_CROP_SIDE),
        crop_left=rng.random(), crop_top=rng.random(), scale=rng.uniform(*COPY_SCALE),
        brightness=rng.uniform(*COPY_JITTER), contrast=rng.uniform(*COPY_JITTER),
        saturation=rng.uniform(*COPY_JITTER), jpeg_quality=rng.randint(*COPY_JPEG_QUALITY))


def near_duplicate_copy(picture: PILImage.Image, recipe: CopyRecipe) -> bytes:
    """The picture rotated, cropped, colour-jittered, resized and saved as JPEG (the bytes)."""
    picture = picture.convert("RGB")
    border = _border_colour(picture)  # fills the corners the rotation uncovers
    rotated = picture.rotate(recipe.rotation_degrees, resample=PILImage.Resampling.BICUBIC, fillcolor=border)
    width, height = rotated.size
    crop_w, crop_h = max(1, round(width * recipe.crop_side)), max(1, round(height * recipe.crop_side))
    left, top = round((width - crop_w) * recipe.crop_left), round((height - crop_h) * recipe.crop_top)
    copy = rotated.crop((left, top, left + crop_w, top + crop_h))
    copy = ImageEnhance.Brightness(copy).enhance(recipe.brightness)
    copy = ImageEnhance.Contrast(copy).enhance(recipe.contrast)
    copy = ImageEnhance.Color(copy).enhance(recipe.saturation)
    size = (max(COPY_MIN_SIDE, round(crop_w * recipe.scale)), max(COPY_MIN_SIDE, round(crop_h * recipe.scale)))
    copy = copy.resize(size, PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=recipe.jpeg_quality)
    return buffer.getvalue()


def _border_colour(picture: PILImage.Image) -> tuple[int, int, int]:
    """Median colour of the outermost pixels (white for clip art on white)."""
    pixels = np.asarray(picture)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    red, green, blue = (int(v) for v in np.median(edge, axis=0))
    return red, green, blue


# --- the report ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyScores:
    policy: str
    precision_at_10: float | None
    map_at_50: float | None
    near_duplicate_recall_at_1: float | None  # among the originals
    near_duplicate_recall_at_10: float | None
    near_duplicate_recall_at_1_with_copies: float | None = None  # among the originals and the other copies
    near_duplicate_recall_at_10_with_copies: float | None = None


@dataclass(frozen=True)
class EvaluationReport:
    profile: str
    models: dict[str, str]
    categories: int
    images: int  # embedded originals (each a category query when its category has another image)
    category_queries: int
    near_duplicate_queries: int
    distractors: int  # originals a near-duplicate query searches besides its own
    caption_queries: int
    scores: list[PolicyScores]
    distractors_with_copies: int = 0  # ... and the other copies too
    precision_at_10_ceiling: float | None = None  # the best P@10 the categories allow (fewer than 10 others in one)
    text_recall_at_1: float | None = None
    text_recall_at_10: float | None = None
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    seconds: dict[str, float] = field(default_factory=dict)

    def score(self, policy: str) -> PolicyScores:
        return next(s for s in self.scores if s.policy == policy)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> EvaluationReport:
        values = json.loads(text)
        values["scores"] = [PolicyScores(**s) for s in values["scores"]]
        return cls(**values)


@dataclass(frozen=True)
class GoalCheck:
    goal: str
    measured: str
    met: bool | None  # None: not measured


def evaluation_goals(report: EvaluationReport) -> list[GoalCheck]:
    hybrid, semantic = report.score("hybrid"), report.score("semantic only")
    checks = []
    p10 = hybrid.precision_at_10
    checks.append(GoalCheck(f"category P@10 ≥ {GOAL_PRECISION_AT_10:.2f} (hybrid)",
                            _number(p10), None if p10 is None else _at_least(p10, GOAL_PRECISION_AT_10)))
    if p10 is None or semantic.precision_at_10 is None or hybrid.map_at_50 is None or semantic.map_at_50 is None:
        checks.append(GoalCheck("hybrid ≥ semantic only (P@10 and mAP@50)", "not measured", None))
    else:
        checks.append(GoalCheck(
            "hybrid ≥ semantic only (P@10 and mAP@50)",
            f"P@10 {p10:.3f} vs {semantic.precision_at_10:.3f}, mAP@50 {hybrid.map_at_50:.3f} vs {semantic.map_at_50:.3f}",
            _at_least(p10, semantic.precision_at_10) and _at_least(hybrid.map_at_50, semantic.map_at_50)))
    r1 = hybrid.near_duplicate_recall_at_1
    checks.append(GoalCheck(
        f"near-duplicate R@1 ≥ {GOAL_NEAR_DUPLICATE_RECALL_AT_1:.2f} (hybrid) among ≥ {GOAL_DISTRACTORS:,} distractors",
        f"{_number(r1)} among {report.distractors:,}",
        None if r1 is None else _at_least(r1, GOAL_NEAR_DUPLICATE_RECALL_AT_1) and report.distractors >= GOAL_DISTRACTORS))
    r1_with_copies = hybrid.near_duplicate_recall_at_1_with_copies
    checks.append(GoalCheck(
        "the same, with the other copies in the gallery too",
        f"{_number(r1_with_copies)} among {report.distractors_with_copies:,}",
        None if r1_with_copies is None else (_at_least(r1_with_copies, GOAL_NEAR_DUPLICATE_RECALL_AT_1)
                                             and report.distractors_with_copies >= GOAL_DISTRACTORS)))
    return checks


def _at_least(value: float, goal: float) -> bool:
    """value ≥ goal, a mean's last bit of rounding aside (the mean of 24 × 0.7 is 0.6999999999999998: shown
    as 0.700, it was "not met")."""
    return value >= goal - 1e-9


def evaluation_markdown(report: EvaluationReport) -> str:
    """The report as Markdown: scores per policy, text→image, goals, what was measured on what."""
    lines = ["| policy | P@10 | mAP@50 | near-dup R@1 | near-dup R@10 | R@1, other copies in too | "
             "R@10, other copies in too |", "|---|---|---|---|---|---|---|"]
    for s in report.scores:
        lines.append(f"| {s.policy} | {_number(s.precision_at_10)} | {_number(s.map_at_50)} | "
                     f"{_number(s.near_duplicate_recall_at_1)} | {_number(s.near_duplicate_recall_at_10)} | "
                     f"{_number(s.near_duplicate_recall_at_1_with_copies)} | "
                     f"{_number(s.near_duplicate_recall_at_10_with_copies)} |")
    lines.append("")
    if report.caption_queries:
        lines.append(f"Text→image (captions, {report.caption_queries} queries): R@1 "
                     f"{_number(report.text_recall_at_1)}, R@10 {_number(report.text_recall_at_10)}.")
        lines.append("")
    lines += ["| goal | measured | met |", "|---|---|---|"]
    for check in evaluation_goals(report):
        met = {True: "yes", False: "**no**", None: "not measured"}[check.met]
        lines.append(f"| {check.goal} | {check.measured} | {met} |")
    lines.append("")
    lines.append(
        f"Every embedded image queries once per policy, itself excluded; relevant: the other images of its "
        f"category; AP@{MAP_K} divides by min(relevant, {MAP_K}). Semantic only and content only ask one "
        f"index for {MAP_K}; hybrid is the default preferences (k {HYBRID.k}, both first "
        f"{'on' if HYBRID.intersection_first else 'off'}, preferred {HYBRID.preferred_index}, split "
        f"{HYBRID.split}). Near-duplicates: a seeded pick of images, each copied once (rotation "
        f"{COPY_ROTATION_DEGREES[0]:g}…{COPY_ROTATION_DEGREES[1]:g}°, crop to {COPY_CROP_SIDE[0]:.0%}–"
        f"{COPY_CROP_SIDE[1]:.0%} of each side, brightness/contrast/saturation ×{COPY_JITTER[0]:g}–"
        f"{COPY_JITTER[1]:g}, resize ×{COPY_SCALE[0]:g}–{COPY_SCALE[1]:g}, JPEG quality {COPY_JPEG_QUALITY[0]}–"
        f"{COPY_JPEG_QUALITY[1]}), imported after the category queries; each copy queries and scores when "
        f"its original is within the first 1 / 10: among the originals (the usual protocol of copy "
        f"detection), then among the originals and the other copies (itself excluded). Every query goes "
        f"through `retrieval.search.search` on FAISS.")
    lines.append("")
    seconds = ", ".join(f"{name} {value:.0f} s" for name, value in report.seconds.items())
    lines.append(
        f"{report.images:,} images in {report.categories} categories ({report.category_queries:,} category "
        f"queries), {report.near_duplicate_queries} near-duplicate queries among {report.distractors:,} "
        f"distractors ({report.distractors_with_copies:,} with the other copies); profile {report.profile} "
        f"(semantic `{report.models['semantic']}`, content "
        f"`{report.models['content']}`); {len(report.skipped)} inputs skipped (listed by the command). Time: {seconds}.")
    ceiling = report.precision_at_10_ceiling
    if ceiling is not None and ceiling < 1:
        lines.append("")
        lines.append(f"Categories with fewer than {PRECISION_K + 1} images leave a query fewer than {PRECISION_K} "
                     f"relevant images: the best P@{PRECISION_K} this data allows is {ceiling:.3f}.")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# --- reading the input ---------------------------------------------------------------------

def captions_read(path: Path) -> list[tuple[str, str]]:
    """Lines `category/relative/path<TAB>text` (paths as under --data); blank lines and # comments skipped."""
    captions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        relative, tab, text = line.partition("\t")
        if not tab or not relative.strip() or not text.strip():
            raise EvaluationError(f"{path}:{number}: expected 'relative/path<TAB>text'")
        captions.append((relative.strip(), text.strip()))
    return captions


def categories_of(data: Path) -> list[str]:
    """The category sub-folders of `data` (hidden ones and symbolic links left out)."""
    if not data.is_dir():
        raise EvaluationError(f"{data}: not a folder")
    found = sorted(p.name for p in data.iterdir()
                   if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    if len(found) < 2:
        raise EvaluationError(f"{data}: needs at least two category sub-folders, found {len(found)}")
    return found


# --- running it (in the evaluation database) -----------------------------------------------

class ProgressBar(Protocol):
    def update(self, n: int = 1) -> object: ...


Progress = Callable[[str, int], AbstractContextManager[ProgressBar]]


class _NoBar:
    def update(self, n: int = 1) -> None:
        return None


@contextlib.contextmanager
def no_progress(description: str, total: int) -> Iterator[ProgressBar]:
    yield _NoBar()


@dataclass
class _Imported:
    category_of: dict[int, str] = field(default_factory=dict)  # image id -> category of its first file
    id_of_path: dict[str, int] = field(default_factory=dict)  # "category/relative" -> image id
    skipped: list[str] = field(default_factory=list)


def evaluation_run(*, data: Path, captions: Sequence[tuple[str, str]] = (), near_duplicates: int = 50,
                   seed: int = 0, work_dir: Path, batch_size: int | None = None,
                   progress: Progress = no_progress) -> EvaluationReport:
    """Import `data` into the current (empty, evaluation) database, embed, index, query, score.

    `work_dir` receives the near-duplicate copies. Raises EvaluationError for unusable input.
    """
    categories = categories_of(data)
    models = active_models()
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    for key in (models.semantic, models.content):
        get_model(key)  # loaded once here, so that "embedding" below is the embedding alone
    seconds["model loading"] = time.perf_counter() - started
    started = time.perf_counter()
    imported = _import_categories(data=data, categories=categories, progress=progress)
    seconds["import"] = time.perf_counter() - started
    started = time.perf_counter()
    _embed_pending(batch_size=batch_size, progress=progress)
    seconds["embedding"] = time.perf_counter() - started
    ready = set(Image.objects.filter(pk__in=imported.category_of, status=ProcessingStatus.READY)
                .values_list("pk", flat=True))
    for image_id, error in Image.objects.filter(pk__in=imported.category_of).exclude(
            status=ProcessingStatus.READY).values_list("pk", "error"):
        imported.skipped.append(f"image {image_id}: not embedded ({error or 'no reason given'})")
    if not ready:
        raise EvaluationError(f"{data}: no image could be imported and embedded")
    started = time.perf_counter()
    _rebuild_indexes(models)
    seconds["indexes"] = time.perf_counter() - started

    started = time.perf_counter()
    category_of_ready = {i: imported.category_of[i] for i in ready}
    category_scores = _category_queries(ready=category_of_ready, models=models, progress=progress)
    caption_hits = _caption_queries(captions=captions, imported=imported, ready=ready, models=models,
                                    progress=progress)
    seconds["queries"] = time.perf_counter() - started

    started = time.perf_counter()
    copies = _near_duplicates_add(originals=sorted(ready), count=near_duplicates, seed=seed,
                                  folder=work_dir / "near-duplicates", batch_size=batch_size,
                                  skipped=imported.skipped, progress=progress)
    if copies:
        _rebuild_indexes(models)
    seconds["near-duplicates"] = time.perf_counter() - started
    near_duplicate_scores = _near_duplicate_queries(copies=copies, originals=ready, models=models,
                                                    progress=progress)

    total_ready = Image.objects.filter(status=ProcessingStatus.READY).count()
    scores = []
    for policy in POLICIES:
        precisions, average_precisions = category_scores[policy]
        among_originals, with_copies = near_duplicate_scores[policy]
        scores.append(PolicyScores(
            policy=policy, precision_at_10=_mean(precisions), map_at_50=_mean(average_precisions),
            near_duplicate_recall_at_1=_mean(among_originals[1]),
            near_duplicate_recall_at_10=_mean(among_originals[10]),
            near_duplicate_recall_at_1_with_copies=_mean(with_copies[1]),
            near_duplicate_recall_at_10_with_copies=_mean(with_copies[10])))
    return EvaluationReport(
        profile=models.profile, models={"semantic": models.semantic, "content": models.content},
        # Categories with an embedded image (an empty sub-folder was counted as one).
        categories=len(set(category_of_ready.values())), images=len(ready),
        category_queries=len(category_scores["hybrid"][0]),
        precision_at_10_ceiling=_precision_ceiling(category_of_ready),
        near_duplicate_queries=len(copies),
        distractors=max(0, len(ready) - 1) if copies else 0,
        distractors_with_copies=max(0, total_ready - 2) if copies else 0, caption_queries=len(caption_hits[1]),
        scores=scores, text_recall_at_1=_mean(caption_hits[1]), text_recall_at_10=_mean(caption_hits[10]),
        skipped=imported.skipped, seconds={name: round(value, 1) for name, value in seconds.items()})


def _precision_ceiling(ready: dict[int, str]) -> float | None:
    """The mean over the category queries of min(other images of its category, 10) / 10."""
    sizes = Counter(ready.values())
    return _mean([min(sizes[category] - 1, PRECISION_K) / PRECISION_K
                  for category in ready.values() if sizes[category] > 1])


def _mean(values: Sequence[float]) -> float | None:
    return fmean(values) if values else None


def _import_categories(*, data: Path, categories: Sequence[str], progress: Progress) -> _Imported:
    imported = _Imported()
    total = sum(len(folder_files(root=data / category, recursive=True)[0]) for category in categories)
    with progress("importing", total) as bar:
        for category in categories:
            folder = data / category
            report = folder_import(root=folder, recursive=True, enqueue=False, progress=bar.update)
            for relative, image_id in zip(report.added, report.added_ids, strict=True):
                imported.category_of[image_id] = category
                imported.id_of_path[f"{category}/{relative}"] = image_id
            for relative in report.duplicates:
                digest = hashlib.sha256((folder.resolve() / relative).read_bytes()).hexdigest()
                existing = Image.objects.filter(sha256=digest).values_list("pk", flat=True).first()
                if existing is not None:
                    imported.id_of_path[f"{category}/{relative}"] = existing
                imported.skipped.append(f"{category}/{relative}: same bytes as an image already imported "
                                        "(it keeps that image's category)")
            imported.skipped += [f"{category}/{relative}: {reason}" for relative, reason in report.rejected]
    return imported


def _embed_pending(*, batch_size: int | None, progress: Progress) -> None:
    pending = Image.objects.filter(status=ProcessingStatus.PENDING).count()
    with progress("embedding", pending) as bar:
        process_all_pending(batch_size=batch_size, progress=bar.update, masks=False)


def _rebuild_indexes(models: ActiveModels) -> None:
    for space, key in (("semantic", models.semantic), ("content", models.content)):
        index_rebuild(space=space, model_key=key, dim=MODELS[key].dim)


def _ranked(*, query: QueryVectors, policy: str, models: ActiveModels) -> list[int]:
    """Image ids as the search service ranks them for `policy` (one index only, or both merged)."""
    if policy == "semantic only":
        query = replace(query, content=None)
    elif policy == "content only":
        query = replace(query, semantic=None)
    response = search(query=query, preferences=POLICIES[policy], models=models, engine="faiss")
    return [hit.image.pk for hit in response.hits]


def _category_queries(*, ready: dict[int, str], models: ActiveModels,
                      progress: Progress) -> dict[str, tuple[list[float], list[float]]]:
    """Per policy: (precision@10 list, AP@50 list), one entry per image whose category has another image."""
    members: dict[str, set[int]] = {}
    for image_id, category in ready.items():
        members.setdefault(category, set()).add(image_id)
    queries = [image_id for image_id in sorted(ready) if len(members[ready[image_id]]) > 1]
    scores: dict[str, tuple[list[float], list[float]]] = {policy: ([], []) for policy in POLICIES}
    with progress("category queries", len(queries)) as bar:
        for image_id in queries:
            vectors = vectors_for_image_id(image_id=image_id, models=models)
            relevant = members[ready[image_id]] - {image_id}
            for policy in POLICIES:
                ranked = _ranked(query=vectors, policy=policy, models=models)
                scores[policy][0].append(precision_at_k(ranked, relevant, PRECISION_K))
                scores[policy][1].append(average_precision_at_k(ranked, relevant, MAP_K))
            bar.update(1)
    return scores


def _caption_queries(*, captions: Sequence[tuple[str, str]], imported: _Imported, ready: set[int],
                     models: ActiveModels, progress: Progress) -> dict[int, list[float]]:
    """Recall@1 and @10 lists of each caption's image (a text query has only the semantic part)."""
    hits: dict[int, list[float]] = {k: [] for k in RECALL_KS}
    if not captions:
        return hits  # no bar that stays at 0/0
    with progress("caption queries", len(captions)) as bar:
        for relative, text in captions:
            target = imported.id_of_path.get(relative)
            if target is None or target not in ready:
                imported.skipped.append(f"caption for {relative}: no such embedded image")
            else:
                ranked = _ranked(query=vectors_for_text(text=text, models=models), policy="hybrid", models=models)
                for k in RECALL_KS:
                    hits[k].append(recall_at_k(ranked, {target}, k))
            bar.update(1)
    return hits


def _near_duplicates_add(*, originals: Sequence[int], count: int, seed: int, folder: Path,
                         batch_size: int | None, skipped: list[str], progress: Progress) -> dict[int, int]:
    """Make one copy of `count` originals (seeded pick), import and embed them: {copy id: original id}."""
    rng = random.Random(seed)
    picked = rng.sample(list(originals), min(count, len(originals)))
    if not picked:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    with progress("making near-duplicates", len(picked)) as bar:
        for original in picked:
            with Image.objects.get(pk=original).file.open("rb") as fh:
                picture = decode_image(fh.read()).picture
            (folder / f"copy-of-{original}.jpg").write_bytes(near_duplicate_copy(picture, copy_recipe(rng)))
            bar.update(1)
    report = folder_import(root=folder, enqueue=False)
    skipped += [f"near-duplicate {relative}: {reason}" for relative, reason in report.rejected]
    skipped += [f"near-duplicate {relative}: same bytes as an image already imported" for relative in report.duplicates]
    _embed_pending(batch_size=batch_size, progress=progress)
    copies = {image_id: int(relative.removeprefix("copy-of-").removesuffix(".jpg"))
              for relative, image_id in zip(report.added, report.added_ids, strict=True)}
    embedded = set(Image.objects.filter(pk__in=copies, status=ProcessingStatus.READY).values_list("pk", flat=True))
    return {copy: original for copy, original in copies.items() if copy in embedded}


Recalls = dict[int, list[float]]  # k → one 0/1 per query


def _near_duplicate_queries(*, copies: dict[int, int], originals: Collection[int], models: ActiveModels,
                            progress: Progress) -> dict[str, tuple[Recalls, Recalls]]:
    """Per policy, recall@1 and @10 lists of each copy's original: (among the originals, among the
    originals and the other copies). The first is a label filter of the same search (exact)."""
    only_originals = frozenset(originals)
    recalls: dict[str, tuple[Recalls, Recalls]] = {
        policy: ({k: [] for k in RECALL_KS}, {k: [] for k in RECALL_KS}) for policy in POLICIES}
    with progress("near-duplicate queries", len(copies)) as bar:
        for copy, original in sorted(copies.items()):
            with_copies = vectors_for_image_id(image_id=copy, models=models)
            among_originals = replace(with_copies, only_image_ids=only_originals)
            for policy in POLICIES:
                for query, lists in zip((among_originals, with_copies), recalls[policy], strict=True):
                    ranked = _ranked(query=query, policy=policy, models=models)
                    for k in RECALL_KS:
                        lists[k].append(recall_at_k(ranked, {original}, k))
            bar.update(1)
    return recalls


# --- the separate database -------------------------------------------------------------------

_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def evaluation_work_dir(*, database: str) -> Path:
    """Media, indexes and near-duplicate copies of the evaluation database live here."""
    return Path(settings.VAR_DIR) / "evaluation" / database


def _database_comment(cursor, database: str) -> tuple[str | None] | None:
    """(comment,) of `database`, where evaluate leaves its DATABASE_MARKER; None if no such database."""
    cursor.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", [database])
    return cursor.fetchone()


def evaluation_database_check(*, database: str) -> None:
    """Raise EvaluationError unless `database` may be (re)created and emptied by an evaluation."""
    if not _DATABASE_NAME.fullmatch(database):
        raise EvaluationError(f"{database!r}: use lower-case letters, digits and underscores for the "
                              "evaluation database's name")
    if database == connection.settings_dict["NAME"] or database in ("postgres", "template0", "template1"):
        raise EvaluationError(f"{database!r} is the database in use (or a system one); the evaluation "
                              "needs a database of its own (--database)")
    work_dir = evaluation_work_dir(database=database).resolve()
    for path in (Path(settings.MEDIA_ROOT).resolve(), Path(settings.IMAGINAITION_INDEX_DIR).resolve()):
        if path.is_relative_to(work_dir) or work_dir.is_relative_to(path):
            raise EvaluationError(f"{work_dir} overlaps {path}, which the gallery in use keeps its files in")
    with connection._nodb_cursor() as cursor:
        row = _database_comment(cursor, database)
    if row is not None and row[0] != DATABASE_MARKER:
        raise EvaluationError(f"database {database!r} exists and was not created by `evaluate`: "
                              "refusing to empty it; pick another --database")


def evaluation_database_recreate(*, database: str) -> None:
    """Drop (if it exists) and create the evaluation database, marked as such, and empty its work dir."""
    evaluation_database_check(database=database)
    evaluation_database_drop(database=database)
    with connection._nodb_cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{database}"')
        cursor.execute(f"COMMENT ON DATABASE \"{database}\" IS %s", [DATABASE_MARKER])
    evaluation_work_dir(database=database).mkdir(parents=True)


def evaluation_database_drop(*, database: str) -> None:
    """Drop the evaluation database and its files (only one marked as created by `evaluate`)."""
    evaluation_database_check(database=database)
    with connection._nodb_cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{database}"')
    shutil.rmtree(evaluation_work_dir(database=database), ignore_errors=True)


def evaluation_database_in_use_check(*, database: str) -> None:
    """In the child: the connection must point at the marked evaluation database, nothing else."""
    if connection.settings_dict["NAME"] != database:
        raise EvaluationError(f"this process uses {connection.settings_dict['NAME']!r}, not {database!r}")
    with connection.cursor() as cursor:
        row = _database_comment(cursor, database)
    if row is None or row[0] != DATABASE_MARKER:
        raise EvaluationError(f"{database!r} is not an evaluation database: refusing to write to it")


def evaluation_in_separate_database(*, database: str, data: Path, captions: Path | None,
                                    near_duplicates: int, seed: int, batch_size: int | None = None,
                                    keep: bool = False) -> EvaluationReport:
    """Recreate `database`, run `manage.py evaluate` in a child process on it, return its report.

    The child gets its own media and index folders and the active model profile of this process.
    Unless `keep`, the database and its files are dropped afterwards. Raises EvaluationError.
    """
    categories_of(data)  # fail early, before touching any database
    if captions is not None:
        if not captions.is_file():
            raise EvaluationError(f"{captions}: no such file")
        captions_read(captions)  # a malformed line fails here, not after the import
    arguments = ["--data", str(data.resolve()), "--near-duplicates", str(near_duplicates), "--seed", str(seed)]
    if captions is not None:
        arguments += ["--captions", str(captions.resolve())]
    if batch_size is not None:
        arguments += ["--batch-size", str(batch_size)]
    return EvaluationReport.from_json(evaluation_child_run(database=database, arguments=arguments, keep=keep))


def evaluation_child_run(*, database: str, arguments: list[str], keep: bool = False) -> str:
    """Recreate `database`, run `manage.py evaluate ARGUMENTS` in a child process on it (its own media
    and index folders, this process's model profile), return the report.json it leaves. Unless `keep`,
    the database and its files are dropped afterwards. Raises EvaluationError."""
    evaluation_database_recreate(database=database)
    work_dir = evaluation_work_dir(database=database)
    env = {**os.environ,
           "IMAGINAITION_DATABASE_NAME": database,
           "IMAGINAITION_MEDIA_ROOT": str(work_dir / "media"),
           "IMAGINAITION_INDEX_DIR": str(work_dir / "indexes"),
           "IMAGINAITION_MODEL_PROFILE": active_profile(),
           "IMAGINAITION_WEIGHTS_DIR": str(settings.IMAGINAITION_WEIGHTS_DIR),
           "DJANGO_SETTINGS_MODULE": "imaginaition_site.settings"}
    command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "evaluate", *arguments,
               "--database", database, "--child-work-dir", str(work_dir)]
    try:
        finished = subprocess.run(command, env=env, cwd=settings.BASE_DIR, check=False)
        report_file = work_dir / "report.json"
        if finished.returncode != 0 or not report_file.is_file():
            raise EvaluationError(f"the evaluation process failed (exit status {finished.returncode}); "
                                  "its messages are above")
        return report_file.read_text()
    finally:
        if not keep:
            evaluation_database_drop(database=database)
