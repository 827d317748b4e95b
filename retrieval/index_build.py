"""Building a FAISS index from streamed chunks of vectors: flat, IVF (nprobe calibrated to a target
recall against exact search), compressed IVF or HNSW, filled on a builder thread while the next
chunks are read.

Compressed IVF (`ivf-sq8`, `ivf-sq6`, `ivf-sq4`): the same lists, each vector stored as 8/6/4-bit
codes per dimension (FAISS's scalar quantizer, ranges trained on the sample): 4×/5.3×/8× less memory
than float32. FAISS scans quantized lists in L2 or inner product only, so the content space (L1)
scans its lists in L2 and re-ranks the `rerank` × k nearest candidates by L1 on their decoded
vectors; the calibration chooses nprobe and that depth together.

Product quantization (`ivf-pq`): each vector as dim/2 codes of 4 bits (2 bits a dimension, 16×
less than float32), scanned with FAISS's SIMD "fast scan" lists. Such codes only shortlist: the
`rerank` × k nearest candidates are ranked again by the space's metric on their 16-bit vectors,
kept in a memory-mapped file beside the index (retrieval/rerank_vectors.py). Measured with
bench.search's synthetic vectors, 1,664-d, recall@50 against exact at nprobe 4: at 1M, 0.96 with
16 × k candidates and 0.999 with 32 × k, the scan 1.0–1.3 ms; dim/4 such codes (1 bit a dimension)
reached 0.99 at 200k but only 0.87 at 1M even with every list scanned and 32 × k; dim/8 8-bit codes
(the same bytes) 0.90 and 0.98 at 16 and 32 × k, scanned 2.5× slower."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from django.conf import settings

from retrieval.metrics import faiss_metric, normalize, normalize_for_index
from retrieval.rerank_vectors import RerankVectors, RerankWriter

CALIBRATION_QUERIES = 64
CALIBRATION_K = 50
TRAINING_ROWS_PER_LIST = 32  # k-means points per IVF list (FAISS's own floor is 39; 32 measured as good)
IN_FLIGHT_CHUNKS = 4  # chunks read ahead of the index builder: bounds memory during a rebuild
# Compressed IVF kinds: bits per dimension of each stored vector.
SCALAR_QUANTIZERS = {"ivf-sq8": faiss.ScalarQuantizer.QT_8bit, "ivf-sq6": faiss.ScalarQuantizer.QT_6bit,
                     "ivf-sq4": faiss.ScalarQuantizer.QT_4bit}
PRODUCT_QUANTIZED = "ivf-pq"  # 4-bit product codes, re-ranked from the vectors' file (module docstring)
PQ_DIMS_PER_CODE = 2
PQ_BITS = 4  # FAISS's fast scan reads 4-bit codes only
IVF_KINDS = ("ivf", *SCALAR_QUANTIZERS, PRODUCT_QUANTIZED)
ANN_KINDS = (*IVF_KINDS, "hnsw")
RERANK_FACTORS = (1, 2, 4, 8, 12, 16, 24, 32)  # candidates re-ranked, × k, tried by the calibration
PQ_TRAINING_POINTS_PER_CENTRE = 32
PQ_MIN_TRAINING_ROWS = 64  # fewer sample rows than this: plain IVF (2^4 centres per code to train)

# Finer kinds to suggest where one stays below the target recall with every list scanned (plain ivf scans exactly).
FINER_KINDS = {"ivf-sq4": "ivf-sq6, ivf-sq8, ivf-pq or ivf", "ivf-sq6": "ivf-sq8, ivf-pq or ivf",
               "ivf-sq8": "ivf-pq or ivf", PRODUCT_QUANTIZED: "ivf"}

logger = logging.getLogger(__name__)

# One unit of work for the builder thread: returns (image ids, vectors) when called.
ChunkSource = Callable[[], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BuiltIndex:
    index: faiss.IndexIDMap2  # FAISS labels are image ids
    kind: str  # flat | ivf | ivf-sq8 | ivf-sq6 | ivf-sq4 | ivf-pq | hnsw
    params: dict  # what was chosen (lists, nprobe, rerank, measured recall, ...), persisted with the file
    ids: np.ndarray
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, for benchmarks and logs
    rerank_vectors: RerankVectors | None = None  # ivf-pq: its vectors' file, still under a temporary name


def ann_kind(space: str) -> str:
    """The approximate kind for a space. IMAGINAITION_ANN_INDEX is one kind for both spaces
    (`ivf-sq8`) or one per space (`semantic=ivf-sq8,content=ivf-sq6`; a space not named gets `ivf`).
    Raises ValueError naming the choices for an unknown kind or space."""
    value = str(settings.IMAGINAITION_ANN_INDEX).replace(" ", "")
    if "=" in value:
        pairs = [part.partition("=")[::2] for part in value.split(",") if part]
        per_space = dict(pairs)
        if len(per_space) < len(pairs):
            raise ValueError(f"IMAGINAITION_ANN_INDEX names a space twice ({value}): use semantic=KIND,content=KIND")
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


def pq_codes(dim: int) -> int:
    """Product codes per vector: dim/2 (2 dimensions a code), or the nearest smaller divisor of dim."""
    return next(codes for codes in range(max(1, dim // PQ_DIMS_PER_CODE), 0, -1) if dim % codes == 0)


def recall_shortfall(*, kind: str, params: dict, count: int) -> str | None:
    """What to tell the operator when an IVF index's calibrated recall is below
    IMAGINAITION_ANN_TARGET_RECALL, with finer choices; None when it reached it (or was not calibrated).
    The calibration stops short only with every list scanned, so this is the kind's ceiling: the
    index is kept (it serves searches), a finer kind is the remedy."""
    target = settings.IMAGINAITION_ANN_TARGET_RECALL
    recall = params.get("recall")
    if kind not in IVF_KINDS or recall is None or recall >= target:
        return None
    finer = f"a finer IMAGINAITION_ANN_INDEX ({FINER_KINDS[kind]}) or " if kind in FINER_KINDS else ""
    return (f"{kind} reached recall {recall}, below the target {target} (IMAGINAITION_ANN_TARGET_RECALL), "
            f"even scanning all {params.get('lists')} lists; kept, but to reach the target choose {finer}"
            f"exact search (flat: IMAGINAITION_FLAT_INDEX_MAX >= {count})")


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
    if kind == PRODUCT_QUANTIZED and len(sample) < PQ_MIN_TRAINING_ROWS:
        kind = "ivf"
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
        elif kind == PRODUCT_QUANTIZED:
            codes = pq_codes(dim)
            inner = ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(dim), dim, lists, codes, PQ_BITS)
            # Each code book is 16 centres in 2 dimensions: 32 points a centre (FAISS's default is up to
            # 256) train it as well, 6× faster (16k sample rows, 1,664-d: 4.9 s against 28.9 s; at 200k the
            # same recall@50 after the re-rank).
            ivf.pq.cp.min_points_per_centroid = 1
            ivf.pq.cp.max_points_per_centroid = PQ_TRAINING_POINTS_PER_CENTRE
            params.update(codes=codes, bits=PQ_BITS)
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
    rerank_writer = RerankWriter(Path(settings.IMAGINAITION_INDEX_DIR), dim) if kind == PRODUCT_QUANTIZED else None
    try:
        return _fill(index, ivf, kind=kind, space=space, dim=dim, count=count, sample=sample, chunks=chunks,
                     params=params, stages=stages, rerank_writer=rerank_writer)
    except BaseException:
        if rerank_writer is not None:
            rerank_writer.discard()
        raise


def _fill(index: faiss.IndexIDMap2, ivf: faiss.IndexIVF | None, *, kind: str, space: str, dim: int, count: int,
          sample: np.ndarray, chunks: Iterable[ChunkSource], params: dict, stages: dict[str, float],
          rerank_writer: RerankWriter | None) -> BuiltIndex:
    metric = faiss_metric(space)
    queries: np.ndarray | None = None
    if kind != "flat" and len(sample):
        picks = np.random.default_rng(1).choice(len(sample), size=min(CALIBRATION_QUERIES, len(sample)), replace=False)
        queries = np.ascontiguousarray(sample[np.sort(picks)])
    # Each query is a stored vector, left out of its own results as a search by a stored image does:
    # its exact neighbours are gathered one deeper (itself first, at distance 0).
    k = max(1, min(CALIBRATION_K, count - 1))
    width = k + 1
    exact = faiss.ResultHeap(len(queries), width) if queries is not None else None
    all_ids: list[np.ndarray] = []

    def add(source: ChunkSource) -> None:
        started = time.perf_counter()
        ids, vectors = source()
        vectors = normalize_for_index(space, vectors)
        index.add_with_ids(vectors, ids)
        if rerank_writer is not None:
            rerank_writer.append(vectors)
        all_ids.append(ids)
        if queries is not None and exact is not None:  # brute force over the chunk in place (no copy into an index)
            distances, rows = _exact_neighbours(queries, vectors, min(width, len(vectors)), metric=metric)
            if rows.shape[1] < width:  # a chunk smaller than the heap: pad to its width
                pad = ((0, 0), (0, width - rows.shape[1]))
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
    ids = np.concatenate(all_ids) if all_ids else np.zeros(0, dtype=np.int64)
    rerank_vectors = rerank_writer.finish(ids) if rerank_writer is not None else None

    if queries is not None and exact is not None and index.ntotal:
        exact.finalize()
        if ivf is not None:
            if rerank_vectors is None:
                ivf.make_direct_map()  # lets vectors_for() reconstruct stored vectors by id
            params.update(_calibrate_nprobe(index, ivf, space=space, queries=queries, exact=exact.I, k=k,
                                            stored=rerank_vectors))
            shortfall = recall_shortfall(kind=kind, params=params, count=index.ntotal)
            if shortfall:  # silently below target would pass for a good index
                logger.warning("%s index of %d vectors: %s", space, index.ntotal, shortfall)
        else:
            _, found = index.search(queries, width)
            params["recall"] = round(_recall(found, exact.I, k), 4)
    stages["calibrate"] = time.perf_counter() - clock
    return BuiltIndex(index=index, kind=kind, params=params, ids=ids, stages=stages, rerank_vectors=rerank_vectors)


def _exact_neighbours(queries: np.ndarray, vectors: np.ndarray, k: int, *, metric: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, rows) of each query's k nearest vectors, nearest first, as faiss.knn. L2 as one
    matrix product (BLAS): FAISS takes that path only from 128,000 queries and compares 64 queries
    with a 20k chunk 8× slower row by row (0.84 s against 0.09 s at 1,664-d, a third of the builder
    thread's time in an ivf-pq rebuild)."""
    if metric != faiss.METRIC_L2:
        return faiss.knn(queries, vectors, k, metric=metric)
    distances = queries @ vectors.T
    distances *= -2
    distances += np.einsum("ij,ij->i", vectors, vectors)[None, :]
    distances += np.einsum("ij,ij->i", queries, queries)[:, None]
    rows = np.argpartition(distances, k - 1, axis=1)[:, :k] if k < vectors.shape[0] else \
        np.tile(np.arange(vectors.shape[0]), (len(queries), 1))
    nearest = np.take_along_axis(distances, rows, axis=1)
    order = np.argsort(nearest, axis=1, kind="stable")
    return (np.maximum(np.take_along_axis(nearest, order, axis=1), 0).astype(np.float32),
            np.take_along_axis(rows, order, axis=1).astype(np.int64))


