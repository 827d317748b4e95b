"""The k nearest images in one space: from FAISS (pgvector when no FAISS index is ready), by whole
images or by their regions, optionally only among images that have some labels.

A label filter is not a post-filter that leaves a page half empty: when few images pass it, their
vectors are compared exactly (read from the index's memory); when many do, the index is asked for
more neighbours until k of them pass. Either way k results come back whenever k images qualify.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from gallery.errors import Refused
from retrieval import pgvector_store
from retrieval.encoders.registry import model_dim
from retrieval.helper_threads import helper_threads
from retrieval.index_snapshots import IndexSnapshot, manager
from retrieval.metrics import faiss_metric, normalize, similarity_from_distance
from retrieval.policy import Candidate
from retrieval.spaces import VectorOwner
from retrieval.status import heal_start

# Below this many candidate vectors a filtered search compares them all (exact, always k).
EXACT_FILTER_MAX = 20_000
# A region search asks for this many regions per wanted image (an image has a few regions).
REGIONS_PER_IMAGE = 4

_last_build_request = 0.0
BUILD_REQUEST_INTERVAL = 300.0  # seconds: ask the workers at most this often per process


def request_index_build() -> None:
    global _last_build_request
    now = time.monotonic()
    if now - _last_build_request < BUILD_REQUEST_INTERVAL:
        return
    _last_build_request = now
    heal_start()


def nearest(*, space: str, model_key: str, query: np.ndarray, k: int, exclude_image_id: int | None = None,
            engine: str = "auto", only_image_ids: Collection[int] | None = None) -> tuple[list[Candidate], str]:
    """k nearest stored images in one space (only among `only_image_ids` when given)."""
    found, _, used = _nearest(space=space, model_key=model_key, query=query, k=k, exclude_image_id=exclude_image_id,
                              engine=engine, only_image_ids=only_image_ids, owner="image")
    return found, used


def nearest_by_regions(*, space: str, model_key: str, query: np.ndarray, k: int,
                       exclude_image_id: int | None = None, engine: str = "auto",
                       only_image_ids: Collection[int] | None = None,
                       only_region_ids: Collection[int] | None = None,
                       ) -> tuple[list[Candidate], dict[int, int], str]:
    """The k images whose best region (among only_region_ids, if given) is nearest to a region query:
    image candidates (the best region's similarity), each image's best region (mask id), and the
    engine that answered."""
    return _nearest(space=space, model_key=model_key, query=query, k=k, exclude_image_id=exclude_image_id,
                    engine=engine, only_image_ids=only_image_ids, only_region_ids=only_region_ids, owner="region")


def _nearest(*, space: str, model_key: str, query: np.ndarray, k: int, exclude_image_id: int | None, engine: str,
             only_image_ids: Collection[int] | None, owner: VectorOwner,
             only_region_ids: Collection[int] | None = None) -> tuple[list[Candidate], dict[int, int], str]:
    planned = plan_nearest(space=space, model_key=model_key, query=query, k=k, exclude_image_id=exclude_image_id,
                           engine=engine, only_image_ids=only_image_ids, only_region_ids=only_region_ids,
                           owner=owner)
    found, regions = planned.run()
    return found, regions, planned.engine


# Candidates nearest first, and for a region search each image's best region (mask id; else empty).
Answer = tuple[list[Candidate], dict[int, int]]


@dataclass(frozen=True)
class PlannedSearch:
    """Which engine answers one space's search (decided in the caller's thread: it may read the
    database), and the search itself. A FAISS search reads only this process's memory, so it may
    run on another thread (run_side_by_side); a pgvector one uses the caller's connection."""

    engine: str  # faiss | pgvector | none
    run: Callable[[], Answer]

    @property
    def in_memory(self) -> bool:
        return self.engine != "pgvector"


def plan_nearest(*, space: str, model_key: str, query: np.ndarray, k: int, exclude_image_id: int | None = None,
                 engine: str = "auto", only_image_ids: Collection[int] | None = None,
                 only_region_ids: Collection[int] | None = None, owner: VectorOwner = "image") -> PlannedSearch:
    """The k nearest images (owner "region": by their regions, those in only_region_ids if given) in
    one space, to run later."""
    query = query.astype(np.float32)
    allowed = None if only_image_ids is None else set(only_image_ids)
    regions = None if only_region_ids is None or owner != "region" else set(only_region_ids)
    if (allowed is not None and not allowed) or (regions is not None and not regions):
        return PlannedSearch("none", lambda: ([], {}))
    if engine in ("auto", "faiss"):
        snapshot = manager.get(space=space, model_key=model_key, dim=model_dim(model_key), owner=owner)
        if snapshot is not None:
            def from_faiss() -> Answer:
                return _answer(_faiss_images(snapshot, query, k, exclude_image_id=exclude_image_id, allowed=allowed,
                                             allowed_regions=regions), owner)
            return PlannedSearch("faiss", from_faiss)
        if engine == "faiss":
            raise Refused(f"no FAISS index for {space}/{model_key}")
        request_index_build()  # heal: a worker builds it; pgvector answers meanwhile

    def from_pgvector() -> Answer:
        return _answer(_pgvector_images(space=space, model_key=model_key, query=query, k=k,
                                        exclude_image_id=exclude_image_id, allowed=allowed,
                                        allowed_regions=regions, owner=owner,
                                        exact=(engine == "pgvector-exact")), owner)
    return PlannedSearch("pgvector", from_pgvector)


