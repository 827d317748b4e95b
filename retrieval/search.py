"""Where a query becomes a ranked list: query → vectors → k nearest per index → the merge policy.

`search_for` is the one entry point of the search page, the REST API and admin's "search similar":
it checks access, resolves the caller's preferences, turns the query (a stored image, an uploaded
picture, the staged upload, or words) into vectors and ranks. FAISS answers when its index for the
active model is available; otherwise PostgreSQL answers the same query with pgvector, and the
response says which engine answered.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from PIL import Image as PILImage

from gallery.access import can_view_gallery
from gallery.errors import Refused
from gallery.imaging import decode_for_models, for_models
from gallery.models import Image, Mask, ProcessingStatus
from gallery.selectors import labels_as_stored, labels_unknown_message
from gallery.services import User, shows_anything, stored_name, without_controls
from gallery.storage_check import stored_file_missing
from retrieval import uploads
from retrieval.encoders.base import share_more_likely_than_not
from retrieval.encoders.registry import ActiveModels, WeightsUnreadable, get_model
from retrieval.index_snapshots import manager
from retrieval.metrics import similarity_between
from retrieval.models import Embedding, RegionEmbedding
from retrieval.neighbours import plan_nearest, run_side_by_side
from retrieval.policy import Candidate, MergedResult, Preferences, merge
from retrieval.preferences import PreferenceOverrides, policy_preferences, preferences_get
from retrieval.regions import large_enough_for_a_region, region_picture
from retrieval.serving import serving_models
from retrieval.spaces import Space, VectorOwner


logger = logging.getLogger(__name__)

TEXT_MAX_CHARS = 500  # a text query's length: the page's box, its address and the API alike


class QueryError(Refused):
    """The query cannot be answered (e.g. the image has no embedding yet): 400, or 403/404."""


@dataclass(frozen=True)
class Query:
    """What to search with: exactly one of a stored image, an uploaded picture, the staged upload, words."""

    image_id: int | None = None
    upload: bytes | None = None  # an uploaded file's bytes (not stored)
    upload_name: str = "upload"
    staged: bool = False  # the picture staged in the caller's session (retrieval.uploads)
    staged_token: str = ""  # the staged picture the asking page showed (refused if the session has another now)
    text: str | None = None
    include_self: bool = False  # a stored image's own row may be a result
    mask_id: int | None = None  # a stored mask: search with its region
    label: str | None = None  # with an upload (or the staged one): search with its region of this label
    labels: tuple[str, ...] = ()  # keep only images with a mask of one of these labels


@dataclass(frozen=True)
class QueryVectors:
    semantic: np.ndarray | None
    content: np.ndarray | None
    exclude_image_id: int | None = None
    owner: VectorOwner = "image"  # "region": search the region indexes, one result per image
    only_image_ids: frozenset[int] | None = None  # a label filter's images
    only_region_ids: frozenset[int] | None = None  # a region search's label filter: those labels' regions


@dataclass(frozen=True)
class SearchHit:
    image: Image
    retrieved_by: str
    semantic_similarity: float | None
    content_similarity: float | None
    region: Mask | None = None  # a region search: the image's region that matched


@dataclass
class SearchResponse:
    hits: list[SearchHit]
    counts: dict[str, int]
    engine: str  # "faiss", "pgvector", or "faiss+pgvector" when only one index was available
    models: dict[str, str]
    elapsed_ms: float
    preferences: Preferences
    engines: dict[str, str] = field(default_factory=dict)
    about: str = ""  # what was searched with, for a person: an image's name, “the words”
    query_image: Image | None = None  # the stored image searched with, if any


def search_for(*, user: User, session: SessionBase | None, query: Query,
               overrides: PreferenceOverrides | None = None, models: ActiveModels | None = None) -> SearchResponse:
    """Answer one query for one caller with their preferences (and any overrides of them).

    Raises QueryError (403 without the right to see the gallery; 400 for an unknown image, an image
    without vectors yet, empty words, or not exactly one query) and ImageRejected for a bad upload.
    """
    if not can_view_gallery(user):
        raise QueryError("Sign in to search the gallery.", status_code=403)
    models = models or serving_models()
    preferences = policy_preferences(preferences_get(user=user, session=session), overrides)
    try:
        vectors, about, query_image = _query_vectors(query, session=session, models=models)
    except WeightsUnreadable as exc:  # the service's fault, not the query's: logged with the file and the fix
        logger.error("a search could not load its model: %s", exc)
        raise QueryError(f"Search is unavailable just now: the model {exc.key} cannot read its weight file. An "
                         "administrator fixes it (the service's log says how).", status_code=503) from exc
    response = search(query=vectors, preferences=preferences, models=models)
    response.about, response.query_image = about, query_image
    return response


def _query_vectors(query: Query, *, session: SessionBase | None,
                   models: ActiveModels) -> tuple[QueryVectors, str, Image | None]:
    vectors, about, image = _what_to_search_with(query, session=session, models=models)
    if query.labels:
        masks = masks_with_labels(query.labels)
        vectors = replace(vectors, only_image_ids=frozenset(image_id for _, image_id in masks))
        if vectors.owner == "region":  # the matched region is one of those labels, not the image's best
            vectors = replace(vectors, only_region_ids=frozenset(mask_id for mask_id, _ in masks))
    return vectors, about, image


def _what_to_search_with(query: Query, *, session: SessionBase | None,
                         models: ActiveModels) -> tuple[QueryVectors, str, Image | None]:
    given = [query.image_id is not None, query.upload is not None, query.staged, query.text is not None,
             query.mask_id is not None]
    if sum(given) != 1:
        raise QueryError("Choose a file, pick an image or type some words first." if not any(given)
                         else "Give exactly one of image_id, mask_id, image or text.")
    query = replace(query, label=(query.label or "").strip() or None)  # a blank label: the whole picture
    if query.label is not None and query.upload is None and not query.staged:
        raise QueryError("label picks a region of an uploaded image: give it with image.", field="label")
    if query.mask_id is not None:
        mask = Mask.objects.select_related("image").filter(pk=query.mask_id).first()
        if mask is None:
            raise QueryError("No such mask.", status_code=404)
        vectors = vectors_for_mask(mask=mask, models=models)
        if query.include_self:
            vectors = replace(vectors, exclude_image_id=None)
        return vectors, f"the {mask.label} in {mask.image.original_name}", mask.image
    if query.image_id is not None:
        image = Image.objects.filter(pk=query.image_id).first()
        if image is None:
            raise QueryError("No such image.", status_code=404)  # as for an unknown mask_id
        vectors = vectors_for_image_id(image_id=image.pk, models=models)
        if query.include_self:
            vectors = replace(vectors, exclude_image_id=None)
        return vectors, image.original_name, image
    if query.upload is not None or query.staged:
        staged = None
        if query.upload is not None:
            data, name = query.upload, query.upload_name
        else:
            staged = uploads.staged_get(session=session, token=query.staged_token) if session is not None else None
            if staged is None:
                raise QueryError(uploads.staged_missing_message(session=session))
            data, name = staged.data(), staged.name
        name = stored_name(name)  # as it would be stored: a U+202E in it reversed the page's heading
        if query.label is None:
            return vectors_for_upload(data=data, models=models), name, None
        masks = _staged_masks(staged) if staged is not None else uploads.upload_masks(data=data, name=name)
        vectors, label = vectors_for_upload_region(data=data, label=query.label, masks=masks, models=models)
        return vectors, f"the {label} in {name}", None
    text = (query.text or "").strip()
    return vectors_for_text(text=text, models=models), f"“{without_controls(text)}”", None


def id_parse(value: str) -> int | None:
    """A row id from a request value, None unless it is plain ASCII digits ("²" is a digit to str.isdigit)."""
    return int(value) if value.isascii() and value.isdigit() else None


def labels_parse(values: Sequence[str]) -> tuple[str, ...]:
    """A label filter from request values, each comma-separated ("cat,dog", or repeated fields):
    trimmed, without blanks or repeats, sorted."""
    return tuple(sorted({label.strip() for value in values for label in value.split(",") if label.strip()}))


def masks_with_labels(labels: Sequence[str]) -> list[tuple[int, int]]:
    """(mask id, image id) of the masks of these labels, in any letter case (QueryError naming the
    known labels otherwise)."""
    stored = labels_as_stored(labels)
    if unknown := labels_unknown_message(labels, stored):
        raise QueryError(unknown, field="labels")
    return list(Mask.objects.filter(label__in=stored).values_list("id", "image_id"))


def vectors_for_image_id(*, image_id: int, models: ActiveModels | None = None) -> QueryVectors:
    """The stored vectors of an image (QueryError when there is no such image or it has no vectors yet)."""
    models = models or serving_models()
    stored = dict(Embedding.objects.filter(image_id=image_id, model_key__in=[models.semantic, models.content])
                  .values_list("model_key", "vector"))
    if models.semantic not in stored and models.content not in stored:
        image = Image.objects.filter(pk=image_id).only("status", "error").first()
        if image is None:
            raise QueryError("No such image.", status_code=404)
        if image.status == ProcessingStatus.FAILED:  # it will not become ready by waiting
            # A retry of an image whose file is gone fails again at once (retry_failed leaves it): say what helps.
            remedy = ("its stored file is missing: adding the same file again restores it" if stored_file_missing(image)
                      else "retry it once the cause is fixed")
            raise QueryError(f"This image could not be embedded ({image.error or 'no reason recorded'}), so it "
                             f"has no vectors to search with; {remedy}.")
        raise QueryError("This image has not been embedded yet; try again when its status is ready.")
    return _stored_query(stored, models=models, exclude_image_id=image_id, owner="image")


def _stored_query(stored: dict[str, Any], *, models: ActiveModels, exclude_image_id: int,
                  owner: VectorOwner) -> QueryVectors:
    """A query from stored vectors (model key -> vector), each space's part where it is there."""
    def part(key: str) -> np.ndarray | None:
        return np.asarray(stored[key], dtype=np.float32) if key in stored else None

    return QueryVectors(semantic=part(models.semantic), content=part(models.content),
                        exclude_image_id=exclude_image_id, owner=owner)


