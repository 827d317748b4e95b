"""Where a query becomes a ranked list: query vectors → k nearest per index → the merge policy.

FAISS answers when its index for the active model is available; otherwise PostgreSQL answers the
same query with pgvector, and the response says which engine answered.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image as PILImage

from gallery.imaging import decode_image, for_models, picture_for_models
from gallery.models import Embedding, Image
from retrieval import pgvector_store
from retrieval.encoders.registry import MODELS, ActiveModels, active_models, get_model
from retrieval.indexes import manager, normalize, similarity_between, similarity_from_distance
from retrieval.policy import Candidate, MergedResult, Preferences, merge


class QueryError(Exception):
    """The query cannot be answered (e.g. the image has no embedding yet): a 4xx for the caller."""


@dataclass(frozen=True)
class QueryVectors:
    semantic: np.ndarray | None
    content: np.ndarray | None
    exclude_image_id: int | None = None


@dataclass(frozen=True)
class SearchHit:
    image: Image
    retrieved_by: str
    semantic_similarity: float | None
    content_similarity: float | None


@dataclass
class SearchResponse:
    hits: list[SearchHit]
    counts: dict[str, int]
    engine: str  # "faiss", "pgvector", or "faiss+pgvector" when only one index was available
    models: dict[str, str]
    elapsed_ms: float
    preferences: Preferences
    engines: dict[str, str] = field(default_factory=dict)


_last_build_request = 0.0
BUILD_REQUEST_INTERVAL = 300.0  # seconds: ask the workers at most this often per process


def request_index_build() -> None:
    global _last_build_request
    now = time.monotonic()
    if now - _last_build_request < BUILD_REQUEST_INTERVAL:
        return
    _last_build_request = now
    from retrieval.status import heal_start

    heal_start()


def _dim(model_key: str) -> int:
    return MODELS[model_key].dim


def nearest(*, space: str, model_key: str, query: np.ndarray, k: int,
            exclude_image_id: int | None = None, engine: str = "auto") -> tuple[list[Candidate], str]:
    """k nearest stored images in one space, from FAISS (or pgvector when FAISS cannot answer)."""
    if engine in ("auto", "faiss"):
        snapshot = manager.get(space=space, model_key=model_key, dim=_dim(model_key))
        if snapshot is not None:
            found = snapshot.search(query.astype(np.float32), k, exclude_image_id=exclude_image_id)
            return [Candidate(i, s) for i, s in found], "faiss"
        if engine == "faiss":
            raise QueryError(f"no FAISS index for {space}/{model_key}")
        request_index_build()  # heal: a worker builds it; pgvector answers meanwhile
    neighbours = pgvector_store.knn(model_key=model_key, space=space, dim=_dim(model_key),
                                    query=normalize(space, query.reshape(1, -1))[0], k=k,
                                    exclude_image_id=exclude_image_id, exact=(engine == "pgvector-exact"))
    return [Candidate(n.image_id, float(similarity_from_distance(space, n.distance, squared=False)))
            for n in neighbours], "pgvector"


def vectors_for_image_id(*, image_id: int, models: ActiveModels | None = None) -> QueryVectors:
    models = models or active_models()
    stored = dict(Embedding.objects.filter(image_id=image_id, model_key__in=[models.semantic, models.content])
                  .values_list("model_key", "vector"))
    if models.semantic not in stored and models.content not in stored:
        if not Image.objects.filter(pk=image_id).exists():
            raise QueryError("No such image.")
        raise QueryError("This image has not been embedded yet; try again when its status is ready.")
    return QueryVectors(
        semantic=np.asarray(stored[models.semantic], dtype=np.float32) if models.semantic in stored else None,
        content=np.asarray(stored[models.content], dtype=np.float32) if models.content in stored else None,
        exclude_image_id=image_id,
    )


def vectors_for_picture(*, picture: PILImage.Image, models: ActiveModels) -> QueryVectors:
    picture = for_models(picture)
    return QueryVectors(semantic=get_model(models.semantic).encode_images([picture])[0],
                        content=get_model(models.content).encode_images([picture])[0])


def vectors_for_upload(*, data: bytes, models: ActiveModels) -> QueryVectors:
    """Embed an uploaded image on the fly; nothing is stored. Raises ImageRejected for bad input."""
    decode_image(data)  # the full check every stored image passed
    return vectors_for_picture(picture=picture_for_models(data), models=models)  # as the workers see it


def vectors_for_text(*, text: str, models: ActiveModels) -> QueryVectors:
    text = text.strip()
    if not text:
        raise QueryError("Type some words to search for.")
    return QueryVectors(semantic=get_model(models.semantic).encode_texts([text])[0], content=None)


@dataclass(frozen=True)
class Ranking:
    """The hybrid query's answer before any Image row is read: what the engine decided."""

    results: list[MergedResult]  # both similarities filled in where the query has that part
    engines: dict[str, str]
    preferences: Preferences