def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Recall@k of each query's neighbours other than itself (exact's first row entry). Counting the
    query itself, always found, overstated it: 0.97 on stored queries was 0.93 on new ones."""
    recalls = []
    for candidates, truth in zip(found, exact, strict=True):
        itself = int(truth[0])
        wanted = set(truth[1:k + 1].tolist()) - {-1}
        got = [label for label in candidates.tolist() if label not in (itself, -1)][:k]
        recalls.append(len(wanted & set(got)) / k)
    return float(np.mean(recalls))


def search_index(index: faiss.IndexIDMap2, *, space: str, queries: np.ndarray, k: int, rerank: int = 1,
                 stored: RerankVectors | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(distances, labels) of the k nearest, as index.search. rerank > 1: the index's k × rerank
    nearest in its own measure, re-ordered by the space's metric on their vectors (`stored`, else
    the index's own: decoded codes, for a scalar-quantized index); distances are then the space's own.
    With `stored`, always so (rerank 1: the same k, their distances from the stored vectors)."""
    if rerank <= 1 and stored is None:
        return _search_filled(index, queries, k)
    wanted = min(index.ntotal, k * rerank)
    # With `stored`, the index inside the id map answers: its own numbering is the order it received
    # the vectors, the rows of `stored` (looking labels up instead took 1.4 ms a query at 1M).
    _, candidates = _search_filled(faiss.downcast_index(index.index) if stored is not None else index, queries, wanted)
    distances = np.full((len(queries), k), np.finfo(np.float32).max, dtype=np.float32)
    labels = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates, strict=True)):
        found = found[found >= 0]
        if not len(found):
            continue
        if stored is not None:
            near, picked = stored.nearest(query.reshape(1, -1), found, k, metric=faiss_metric(space))
        else:
            near, picked = faiss.knn(query.reshape(1, -1), index.reconstruct_batch(found), min(k, len(found)),
                                     metric=faiss_metric(space))
        nearest = found[picked[0]]
        distances[row, :len(nearest)] = near[0]
        labels[row, :len(nearest)] = stored.labels_of(nearest) if stored is not None else nearest
    return distances, labels