def _too_small(what: str) -> QueryError:
    return QueryError(f"{what} is too small to search with: regions under "
                      f"{settings.IMAGINAITION_REGION_MIN_AREA:.0%} of the picture have no vectors.")


def vectors_for_picture(*, picture: PILImage.Image, models: ActiveModels) -> QueryVectors:
    picture = for_models(picture)
    return QueryVectors(semantic=get_model(models.semantic).encode_images([picture])[0],
                        content=get_model(models.content).encode_images([picture])[0])


def vectors_for_upload(*, data: bytes, models: ActiveModels) -> QueryVectors:
    """Embed an uploaded image on the fly; nothing is stored. Raises ImageRejected for bad input."""
    picture = decode_for_models(data).picture  # every check of a stored image, at the models' scale
    return vectors_for_picture(picture=picture, models=models)  # as the workers see it


def vectors_for_mask(*, mask: Mask, models: ActiveModels) -> QueryVectors:
    """A stored mask's region vectors (QueryError when it is too small to be a region, or not yet
    embedded)."""
    stored = dict(RegionEmbedding.objects.filter(mask=mask, model_key__in=[models.semantic, models.content])
                  .values_list("model_key", "vector"))
    if models.semantic not in stored and models.content not in stored:
        below_minimum = not large_enough_for_a_region(mask.area_fraction)
        # Segmentation done and no region vectors by any model: it judged the region too small.
        skipped = mask.image.masks_status == "ready" and not RegionEmbedding.objects.filter(mask=mask).exists()
        if below_minimum or skipped:
            raise _too_small("This region")
        raise QueryError("This region has no vectors yet; try again when the image's masks are ready.")
    return _stored_query(stored, models=models, exclude_image_id=mask.image_id, owner="region")