def rank(*, query: QueryVectors, preferences: Preferences, models: ActiveModels | None = None,
         engine: str = "auto") -> Ranking:
    """Run both kNN searches, merge them with the policy, fill in the missing similarities."""
    models = models or active_models()
    if query.content is None:
        # A text query has no content part: its semantic list is all there is, so it fills the k places.
        preferences = replace(preferences, intersection_first=False, preferred_index="semantic", split=100)
    found: dict[str, list[Candidate]] = {"semantic": [], "content": []}
    engines: dict[str, str] = {}
    for space, vector, key in (("semantic", query.semantic, models.semantic), ("content", query.content, models.content)):
        if vector is not None:
            found[space], engines[space] = nearest(space=space, model_key=key, query=vector, k=preferences.k,
                                                   exclude_image_id=query.exclude_image_id, engine=engine)
    merged = merge(semantic=found["semantic"], content=found["content"], preferences=preferences)
    return Ranking(results=_fill_similarities(merged, query=query, models=models), engines=engines,
                   preferences=preferences)


def search(*, query: QueryVectors, preferences: Preferences, models: ActiveModels | None = None,
           engine: str = "auto") -> SearchResponse:
    """rank(), then the Image rows of the results (dropping any deleted meanwhile)."""
    started = time.perf_counter()
    models = models or active_models()
    ranking = rank(query=query, preferences=preferences, models=models, engine=engine)
    images = Image.objects.in_bulk([result.image_id for result in ranking.results])
    hits = [SearchHit(image=images[r.image_id], retrieved_by=r.retrieved_by,
                      semantic_similarity=r.semantic_similarity, content_similarity=r.content_similarity)
            for r in ranking.results if r.image_id in images]
    counts = {"both": 0, "semantic": 0, "content": 0}
    for hit in hits:
        counts[hit.retrieved_by] += 1
    used = sorted(set(ranking.engines.values()))
    return SearchResponse(
        hits=hits, counts=counts, engine="+".join(used) if used else "none", engines=ranking.engines,
        models={"semantic": models.semantic, "content": models.content},
        elapsed_ms=(time.perf_counter() - started) * 1000, preferences=ranking.preferences)


def _fill_similarities(merged: Sequence[MergedResult], *, query: QueryVectors,
                       models: ActiveModels) -> list[MergedResult]:
    """Each result's similarity in the index that did not return it, computed from its stored
    vector, as the original does."""
    missing: dict[str, list[int]] = {"semantic": [], "content": []}
    for m in merged:
        if m.semantic_similarity is None and query.semantic is not None:
            missing["semantic"].append(m.image_id)
        if m.content_similarity is None and query.content is not None:
            missing["content"].append(m.image_id)
    filled: dict[str, dict[int, float]] = {"semantic": {}, "content": {}}
    for space, key, vector in (("semantic", models.semantic, query.semantic), ("content", models.content, query.content)):
        if not missing[space]:
            continue
        # From the in-memory index when there is one (as fast as the search), else from Postgres.
        snapshot = manager.loaded(space=space, model_key=key)
        stored = snapshot.vectors_for(missing[space]) if snapshot is not None else {}
        rest = [image_id for image_id in missing[space] if image_id not in stored]
        if rest:
            stored.update({image_id: np.asarray(v, dtype=np.float32) for image_id, v in
                           Embedding.objects.filter(image_id__in=rest, model_key=key, space=space)
                           .values_list("image_id", "vector")})
        if stored:
            sims = similarity_between(space, vector, np.stack(list(stored.values())))
            filled[space] = {image_id: float(s) for image_id, s in zip(stored, sims, strict=True)}
    return [replace(m,
                    semantic_similarity=m.semantic_similarity if m.semantic_similarity is not None
                    else filled["semantic"].get(m.image_id),
                    content_similarity=m.content_similarity if m.content_similarity is not None
                    else filled["content"].get(m.image_id))
            for m in merged]