def _search_filled(index: faiss.Index, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """index.search for n results a query. Where an IVF index's probed lists held fewer than n vectors
    for a query (a small index's lists are small and uneven: 6 to 60 vectors at 12k), that query probes
    twice as many lists, and again, until they hold n or every list is probed: a search returns as many
    results as the index holds, up to n, whatever nprobe the calibration chose."""
    distances, labels = index.search(queries, n)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return distances, labels
    wanted = min(n, index.ntotal)
    short = np.flatnonzero((labels >= 0).sum(axis=1) < wanted)
    nprobe = ivf.nprobe
    while len(short) and nprobe < ivf.nlist:
        nprobe = min(ivf.nlist, nprobe * 2)
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        more_distances, more_labels = index.search(queries[short], n, params=params)
        distances[short], labels[short] = more_distances, more_labels
        short = short[(more_labels >= 0).sum(axis=1) < wanted]
    return distances, labels


def _calibrate_nprobe(index: faiss.IndexIDMap2, ivf: faiss.IndexIVF, *, space: str, queries: np.ndarray,
                      exact: np.ndarray, k: int, stored: RerankVectors | None) -> dict:
    """The smallest nprobe (doubling) whose recall@k on stored vectors reaches the target; where the
    lists are scanned in another metric than the space's, or shortlist only (product codes), with the
    smallest re-rank depth that does."""
    target = settings.IMAGINAITION_ANN_TARGET_RECALL
    factors = RERANK_FACTORS if stored is not None or ivf.metric_type != faiss_metric(space) else (1,)
    nprobe, rerank, recall = 1, 1, 0.0
    while True:
        ivf.nprobe = nprobe
        for rerank in factors:
            _, found = search_index(index, space=space, queries=queries, k=k + 1, rerank=rerank, stored=stored)
            recall = _recall(found, exact, k)
            if recall >= target:
                break
        if recall >= target or nprobe >= ivf.nlist:
            break
        nprobe = min(ivf.nlist, nprobe * 2)
    chosen = {"nprobe": nprobe, "recall": round(recall, 4)}
    return chosen | ({"rerank": rerank} if len(factors) > 1 else {})