def _staged_masks(staged: uploads.StagedUpload) -> dict[str, np.ndarray]:
    if staged.state == "working":
        raise QueryError("The labels of your picture are still being found; try again in a moment.", status_code=409)
    if staged.state == "failed":  # no labels were found at all: "it has no cat" would be untrue
        raise QueryError(f"{staged.shown_error} Search with the whole picture instead.", status_code=409)
    return staged.masks()


def vectors_for_upload_region(*, data: bytes, label: str, masks: dict[str, np.ndarray],
                              models: ActiveModels) -> tuple[QueryVectors, str]:
    """Cut an uploaded picture's region of `label` out (its masks: label -> soft mask at the picture's
    size, from the segmenter) and embed it; nothing is stored. Also the label as the segmenter names it."""
    picture = decode_for_models(data).picture  # the masks are at this picture's size
    wanted = label.strip().casefold()  # in any letter case, as every label filter takes them
    matched = label if label in masks else next((name for name in masks if name.casefold() == wanted), None)
    if matched is None:
        raise QueryError(f"This picture has no {label}; its labels: {', '.join(sorted(masks)) or 'none'}.",
                         field="label")
    probability = masks[matched]  # at this picture's size (the segmenter saw it)
    # The bar of a stored mask's region: its share at 0.5, the label's percentage on the page.
    large_enough = large_enough_for_a_region(share_more_likely_than_not(probability))
    region = region_picture(picture, probability) if large_enough else None
    if region is None:
        raise _too_small(f"The {matched}")
    return replace(vectors_for_picture(picture=region, models=models), owner="region"), matched


