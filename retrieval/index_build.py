"""Building a FAISS index from streamed chunks of vectors: flat, IVF (nprobe calibrated to a target
recall against exact search) or HNSW, filled on a builder thread while the next chunks are read."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import faiss
import numpy as np
from django.conf import settings

from retrieval.metrics import faiss_metric, normalize, normalize_for_index

CALIBRATION_QUERIES = 16
CALIBRATION_K = 50
TRAINING_ROWS_PER_LIST = 32  # k-means points per IVF list (FAISS's own floor is 39; 32 measured as good)
IN_FLIGHT_CHUNKS = 4  # chunks read ahead of the index builder: bounds memory during a rebuild

# One unit of work for the builder thread: returns (image ids, vectors) when called.
ChunkSource = Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BuiltIndex:
    index: faiss.IndexIDMap2  # FAISS labels are image ids
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
        # nothing to train on or measure with (rows vanished since they were counted)
        kind, sample = "flat", np.zeros((0, dim), np.float32)
    metric = faiss_metric(space)
    params: dict = {}
    stages = {"train": 0.0, "builder busy": 0.0, "waiting for builder": 0.0}
    clock = time.perf_counter()
    if kind != "flat":
        sample = normalize(space, sample)
    inner: faiss.Index
    ivf: faiss.IndexIVFFlat | None = None  # set when kind is ivf
    if kind == "flat":
        inner = faiss.IndexFlat(dim, metric)
    elif kind == "ivf":
        lists = max(1, min(ivf_lists(count), len(sample)))
        # Lists come from L2 k-means (BLAS-fast) in both spaces; scanning a list uses the space's metric.
        inner = ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists, metric)
        ivf.cp.niter = 10
        ivf.cp.min_points_per_centroid = 1  # a small sample is the caller's choice, not a warning
        ivf.train(sample)
        params["lists"] = lists
        stages["train"] = time.perf_counter() - clock
    elif kind == "hnsw":
        inner = hnsw = faiss.IndexHNSWFlat(dim, settings.IMAGINAITION_HNSW_M, metric)
        hnsw.hnsw.efConstruction = settings.IMAGINAITION_HNSW_EF_CONSTRUCTION
        hnsw.hnsw.efSearch = settings.IMAGINAITION_HNSW_EF_SEARCH
        params.update(M=settings.IMAGINAITION_HNSW_M, ef_construction=settings.IMAGINAITION_HNSW_EF_CONSTRUCTION)
    else:
        raise ValueError(f"IMAGINAITION_ANN_INDEX must be ivf or hnsw, not {kind!r}")
    index = faiss.IndexIDMap2(inner)

    queries: np.ndarray | None = None
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
        if queries is not None and exact is not None:  # brute force over the chunk in place (no copy into an index)
            distances, rows = faiss.knn(queries, vectors, min(k, len(vectors)), metric=metric)
            if rows.shape[1] < k:  # a chunk smaller than k: pad to the heap's width
                pad = ((0, 0), (0, k - rows.shape[1]))
                rows = np.pad(rows, pad, constant_values=-1)
                distances = np.pad(distances, pad, constant_values=np.finfo(np.float32).max)
            exact.add_result(distances, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1))
        stages["builder busy"] += time.perf_counter() - started

    def wait(future: Future[None]) -> None:
        started = time.perf_counter()
        future.result()  # also re-raises the builder's errors
        stages["waiting for builder"] += time.perf_counter() - started

    clock = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-build") as builder:
        in_flight: deque[Future[None]] = deque()
        for source in chunks:
            in_flight.append(builder.submit(add, source))
            while len(in_flight) > IN_FLIGHT_CHUNKS:
                wait(in_flight.popleft())
        for future in in_flight:
            wait(future)
    stages["stream and build"] = time.perf_counter() - clock
    clock = time.perf_counter()

    if queries is not None and exact is not None and index.ntotal:
        exact.finalize()
        if ivf is not None:
            ivf.make_direct_map()  # lets vectors_for() reconstruct stored vectors by id
            params.update(_calibrate_nprobe(index, ivf, queries=queries, exact=exact.I, k=k))
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
