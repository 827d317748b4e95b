"""The vectors a product-quantized index (`ivf-pq`) re-ranks its candidates with, kept outside the
process's own memory: every vector at 16 bits (bfloat16: the float32's upper half, rounded to
nearest) in a file beside the index, which each process memory-maps.

Why a file: product codes hold a vector in 2 bits a dimension, too coarse to rank the top k by
themselves but good enough to put them among the nearest few hundred; those few hundred are then
ranked again by their 16-bit vectors. A query touches only its candidates' rows, and the pages it
reads are the kernel's page cache, shared by every process of the host that maps the same file
(and given back under memory pressure), not memory each web process holds for itself.

Why bfloat16: turning it back into float32 is a 16-bit shift, which FAISS's scalar quantizer does
with SIMD (numpy's float16 conversion was 3× slower here, and the re-rank is the query's largest
cost); its error (≤ 2⁻⁹ of each value) moves a similarity by about 1e-4 (measured by bench.search).
For L2 and inner product FAISS's bfloat16 scalar quantizer also compares a query with the 16-bit rows
directly (`RerankVectors.nearest`): at 1M, 1,632 rows of 1,664 dims, 0.7 ms against 1.9 ms for
widening them to float32 (10.9 MB written and read again) and comparing those."""

from __future__ import annotations

import functools
import mmap
import os
import tempfile
import threading
from pathlib import Path

import faiss
import numpy as np

_BYTES = 2  # a bfloat16


def to_bfloat16(vectors: np.ndarray) -> np.ndarray:
    """float32 (n, dim) → bfloat16 bits (uint16), rounded to nearest (FAISS's SIMD encoder: 12×
    numpy's integer arithmetic, which took a quarter of an ivf-pq rebuild's builder thread)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return _codec(vectors.shape[1]).compute_codes(vectors).view(np.uint16).reshape(vectors.shape)


def from_bfloat16(halves: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16), shape (n, dim) → float32 (FAISS's SIMD decoder: 2.5× numpy's shift)."""
    halves = np.ascontiguousarray(halves, dtype=np.uint16)
    return _codec(halves.shape[1]).decode(halves.view(np.uint8))


def find_in_sorted(sorted_values: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each value's position in a sorted int64 array, or a valid position if absent; whether it is there)."""
    if not len(sorted_values):
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return at, sorted_values[at] == values


@functools.cache
def _codec(dim: int) -> faiss.ScalarQuantizer:
    return faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_bf16)  # nothing to train: a fixed format


_scratch = threading.local()
KEPT_RANKER_BYTES = 16 << 20  # a thread keeps its ranking buffer up to this size (k = 50 at 1M: 5.3 MB)


def _rankers() -> dict[tuple[int, int], faiss.IndexScalarQuantizer]:
    """This thread's bfloat16 indexes for ranking gathered rows, by (dim, metric): the code buffer is
    refilled by each query and keeps its capacity, so a query allocates (and faults in) no new pages."""
    rankers: dict[tuple[int, int], faiss.IndexScalarQuantizer] = _scratch.__dict__.setdefault("rankers", {})
    return rankers