def vectors_for_text(*, text: str, models: ActiveModels) -> QueryVectors:
    # Compatibility forms as their plain letters: fullwidth "ｃａｔ" (an East Asian keyboard's) was refused as
    # unknown words, and a ligature "ﬁ" read as another piece than "fi".
    text = unicodedata.normalize("NFKC", text).strip()
    if not shows_anything(text):  # a lone U+FEFF searched, as if it were words
        raise QueryError("Type some words to search for.", field="text")
    if len(text) > TEXT_MAX_CHARS:
        raise QueryError(f"A text query has at most {TEXT_MAX_CHARS} characters; this one has {len(text)}.",
                         field="text")
    model = get_model(models.semantic)
    reading = model.read_text(text)
    if reading is not None and reading.unknown * 2 > reading.tokens:  # searched by what is left: another meaning
        known = ("knows none of these words" if reading.unknown == reading.tokens else
                 f"does not know most of these words ({reading.unknown} of {reading.tokens} word pieces)")
        raise QueryError(f"The text model {known} (it reads English; emoji and most other scripts are unknown to "
                         "it): describe the picture in English words.", field="text")
    if reading is not None and reading.tokens > reading.limit:  # the rest would be left out without a word
        raise QueryError(f"This text is longer than the text model reads: at most {reading.limit} word pieces, "
                         f"and it has {reading.tokens}. Shorten it.", field="text")
    return QueryVectors(semantic=model.encode_texts([text])[0], content=None)


@dataclass(frozen=True)
class Ranking:
    """The hybrid query's answer before any Image row is read: what the engine decided."""

    results: list[MergedResult]  # both similarities filled in where the query has that part
    engines: dict[str, str]
    preferences: Preferences
    regions: dict[int, int] = field(default_factory=dict)  # a region search: image id -> matched mask id