def _answer(hits: list[tuple[int, float, int]], owner: VectorOwner) -> Answer:
    return [Candidate(i, s) for i, s, _ in hits], ({i: m for i, _, m in hits} if owner == "region" else {})


def run_side_by_side(plans: Sequence[PlannedSearch]) -> list[Answer]:
    """Each plan's answer, in order. In-memory (FAISS) searches after the first run on helper threads
    while this thread runs the first: FAISS and numpy work without Python's lock, so a hybrid query's
    two spaces take about the time of the slower one where a core is free. A search no helper has
    started by the time this thread is done with its own runs here: never slower than one after
    the other, on a busy host too."""
    aside = {position: helper_threads().submit(plan.run) for position, plan in enumerate(plans)
             if plan.in_memory and position > 0}
    answers: dict[int, Answer] = {}
    for position, plan in enumerate(plans):
        if position not in aside:
            answers[position] = plan.run()
    for position, future in aside.items():
        answers[position] = plans[position].run() if future.cancel() else future.result()
    return [answers[position] for position in range(len(plans))]


def _best_per_image(labelled: list[tuple[int, float]], image_of: dict[int, int] | None,
                    k: int) -> list[tuple[int, float, int]]:
    """(image, similarity, label) of each image's first (best) label, nearest first, at most k."""
    seen: set[int] = set()
    best: list[tuple[int, float, int]] = []
    for label, similarity in labelled:
        image_id = label if image_of is None else image_of.get(label)
        if image_id is None or image_id in seen:
            continue
        seen.add(image_id)
        best.append((image_id, similarity, label))
        if len(best) == k:
            break
    return best


def _faiss_images(snapshot: IndexSnapshot, query: np.ndarray, k: int, *, exclude_image_id: int | None,
                  allowed: set[int] | None, allowed_regions: set[int] | None = None) -> list[tuple[int, float, int]]:
    image_of = snapshot.image_of if snapshot.owner == "region" else None
    if image_of is None:
        allowed_regions = None
    labels: set[int] | None = None  # the index labels the filters leave, where there are filters
    if allowed is not None:
        labels = set(allowed) if image_of is None else \
            {label for image_id in allowed for label in snapshot.regions_of.get(image_id, ())}
    if allowed_regions is not None:
        labels = set(allowed_regions) if labels is None else labels & allowed_regions
    if labels is not None:
        if exclude_image_id is not None:
            labels -= {exclude_image_id} if image_of is None else snapshot.regions_of.get(exclude_image_id, set())
        if len(labels) <= EXACT_FILTER_MAX:
            present, matrix = snapshot.vectors_matrix(sorted(labels))
            if not present:
                return []
            # Exact kNN over the candidates' stored vectors (FAISS's own kernels; as the index measures).
            unit = normalize(snapshot.space, query.reshape(1, -1))
            distances, rows = faiss.knn(unit, matrix, len(present), metric=faiss_metric(snapshot.space))
            ranked = [(present[row], float(similarity_from_distance(snapshot.space, distance)))
                      for row, distance in zip(rows[0].tolist(), distances[0].tolist(), strict=True) if row >= 0]
            return _best_per_image(ranked, image_of, k)
    total = len(snapshot.ids)
    per_image = 1 if image_of is None else REGIONS_PER_IMAGE
    share = 1.0 if allowed is None else max(len(allowed) / max(snapshot.count, 1), 1e-6)
    if allowed_regions is not None:
        share = min(share, max(len(allowed_regions) / max(total, 1), 1e-6))
    wanted = min(total, math.ceil(k * per_image / min(share, 1.0)))
    while True:
        found = snapshot.search(query, wanted, exclude_image_id=exclude_image_id)
        if allowed is not None:
            found = [(label, s) for label, s in found
                     if (label if image_of is None else image_of.get(label, -1)) in allowed]
        if allowed_regions is not None:
            found = [(label, s) for label, s in found if label in allowed_regions]
        best = _best_per_image(found, image_of, k)
        if len(best) >= k or wanted >= total:
            return best
        wanted = min(total, wanted * 2)


def _pgvector_images(*, space: str, model_key: str, query: np.ndarray, k: int, exclude_image_id: int | None,
                     allowed: set[int] | None, owner: VectorOwner, exact: bool,
                     allowed_regions: set[int] | None = None) -> list[tuple[int, float, int]]:
    unit = normalize(space, query.reshape(1, -1))[0]
    per_image = 1 if owner == "image" else REGIONS_PER_IMAGE
    wanted = k * per_image
    while True:
        neighbours = pgvector_store.knn(model_key=model_key, space=space, dim=model_dim(model_key), query=unit,
                                        k=wanted, exclude_image_id=exclude_image_id, owner=owner, exact=exact,
                                        only_image_ids=sorted(allowed) if allowed is not None else None,
                                        only_ids=sorted(allowed_regions) if allowed_regions is not None else None)
        labelled = [(n.id, float(similarity_from_distance(space, n.distance, squared=False))) for n in neighbours]
        image_of = None if owner == "image" else pgvector_store.region_images([n.id for n in neighbours])
        best = _best_per_image(labelled, image_of, k)
        if len(best) >= k or len(neighbours) < wanted:
            return best
        wanted *= 2
