"""FAISS indexes rebuilt from Postgres, one per (space, model key), kept current incrementally.

- Semantic: L2-normalized vectors, L2 distance (FAISS reports it squared); similarity 1 − d/2
  (the cosine). Content: L1-normalized vectors, L1 distance; similarity 1 − d₁/2.
- Exact (flat) up to IMAGINAITION_FLAT_INDEX_MAX vectors; above it approximate: IVF by default
  (k-means lists; it builds in about the time it takes to read the vectors, where an HNSW graph
  takes 10–20×), HNSW on request. An IVF index calibrates its nprobe at build time: the smallest
  that reaches IMAGINAITION_ANN_TARGET_RECALL on a sample of stored vectors against exact search.
- A rebuild streams vectors with binary COPY, builds aside, writes the file, then bumps the
  version stamp in the database (IndexState) and swaps the new index in atomically. Other
  processes see the newer version on their next query and load the file.
- Between rebuilds each process catches up on its own: embeddings created since its last sync are
  added, tombstoned images dropped (checked at most every IMAGINAITION_INDEX_SYNC_SECONDS).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import faiss
import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from retrieval.encoders.base import l1_normalize, l2_normalize
from retrieval.models import DeletedImage, Embedding, IndexState
from retrieval.vector_io import count_vectors, stream_raw_chunks, stream_vectors

logger = logging.getLogger(__name__)

# Rows committed slightly out of created_at order are still caught: re-scan this far back. The
# pipeline's write transactions last milliseconds; a longer slack would re-read every row of a fresh
# bulk load on each catch-up.
SYNC_SLACK = timedelta(seconds=10)


def normalize(space: str, vectors: np.ndarray) -> np.ndarray:
    return l2_normalize(vectors) if space == "semantic" else l1_normalize(vectors)


def normalize_for_index(space: str, vectors: np.ndarray) -> np.ndarray:
    """normalize() for large chunks: in place, no temporary copies of the whole chunk (a rebuild
    streams 100k+ vectors). Measured: as fast as a fused numpy expression, and simpler."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if space == "semantic":
        faiss.normalize_L2(vectors)
    else:
        norms = np.abs(vectors).sum(axis=1, keepdims=True)
        np.maximum(norms, 1e-12, out=norms)
        vectors /= norms
    return vectors


def similarity_from_distance(space: str, distance: float | np.ndarray, *, squared: bool = True):
    """1 − d/2, where d is FAISS's distance: squared L2 for semantic, L1 for content."""
    if space == "semantic" and not squared:
        distance = np.square(distance)
    return 1.0 - np.asarray(distance, dtype=np.float64) / 2.0