def rank(*, query: QueryVectors, preferences: Preferences, models: ActiveModels | None = None,
         engine: str = "auto") -> Ranking:
    """Run both kNN searches, merge them with the policy, fill in the missing similarities."""
    models = models or serving_models()
    if query.content is None:
        # A text query has no content part: its semantic list is all there is, so it fills the k places.
        preferences = replace(preferences, intersection_first=False, preferred_index=Space.SEMANTIC, split=100)
    found: dict[Space, list[Candidate]] = {Space.SEMANTIC: [], Space.CONTENT: []}
    matched: dict[Space, dict[int, int]] = {Space.SEMANTIC: {}, Space.CONTENT: {}}
    plans = {space: plan_nearest(space=space, model_key=key, query=vector, k=preferences.k,
                                 exclude_image_id=query.exclude_image_id, engine=engine,
                                 only_image_ids=query.only_image_ids, only_region_ids=query.only_region_ids,
                                 owner=query.owner)
             for space, vector, key in ((Space.SEMANTIC, query.semantic, models.semantic),
                                        (Space.CONTENT, query.content, models.content)) if vector is not None}
    # both spaces at once where both answer from memory (retrieval/neighbours.py)
    for space, (candidates, regions) in zip(plans, run_side_by_side(list(plans.values())), strict=True):
        found[space], matched[space] = candidates, regions
    engines: dict[str, str] = {space: planned.engine for space, planned in plans.items()}
    merged = merge(semantic=found[Space.SEMANTIC], content=found[Space.CONTENT], preferences=preferences)
    if query.owner == "region":
        preferred = Space(preferences.preferred_index)
        both = {**matched[preferred.other], **matched[preferred]}  # the preferred index's region where both found one
        named = {r.image_id: both[r.image_id] for r in merged if r.image_id in both}
        return Ranking(results=_region_similarities_filled(merged, named=named, matched=matched, query=query,
                                                           models=models),
                       engines=engines, preferences=preferences, regions=named)
    return Ranking(results=_fill_similarities(merged, query=query, models=models), engines=engines,
                   preferences=preferences)


def search(*, query: QueryVectors, preferences: Preferences, models: ActiveModels | None = None,
           engine: str = "auto") -> SearchResponse:
    """rank(), then the Image rows of the results. A result deleted (or a region replaced) by another
    process since this one's indexes last caught up is forgotten at once and the ranking asked again, so
    the k places are filled from the next candidates (it came back one short for up to a sync interval)."""
    started = time.perf_counter()
    models = models or serving_models()
    ranking = rank(query=query, preferences=preferences, models=models, engine=engine)
    hits, gone_images, gone_regions = _hits(ranking, query=query)
    if gone_images or gone_regions:
        manager.forget_images(gone_images)
        manager.forget_regions(gone_regions)
        ranking = rank(query=query, preferences=preferences, models=models, engine=engine)
        hits, _, _ = _hits(ranking, query=query)  # anything deleted meanwhile again: dropped, not chased
    counts = {"both": 0, "semantic": 0, "content": 0}
    for hit in hits:
        counts[hit.retrieved_by] += 1
    used = sorted(set(ranking.engines.values()))
    return SearchResponse(
        hits=hits, counts=counts, engine="+".join(used) if used else "none", engines=ranking.engines,
        models={"semantic": models.semantic, "content": models.content},
        elapsed_ms=(time.perf_counter() - started) * 1000, preferences=ranking.preferences)


def _hits(ranking: Ranking, *, query: QueryVectors) -> tuple[list[SearchHit], set[int], set[int]]:
    """The results with their rows, and the images and regions that have none any more (deleted, replaced)."""
    images = Image.objects.in_bulk([result.image_id for result in ranking.results])
    masks = Mask.objects.in_bulk(list(ranking.regions.values())) if ranking.regions else {}
    gone_images = {r.image_id for r in ranking.results} - set(images)
    # a region replaced since the index last caught up (re-segmented) is no match any more
    gone_regions = (set() if query.owner == "image"
                    else {mask_id for mask_id in ranking.regions.values() if mask_id not in masks})
    hits = [SearchHit(image=images[r.image_id], retrieved_by=r.retrieved_by,
                      semantic_similarity=r.semantic_similarity, content_similarity=r.content_similarity,
                      region=masks.get(ranking.regions.get(r.image_id, -1)))
            for r in ranking.results if r.image_id in images
            and (query.owner == "image" or ranking.regions.get(r.image_id) in masks)]
    return hits, gone_images, gone_regions