class RerankWriter:
    """Appends rows, in the order the index receives them, to a new file in `folder` (a temporary
    name until the index is published)."""

    def __init__(self, folder: Path, dim: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, suffix=".rerank.tmp")
        self.path, self.dim = Path(name), dim
        self._file = os.fdopen(fd, "wb")

    def append(self, vectors: np.ndarray) -> None:
        self._file.write(to_bfloat16(vectors).data)

    def finish(self, ids: np.ndarray) -> RerankVectors:
        """The written rows, readable (ids: the labels of the rows, in order)."""
        self._file.close()
        return RerankVectors(self.path, ids, self.dim)

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class RerankVectors:
    """The 16-bit vectors of an index, by row (the order the index received them: FAISS's own
    numbering inside the index) or by label: the rows of a file (memory-mapped), then the few added
    since the index was built (caught up from Postgres, held in memory until the next rebuild)."""

    def __init__(self, path: Path, ids: np.ndarray, dim: int) -> None:
        rows, remainder = divmod(path.stat().st_size, _BYTES * dim)
        if rows != len(ids) or remainder:
            raise ValueError(f"{path} holds {rows} vectors of {dim} dimensions, its index {len(ids)}")
        self.path, self.dim = path, dim
        self._mapped: mmap.mmap | None = None
        self._rows = np.zeros((0, dim), dtype=np.uint16)
        if rows:
            with path.open("rb") as file:
                self._mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            # A query reads a few hundred scattered rows: without this hint the kernel reads ahead
            # around each one (measured at 1M: 100 queries brought in the whole 5.4 GB file).
            self._mapped.madvise(mmap.MADV_RANDOM)
            self._rows = np.frombuffer(self._mapped, dtype=np.uint16).reshape(rows, dim)
        self._labels = np.ascontiguousarray(ids, dtype=np.int64)  # row → label
        order = np.argsort(ids, kind="stable")
        self._sorted_labels = np.ascontiguousarray(ids[order], dtype=np.int64)
        self._row_of_sorted = order.astype(np.int64)
        self._added_rows: list[np.ndarray] = []  # rows after the file's, in the order added
        self._added_labels: list[int] = []
        self._added_row_of: dict[int, int] = {}  # label → row, for those

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Rows added to the index after the file's, in the same order as the index received them."""
        for label, halves in zip(ids.tolist(), to_bfloat16(vectors), strict=True):
            self._added_row_of[int(label)] = len(self._labels) + len(self._added_rows)
            self._added_rows.append(halves)
            self._added_labels.append(int(label))

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), dim) float32 vectors of these rows (FAISS's numbering inside the index), in order."""
        halves = np.empty((len(rows), self.dim), dtype=np.uint16)
        self._gather(rows, halves)
        return from_bfloat16(halves)

    def nearest(self, query: np.ndarray, rows: np.ndarray, k: int, *, metric: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, positions in `rows`) of the k of these rows nearest to one query (shape (1, dim)),
        nearest first, as faiss.knn. L2 and inner product compare the 16-bit rows as they are, gathered
        straight into this thread's bfloat16 index; other metrics (L1) widen them to float32 first."""
        k = min(k, len(rows))
        if metric not in (faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT):
            return faiss.knn(query, self.rows(rows), k, metric=metric)
        rankers = _rankers()
        ranker = rankers.get((self.dim, metric))
        if ranker is None:
            ranker = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_bf16, metric)
        size = len(rows) * self.dim * _BYTES
        ranker.codes.resize(size)
        ranker.ntotal = len(rows)
        self._gather(rows, faiss.rev_swig_ptr(ranker.codes.data(), size).view(np.uint16).reshape(len(rows), self.dim))
        found = ranker.search(query, k)
        if size <= KEPT_RANKER_BYTES:
            rankers[self.dim, metric] = ranker
        else:  # an unusually deep search (a label filter asking for many more): its buffer is not kept
            rankers.pop((self.dim, metric), None)
        return found

    def _gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Copies these rows' 16-bit vectors into `out` (len(rows), dim)."""
        if not len(rows):
            return
        in_file = len(self._rows)
        if rows.min() < 0 or rows.max() >= in_file + len(self._added_rows):
            raise IndexError(f"rows outside 0..{in_file + len(self._added_rows) - 1}")
        if rows.max() < in_file:  # the usual case: one gather from the mapping
            # mode="clip" (the rows are checked above): with out= and the default "raise", numpy
            # gathers into a temporary and copies it (3.6 against 1.2 ms for 1,632 rows at 1,664 dims)
            np.take(self._rows, rows, axis=0, out=out, mode="clip")
            return
        from_file = rows < in_file
        out[from_file] = np.take(self._rows, rows[from_file], axis=0)
        for position in np.flatnonzero(~from_file).tolist():
            out[position] = self._added_rows[int(rows[position]) - in_file]

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        """The labels of these rows."""
        in_file = len(self._labels)
        if not len(rows) or rows.max() < in_file:
            return self._labels[rows]
        return np.array([self._labels[row] if row < in_file else self._added_labels[row - in_file]
                         for row in rows.tolist()], dtype=np.int64)

    def get(self, labels: np.ndarray) -> np.ndarray:
        """(len(labels), dim) float32 vectors, in the order of `labels`; KeyError for one not held."""
        labels = np.asarray(labels, dtype=np.int64)
        at, in_file = find_in_sorted(self._sorted_labels, labels)
        rows = self._row_of_sorted[at] if len(self._row_of_sorted) else np.zeros(len(labels), dtype=np.int64)
        for position in np.flatnonzero(~in_file).tolist():
            rows[position] = self._added_row_of[int(labels[position])]
        return self.rows(rows)

    def discard_if_unpublished(self) -> None:
        """A build that failed before publishing: its temporary file goes."""
        if self.path.name.endswith(".tmp"):
            self.path.unlink(missing_ok=True)
