"""Which models answer queries while a model change is re-embedding the gallery.

The active models (the profile's) embed every new image. After a model change (a new content
autoencoder, a new offline semantic vector, a switch of profile) the gallery's vectors are still the
old model's until `reembed` has run through it: until then the old model keeps answering, so search
never loses the images not yet re-embedded. Per role, the serving model is the active one unless
another registered model of that role has vectors for more images (or, while segmentation is still
re-embedding regions, for more regions).
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet

from retrieval.encoders.registry import MODELS, ActiveModels, active_models
from gallery.models import Image, ProcessingStatus
from retrieval.models import Embedding, RegionEmbedding
from retrieval.spaces import VECTOR_OWNERS, Space, VectorOwner

_cache: dict[ActiveModels, tuple[float, ActiveModels]] = {}
_lock = threading.Lock()


def serving_models(*, active: ActiveModels | None = None) -> ActiveModels:
    """The models whose vectors answer queries now (checked at most every
    IMAGINAITION_SERVING_CHECK_SECONDS per process: it counts vectors per model)."""
    active = active or active_models()
    now = time.monotonic()
    with _lock:
        cached = _cache.get(active)
    if cached is not None and now - cached[0] < settings.IMAGINAITION_SERVING_CHECK_SECONDS:
        return cached[1]
    serving = _decide(active)
    with _lock:
        _cache[active] = (now, serving)
    return serving


def forget() -> None:
    """Decide afresh on the next query (tests; after a reembed finishes in this process)."""
    with _lock:
        _cache.clear()


def keys_in_use(*, active: ActiveModels | None = None) -> list[tuple[Space, str]]:
    """(space, model key) of every model whose index must be kept: the active ones, and the serving
    ones while they differ."""
    active = active or active_models()
    serving = serving_models(active=active)
    keys = [(Space.SEMANTIC, active.semantic), (Space.CONTENT, active.content)]
    for pair in ((Space.SEMANTIC, serving.semantic), (Space.CONTENT, serving.content)):
        if pair not in keys:
            keys.append(pair)
    return keys


def indexes_in_use(*, active: ActiveModels | None = None) -> list[tuple[VectorOwner, Space, str]]:
    """(owner, space, model key) of every index to keep: image and region vectors of the models in use."""
    pairs = keys_in_use(active=active)
    return [(owner, space, key) for owner in VECTOR_OWNERS for space, key in pairs]


def index_name(owner: str, space: str, model_key: str) -> str:
    """How commands and reports name one index: "semantic/<key>", "region content/<key>"."""
    return f"{'region ' if owner == 'region' else ''}{space}/{model_key}"


def _decide(active: ActiveModels) -> ActiveModels:
    """The active model serves a space once it has as many image vectors as any other model of its role
    and, while images wait for segmentation (a model change re-segments the gallery to embed its regions
    again), as many region vectors too: search by region rides the same models, and would otherwise lose
    every region not re-embedded yet. With nothing waiting it serves even with fewer regions (another
    segmenter may find fewer masks). Images that failed are not counted: an image the new model cannot
    embed (its file gone) would otherwise hold the change open for ever, the old model answering."""
    regions_waiting = Image.objects.filter(masks_status=ProcessingStatus.PENDING).exists()
    chosen: dict[str, str] = {}
    for space, key in ((Space.SEMANTIC, active.semantic), (Space.CONTENT, active.content)):
        same_role = [spec.key for spec in MODELS.values() if spec.role == space.value]
        images = _vectors_per_model(Embedding, space=space, keys=same_role,
                                    failed=Q(image__status=ProcessingStatus.FAILED))
        regions = _vectors_per_model(RegionEmbedding, space=space, keys=same_role,
                                     failed=Q(image__masks_status=ProcessingStatus.FAILED))
        others = {model_key: n for model_key, n in images.items() if model_key != key}
        best_other = max(others, key=lambda k: others[k], default=None)
        caught_up = best_other is None or (
            images.get(key, 0) >= others[best_other]
            and (not regions_waiting or regions.get(key, 0) >= max(regions.values(), default=0)))
        chosen[space.value] = key if caught_up or best_other is None else best_other
    return replace(active, semantic=chosen["semantic"], content=chosen["content"])


def _vectors_per_model(vectors: type[Embedding] | type[RegionEmbedding], *, space: Space, keys: list[str],
                       failed: Q) -> dict[str, int]:
    """Vectors per model key, those of failed images left out: counted apart (failed images are few, and
    a join for every vector would cost a big gallery's count its speed)."""
    def count(rows: QuerySet[Any]) -> dict[str, int]:
        return dict(rows.filter(space=space, model_key__in=keys).values_list("model_key").annotate(n=Count("id"))
                    .order_by())

    every, of_failed = count(vectors.objects.all()), count(vectors.objects.filter(failed))
    return {key: n - of_failed.get(key, 0) for key, n in every.items()}