def similarity_between(space: str, query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """The similarity the index would report, computed from stored vectors."""
    query = normalize(space, query.reshape(1, -1))[0]
    vectors = normalize(space, vectors)
    if space == "semantic":
        distance = np.square(vectors - query).sum(axis=1)
    else:
        distance = np.abs(vectors - query).sum(axis=1)
    return similarity_from_distance(space, distance)


def _metric(space: str) -> int:
    return faiss.METRIC_L2 if space == "semantic" else faiss.METRIC_L1


CALIBRATION_QUERIES = 16
CALIBRATION_K = 50
TRAINING_ROWS_PER_LIST = 32  # k-means points per IVF list (FAISS's own floor is 39; 32 measured as good)
IN_FLIGHT_CHUNKS = 4  # chunks read ahead of the index builder: bounds memory during a rebuild
REBUILD_CHUNK_ROWS = 20_000

# One unit of work for the builder thread: returns (image ids, vectors) when called.
ChunkSource = Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BuiltIndex:
    index: faiss.Index  # an IndexIDMap2: FAISS labels are image ids
    kind: str  # flat | ivf | hnsw
    params: dict  # what was chosen (lists, nprobe, measured recall, ...), persisted with the file
    ids: np.ndarray
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, for benchmarks and logs


def index_kind(count: int) -> str:
    return "flat" if count <= settings.IMAGINAITION_FLAT_INDEX_MAX else settings.IMAGINAITION_ANN_INDEX


def ivf_lists(count: int) -> int:
    return max(1, round(settings.IMAGINAITION_IVF_LISTS_FACTOR * count ** 0.5))


def build_faiss_index_streamed(*, space: str, dim: int, count: int, sample: np.ndarray | None,
                               chunks: Iterable[ChunkSource]) -> BuiltIndex:
    """A new index (flat, or the configured approximate kind above the flat limit), filled chunk by
    chunk on a builder thread while the caller keeps reading the next chunks (FAISS and numpy release the GIL), so the build overlaps the read from Postgres.

    count: the expected number of vectors (chooses the kind). sample: random stored vectors, needed
    above the flat limit: IVF trains its lists on them, and some of them are the queries that
    measure recall (their exact neighbours are gathered chunk by chunk, with no second full copy).
    """
    kind = index_kind(count)
    if sample is None or len(sample) < 2:
        kind = "flat"  # nothing to train on or measure with (rows vanished since they were counted)
    metric = _metric(space)
    params: dict = {}
    stages = {"train": 0.0, "builder busy": 0.0, "waiting for builder": 0.0}
    clock = time.perf_counter()
    if kind != "flat":
        sample = normalize(space, sample)
    if kind == "flat":
        inner = faiss.IndexFlat(dim, metric)
    elif kind == "ivf":
        lists = max(1, min(ivf_lists(count), len(sample)))
        # Lists come from L2 k-means (BLAS-fast) in both spaces; scanning a list uses the space's metric.
        inner = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists, metric)
        inner.cp.niter = 10
        inner.cp.min_points_per_centroid = 1  # a small sample is the caller's choice, not a warning
        inner.train(sample)
        params["lists"] = lists
        stages["train"] = time.perf_counter() - clock
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, settings.IMAGINAITION_HNSW_M, metric)
        inner.hnsw.efConstruction = settings.IMAGINAITION_HNSW_EF_CONSTRUCTION
        inner.hnsw.efSearch = settings.IMAGINAITION_HNSW_EF_SEARCH
        params.update(M=settings.IMAGINAITION_HNSW_M, ef_construction=settings.IMAGINAITION_HNSW_EF_CONSTRUCTION)
    else:
        raise ValueError(f"IMAGINAITION_ANN_INDEX must be ivf or hnsw, not {kind!r}")
    index = faiss.IndexIDMap2(inner)

    queries = None
    if kind != "flat" and len(sample):
        picks = np.random.default_rng(1).choice(len(sample), size=min(CALIBRATION_QUERIES, len(sample)), replace=False)
        queries = np.ascontiguousarray(sample[np.sort(picks)])
    k = max(1, min(CALIBRATION_K, count))
    exact = faiss.ResultHeap(len(queries), k) if queries is not None else None
    all_ids: list[np.ndarray] = []

    def add(source: ChunkSource) -> None:
        started = time.perf_counter()
        ids, vectors = source()
        vectors = normalize_for_index(space, vectors)
        index.add_with_ids(vectors, ids)
        all_ids.append(ids)
        if exact is not None:  # brute force over the chunk in place (no copy into an index)
            distances, rows = faiss.knn(queries, vectors, min(k, len(vectors)), metric=metric)
            if rows.shape[1] < k:  # a chunk smaller than k: pad to the heap's width
                pad = ((0, 0), (0, k - rows.shape[1]))
                rows = np.pad(rows, pad, constant_values=-1)
                distances = np.pad(distances, pad, constant_values=np.finfo(np.float32).max)
            exact.add_result(distances, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1))
        stages["builder busy"] += time.perf_counter() - started

    def wait(future) -> None:
        started = time.perf_counter()
        future.result()  # also re-raises the builder's errors
        stages["waiting for builder"] += time.perf_counter() - started

    clock = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-build") as builder:
        in_flight: deque = deque()
        for source in chunks:
            in_flight.append(builder.submit(add, source))
            while len(in_flight) > IN_FLIGHT_CHUNKS:
                wait(in_flight.popleft())
        for future in in_flight:
            wait(future)
    stages["stream and build"] = time.perf_counter() - clock
    clock = time.perf_counter()

    if exact is not None and index.ntotal:
        exact.finalize()
        if kind == "ivf":
            inner.make_direct_map()  # lets vectors_for() reconstruct stored vectors by id
            params.update(_calibrate_nprobe(index, inner, queries=queries, exact=exact.I, k=k))
        else:
            _, found = index.search(queries, k)
            params["recall"] = round(_recall(found, exact.I, k), 4)
    stages["calibrate"] = time.perf_counter() - clock
    ids = np.concatenate(all_ids) if all_ids else np.zeros(0, dtype=np.int64)
    return BuiltIndex(index=index, kind=kind, params=params, ids=ids, stages=stages)


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist()) - {-1}) / k for f, e in zip(found, exact, strict=True)]))