def _fill_similarities(merged: Sequence[MergedResult], *, query: QueryVectors,
                       models: ActiveModels) -> list[MergedResult]:
    """Each result's similarity in the index that did not return it, computed from its stored
    vector with the index's own measure (semantic: the cosine, 1 − d²/2; content: 1 − L1/2), so
    both similarities of a result compare with those of the results the index did return."""
    missing: dict[Space, list[int]] = {Space.SEMANTIC: [], Space.CONTENT: []}
    for m in merged:
        if m.semantic_similarity is None and query.semantic is not None:
            missing[Space.SEMANTIC].append(m.image_id)
        if m.content_similarity is None and query.content is not None:
            missing[Space.CONTENT].append(m.image_id)
    filled: dict[Space, dict[int, float]] = {Space.SEMANTIC: {}, Space.CONTENT: {}}
    for space, key, vector in ((Space.SEMANTIC, models.semantic, query.semantic),
                               (Space.CONTENT, models.content, query.content)):
        if missing[space] and vector is not None:  # missing only where the query has that part
            filled[space] = _similarities_of(space=space, model_key=key, owner="image", query=vector,
                                             ids=missing[space])
    # built directly: dataclasses.replace took 0.3 ms for 50 results, a few % of a query at 1M
    return [MergedResult(m.image_id, m.retrieved_by,
                         m.semantic_similarity if m.semantic_similarity is not None
                         else filled[Space.SEMANTIC].get(m.image_id),
                         m.content_similarity if m.content_similarity is not None
                         else filled[Space.CONTENT].get(m.image_id))
            for m in merged]


def _region_similarities_filled(merged: Sequence[MergedResult], *, named: dict[int, int],
                                matched: dict[Space, dict[int, int]], query: QueryVectors,
                                models: ActiveModels) -> list[MergedResult]:
    """A region search's results with both similarities of the region each names: an index that found
    the image by another of its regions (or did not find it) has the named region's own similarity
    instead, so "matched region: cup · content 0.71" is the cup's 0.71, not its motorbike's."""
    own: dict[Space, dict[int, float]] = {}
    for space, key, vector in ((Space.SEMANTIC, models.semantic, query.semantic),
                               (Space.CONTENT, models.content, query.content)):
        other_regions = [mask_id for image_id, mask_id in named.items() if matched[space].get(image_id) != mask_id]
        own[space] = (_similarities_of(space=space, model_key=key, owner="region", query=vector, ids=other_regions)
                      if vector is not None and other_regions else {})

    def similarity(space: Space, result: MergedResult, found: float | None) -> float | None:
        mask_id = named.get(result.image_id)
        if mask_id is not None and matched[space].get(result.image_id) == mask_id:
            return found  # the index found the image by the named region: its own similarity already
        return own[space].get(mask_id) if mask_id is not None else None

    return [MergedResult(m.image_id, m.retrieved_by, similarity(Space.SEMANTIC, m, m.semantic_similarity),
                         similarity(Space.CONTENT, m, m.content_similarity)) for m in merged]


def _similarities_of(*, space: Space, model_key: str, owner: VectorOwner, query: np.ndarray,
                     ids: list[int]) -> dict[int, float]:
    """These images' (or regions') similarities to the query, with the index's own measure: their vectors
    from the loaded index's memory (as fast as the search), the rest from Postgres."""
    snapshot = manager.loaded(space=space, model_key=model_key, owner=owner)
    stored = snapshot.vectors_for(ids) if snapshot is not None else {}
    rest = [stored_id for stored_id in ids if stored_id not in stored]
    if rest:
        rows = (Embedding.objects.filter(image_id__in=rest, model_key=model_key, space=space)
                .values_list("image_id", "vector") if owner == "image" else
                RegionEmbedding.objects.filter(mask_id__in=rest, model_key=model_key, space=space)
                .values_list("mask_id", "vector"))
        stored.update({stored_id: np.asarray(vector, dtype=np.float32) for stored_id, vector in rows})
    if not stored:
        return {}
    similarities = similarity_between(space, query, np.stack(list(stored.values()))).tolist()
    return dict(zip(stored, similarities, strict=True))
