"""Building a FAISS index from streamed chunks of vectors: flat, IVF (nprobe calibrated to a target
recall against exact search), compressed IVF or HNSW, filled on a builder thread while the next
chunks are read.

Compressed IVF (`ivf-sq8`, `ivf-sq6`, `ivf-sq4`): the same lists, each vector stored as 8/6/4-bit
codes per dimension (FAISS's scalar quantizer, ranges trained on the sample): 4×/5.3×/8× less memory
than float32. FAISS scans quantized lists in L2 or inner product only, so the content space (L1)
scans its lists in L2 and re-ranks the `rerank` × k nearest candidates by L1 on their decoded
vectors; the calibration chooses nprobe and that depth together. Product quantization was measured
and left out: at 200k synthetic vectors on 2 cores its training took 147 s (384-d, 48 codes) and
210 s (1024-d, 128 codes), and its decoded vectors are too coarse to re-rank from (recall@50 ≤ 0.43
before re-rank, ≤ 0.39 after)."""

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
# Compressed IVF kinds: bits per dimension of each stored vector.
SCALAR_QUANTIZERS = {"ivf-sq8": faiss.ScalarQuantizer.QT_8bit, "ivf-sq6": faiss.ScalarQuantizer.QT_6bit,
                     "ivf-sq4": faiss.ScalarQuantizer.QT_4bit}
IVF_KINDS = ("ivf", *SCALAR_QUANTIZERS)
ANN_KINDS = (*IVF_KINDS, "hnsw")
RERANK_FACTORS = (1, 2, 4, 8, 16)  # candidates re-ranked, as multiples of k, tried by the calibration

# One unit of work for the builder thread: returns (image ids, vectors) when called.
ChunkSource = Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BuiltIndex:
    index: faiss.IndexIDMap2  # FAISS labels are image ids
    kind: str  # flat | ivf | ivf-sq8 | ivf-sq6 | ivf-sq4 | hnsw
    params: dict  # what was chosen (lists, nprobe, rerank, measured recall, ...), persisted with the file
    ids: np.ndarray
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, for benchmarks and logs


def ann_kind(space: str) -> str:
    """The approximate kind for a space. IMAGINAITION_ANN_INDEX is one kind for both spaces
    (`ivf-sq8`) or one per space (`semantic=ivf-sq8,content=ivf-sq6`; a space not named gets `ivf`).
    Raises ValueError naming the choices for an unknown kind or space."""
    value = str(settings.IMAGINAITION_ANN_INDEX).replace(" ", "")
    if "=" in value:
        per_space = dict(part.partition("=")[::2] for part in value.split(",") if part)
        unknown_spaces = set(per_space) - {"semantic", "content"}
        if unknown_spaces:
            raise ValueError(f"IMAGINAITION_ANN_INDEX names unknown spaces {sorted(unknown_spaces)}: "
                             "use semantic=KIND,content=KIND")
        kinds = list(per_space.values())
        kind = per_space.get(space, "ivf")
    else:
        kinds, kind = [value], value
    for named in kinds:
        if named not in ANN_KINDS:
            raise ValueError(f"IMAGINAITION_ANN_INDEX must be one of {', '.join(ANN_KINDS)} "
                             f"(or semantic=KIND,content=KIND), not {named!r}")
    return kind


def index_kind(count: int, space: str) -> str:
    return "flat" if count <= settings.IMAGINAITION_FLAT_INDEX_MAX else ann_kind(space)


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
    kind = index_kind(count, space)
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
    ivf: faiss.IndexIVF | None = None  # set for the IVF kinds
    if kind == "flat":
        inner = faiss.IndexFlat(dim, metric)
    elif kind in IVF_KINDS:
        lists = max(1, min(ivf_lists(count), len(sample)))
        # Lists come from L2 k-means (BLAS-fast) in both spaces; scanning a list uses the space's metric
        # (quantized lists: L2, see the module docstring).
        if kind == "ivf":
            inner = ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists, metric)
        else:
            inner = ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(dim), dim, lists,
                                                        SCALAR_QUANTIZERS[kind], faiss.METRIC_L2)
            # Each dimension's range is the sample's min/max widened by 10 % either side: a vector beyond
            # it is clipped (measured at 200k: the worst squared L2 error 2.9e-3 with no margin, 1.1e-3
            # with 10 %, the typical one 3.0e-5 and 4.4e-5).
            ivf.sq.rangestat_arg = 0.1
            params["bits"] = int(kind.removeprefix("ivf-sq"))
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
        raise ValueError(f"IMAGINAITION_ANN_INDEX must be one of {', '.join(ANN_KINDS)}, not {kind!r}")
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
            params.update(_calibrate_nprobe(index, ivf, space=space, queries=queries, exact=exact.I, k=k))
        else:
            _, found = index.search(queries, k)
            params["recall"] = round(_recall(found, exact.I, k), 4)
    stages["calibrate"] = time.perf_counter() - clock
    ids = np.concatenate(all_ids) if all_ids else np.zeros(0, dtype=np.int64)
    return BuiltIndex(index=index, kind=kind, params=params, ids=ids, stages=stages)


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist()) - {-1}) / k for f, e in zip(found, exact, strict=True)]))


def search_index(index: faiss.Index, *, space: str, queries: np.ndarray, k: int,
                 rerank: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(distances, labels) of the k nearest, as index.search. rerank > 1: the index's k × rerank
    nearest in its own measure, re-ordered by the space's metric on their stored vectors (decoded
    codes, for a quantized index); distances are then the space's own."""
    if rerank <= 1:
        return index.search(queries, k)
    _, candidates = index.search(queries, min(index.ntotal, k * rerank))
    distances = np.full((len(queries), k), np.finfo(np.float32).max, dtype=np.float32)
    labels = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates, strict=True)):
        found = found[found >= 0]
        if not len(found):
            continue
        vectors = index.reconstruct_batch(found)
        near, rows = faiss.knn(query.reshape(1, -1), vectors, min(k, len(found)), metric=faiss_metric(space))
        distances[row, :rows.shape[1]], labels[row, :rows.shape[1]] = near[0], found[rows[0]]
    return distances, labels


def _calibrate_nprobe(index: faiss.Index, ivf: faiss.IndexIVF, *, space: str, queries: np.ndarray,
                      exact: np.ndarray, k: int) -> dict:
    """The smallest nprobe (doubling) whose recall@k on stored vectors reaches the target; where the
    lists are scanned in another metric than the space's, with the smallest re-rank depth that does."""
    target = settings.IMAGINAITION_ANN_TARGET_RECALL
    factors = RERANK_FACTORS if ivf.metric_type != faiss_metric(space) else (1,)
    nprobe, rerank, recall = 1, 1, 0.0
    while True:
        ivf.nprobe = nprobe
        for rerank in factors:
            _, found = search_index(index, space=space, queries=queries, k=k, rerank=rerank)
            recall = _recall(found, exact, k)
            if recall >= target:
                break
        if recall >= target or nprobe >= ivf.nlist:
            break
        nprobe = min(ivf.nlist, nprobe * 2)
    chosen = {"nprobe": nprobe, "recall": round(recall, 4)}
    return chosen | ({"rerank": rerank} if len(factors) > 1 else {})