def _calibrate_nprobe(index: faiss.Index, ivf: faiss.IndexIVFFlat, *, queries: np.ndarray,
                      exact: np.ndarray, k: int) -> dict:
    """The smallest nprobe (doubling) whose recall@k on stored vectors reaches the target."""
    target = settings.IMAGINAITION_ANN_TARGET_RECALL
    nprobe, recall = 1, 0.0
    while True:
        ivf.nprobe = nprobe
        _, found = index.search(queries, k)
        recall = _recall(found, exact, k)
        if recall >= target or nprobe >= ivf.nlist:
            break
        nprobe = min(ivf.nlist, nprobe * 2)
    return {"nprobe": nprobe, "recall": round(recall, 4)}


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """One query is too small to split: OpenMP's thread team only adds waiting (measured: p95 of a
    single IVF query 0.06 ms alone vs 12–15 ms with 2 threads on a busy machine). The setting is per
    calling thread, so a rebuild on another thread keeps all cores."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


@dataclass
class IndexSnapshot:
    space: str
    model_key: str
    dim: int
    index: faiss.Index
    kind: str
    version: int
    synced_at: datetime  # database time up to which embeddings and tombstones are applied
    ids: set[int] = field(default_factory=set)
    deleted: set[int] = field(default_factory=set)  # approximate kinds: removed ids are filtered at query time
    checked_at: float = 0.0
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def count(self) -> int:
        return len(self.ids) - len(self.deleted)

    def search(self, query: np.ndarray, k: int, *, exclude_image_id: int | None = None) -> list[tuple[int, float]]:
        """[(image_id, similarity)] nearest first."""
        with self.lock:
            if self.count == 0 or k <= 0:
                return []
            wanted = min(len(self.ids), k + len(self.deleted) + (1 if exclude_image_id is not None else 0))
            if self.kind == "hnsw":
                faiss.downcast_index(self.index.index).hnsw.efSearch = max(settings.IMAGINAITION_HNSW_EF_SEARCH, wanted)
            with _single_threaded():
                distances, labels = self.index.search(normalize(self.space, query.reshape(1, -1)), wanted)
        found = []
        for image_id, distance in zip(labels[0].tolist(), distances[0].tolist(), strict=True):
            if image_id < 0 or image_id in self.deleted or image_id == exclude_image_id:
                continue
            found.append((image_id, float(similarity_from_distance(self.space, distance))))
            if len(found) == k:
                break
        return found

    def vectors_for(self, image_ids: list[int]) -> dict[int, np.ndarray]:
        """The stored (normalized) vectors of these images, from memory: no database round trip."""
        with self.lock:
            present = [image_id for image_id in image_ids if image_id in self.ids and image_id not in self.deleted]
            if not present:
                return {}
            vectors = self.index.reconstruct_batch(np.asarray(present, dtype=np.int64))  # one call, not one per id
        return dict(zip(present, vectors, strict=True))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> int:
        with self.lock:
            fresh = [i for i, image_id in enumerate(ids.tolist()) if image_id not in self.ids]
            if not fresh:
                return 0
            self.index.add_with_ids(normalize(self.space, vectors[fresh]), ids[fresh].astype(np.int64))
            self.ids.update(ids[fresh].tolist())
            return len(fresh)

    def remove(self, image_ids: set[int]) -> int:
        with self.lock:
            present = (image_ids & self.ids) - self.deleted
            if not present:
                return 0
            if self.kind == "flat":
                self.index.remove_ids(np.fromiter(present, dtype=np.int64))
                self.ids -= present
            else:
                self.deleted |= present
            return len(present)


def _slug(model_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", model_key).strip("-").lower()


def _index_dir() -> Path:
    path = Path(settings.IMAGINAITION_INDEX_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _db_now() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class IndexManager:
    """The indexes of this process: loaded lazily, caught up on use, swapped atomically."""

    def __init__(self) -> None:
        self._snapshots: dict[tuple[str, str], IndexSnapshot] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._snapshots.clear()

    def loaded(self, *, space: str, model_key: str) -> IndexSnapshot | None:
        return self._snapshots.get((space, model_key))

    def forget_images(self, image_ids: set[int]) -> None:
        for snapshot in list(self._snapshots.values()):
            snapshot.remove(image_ids)

    def get(self, *, space: str, model_key: str, dim: int) -> IndexSnapshot | None:
        """The current index, or None when there is none yet (callers fall back to pgvector)."""
        key = (space, model_key)
        snapshot = self._snapshots.get(key)
        interval = settings.IMAGINAITION_INDEX_SYNC_SECONDS
        if snapshot is not None and time.monotonic() - snapshot.checked_at < interval:
            return snapshot
        with self._lock:
            snapshot = self._snapshots.get(key)
            if snapshot is not None and time.monotonic() - snapshot.checked_at < interval:
                return snapshot
            state = IndexState.objects.filter(space=space, model_key=model_key).first()
            if state is None or not state.file_name:
                return None
            if snapshot is None or snapshot.version != state.version:
                loaded = self._load_file(state, dim)
                if loaded is None:
                    return snapshot  # keep answering with what we have (or fall back)
                snapshot = loaded
                self._snapshots[key] = snapshot
            self._catch_up(snapshot)
            snapshot.checked_at = time.monotonic()
            return snapshot

    def _load_file(self, state: IndexState, dim: int) -> IndexSnapshot | None:
        path = _index_dir() / state.file_name
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            logger.warning("index file %s is missing", path)
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != state.version or meta.get("model_key") != state.model_key:
            logger.warning("index file %s does not match its database record", path)
            return None
        index = faiss.read_index(str(path))
        if meta["kind"] == "ivf":
            faiss.extract_index_ivf(index.index).nprobe = meta["params"]["nprobe"]
        ids = set(faiss.vector_to_array(index.id_map).tolist())
        return IndexSnapshot(space=state.space, model_key=state.model_key, dim=dim, index=index,
                             kind=meta["kind"], version=state.version,
                             synced_at=datetime.fromisoformat(meta["synced_at"]), ids=ids)

    def _catch_up(self, snapshot: IndexSnapshot) -> None:
        now = _db_now()
        since = snapshot.synced_at - SYNC_SLACK
        # Ids first: the slack window is re-read every second, and right after a bulk load it holds
        # thousands of rows the index already has; only the vectors it lacks are read.
        recent = Embedding.objects.filter(model_key=snapshot.model_key, space=snapshot.space, created_at__gte=since)
        lacking = [image_id for image_id in recent.values_list("image_id", flat=True) if image_id not in snapshot.ids]
        if lacking:
            for ids, vectors in stream_vectors(model_key=snapshot.model_key, space=snapshot.space, dim=snapshot.dim,
                                               where_sql="AND image_id = ANY(%s)", where_params=(lacking,)):
                added = snapshot.add(ids, vectors)
                if added:
                    logger.info("index %s/%s: added %d new vectors", snapshot.space, snapshot.model_key, added)
        gone = set(DeletedImage.objects.filter(deleted_at__gte=since).values_list("image_id", flat=True))
        snapshot.remove(gone)
        snapshot.synced_at = now

    def install(self, snapshot: IndexSnapshot) -> None:
        with self._lock:
            snapshot.checked_at = time.monotonic()
            self._snapshots[(snapshot.space, snapshot.model_key)] = snapshot


manager = IndexManager()


@dataclass(frozen=True)
class RebuildReport:
    space: str
    model_key: str
    version: int
    count: int
    kind: str
    params: dict
    seconds: float
    stages: dict[str, float]


def index_rebuild(*, space: str, model_key: str, dim: int,
                  progress: Callable[[int], None] | None = None) -> RebuildReport:
    """Build the index of one (space, model) from Postgres aside, persist it, publish, swap in."""
    started = time.perf_counter()
    synced_at = _db_now()  # anything embedded during the build is picked up by the next catch-up
    expected = count_vectors(model_key=model_key, space=space)
    sample = None
    clock = time.perf_counter()
    if index_kind(expected) != "flat":
        wanted = ivf_lists(expected) * TRAINING_ROWS_PER_LIST
        percent = min(100.0, 100.0 * 1.1 * wanted / max(expected, 1))
        parts = list(stream_vectors(model_key=model_key, space=space, dim=dim, sample_percent=percent))
        sample = np.concatenate([vectors for _, vectors in parts]) if parts else np.zeros((0, dim), np.float32)

    def chunks():
        for raw in stream_raw_chunks(model_key=model_key, space=space, dim=dim, chunk_rows=REBUILD_CHUNK_ROWS):
            if progress is not None:
                progress(len(raw.data) // raw.dtype.itemsize)
            yield raw.parse  # parsed and normalized on the builder thread

    sample_s = time.perf_counter() - clock
    built = build_faiss_index_streamed(space=space, dim=dim, count=expected, sample=sample, chunks=chunks())
    index, kind, ids = built.index, built.kind, built.ids
    clock = time.perf_counter()
    with transaction.atomic():
        state, _ = IndexState.objects.select_for_update().get_or_create(space=space, model_key=model_key)
        version = state.version + 1
        file_name = f"{space}-{_slug(model_key)}-v{version}.faiss"
        path = _index_dir() / file_name
        _write_atomically(path, lambda tmp: faiss.write_index(index, tmp))
        meta = {"space": space, "model_key": model_key, "version": version, "count": int(len(ids)),
                "kind": kind, "params": built.params, "dim": dim, "synced_at": synced_at.isoformat()}
        _write_atomically(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta)))
        old_file = state.file_name
        state.version, state.vector_count, state.kind = version, int(len(ids)), kind
        state.file_name, state.built_at = file_name, timezone.now()
        state.save()
    if old_file and old_file != file_name:
        for stale in (_index_dir() / old_file, (_index_dir() / old_file).with_suffix(".json")):
            stale.unlink(missing_ok=True)
    manager.install(IndexSnapshot(space=space, model_key=model_key, dim=dim, index=index, kind=kind,
                                  version=version, synced_at=synced_at, ids=set(ids.tolist())))
    return RebuildReport(space=space, model_key=model_key, version=version, count=int(len(ids)), kind=kind,
                         params=built.params, seconds=time.perf_counter() - started,
                         stages={"sample": sample_s, **built.stages, "write and publish": time.perf_counter() - clock})


def index_drop_all() -> None:
    """Forget every index (database reset): files, version stamps, this process's copies."""
    with transaction.atomic():
        for state in IndexState.objects.select_for_update():
            for path in (_index_dir() / state.file_name, (_index_dir() / state.file_name).with_suffix(".json")):
                if state.file_name:
                    path.unlink(missing_ok=True)
        IndexState.objects.all().delete()
    manager.clear()
