"""Reading vectors out of PostgreSQL fast: binary COPY parsed in bulk with numpy.

Each row of `COPY (SELECT image_id, vector::vector(dim) ...) TO STDOUT (FORMAT BINARY)` has a fixed
size, so a chunk of rows is one numpy structured array: no Python object per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db import connection

from gallery.services import Progress
from retrieval.spaces import VECTOR_TABLES, VectorOwner

_HEADER = b"PGCOPY\n\xff\r\n\x00"
_HEADER_SIZE = len(_HEADER) + 8  # signature, flags (int32), header extension length (int32)


def _row_dtype(dim: int) -> np.dtype:
    return np.dtype([
        ("nfields", ">i2"), ("id_len", ">i4"), ("owner_id", ">i8"),
        ("vec_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("vector", ">f4", (dim,)),
    ])


def stream_vectors(*, model_key: str, space: str, dim: int, chunk_rows: int = 20_000,
                   where_sql: str = "", where_params: tuple[object, ...] = (),
                   sample_percent: float | None = None,
                   owner: VectorOwner = "image") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (owner ids int64, vectors float32 (n, dim)) chunks for one model and space: image ids
    of image vectors, mask ids of region vectors. `where_sql` may name the owner column as `owner_id`.

    sample_percent: a repeatable random sample of about that share of the rows (TABLESAMPLE
    BERNOULLI: every row is considered, only the chosen ones are read out)."""
    for chunk in stream_raw_chunks(model_key=model_key, space=space, dim=dim, chunk_rows=chunk_rows,
                                   where_sql=where_sql, where_params=where_params, sample_percent=sample_percent,
                                   owner=owner):
        yield chunk.parse()


@dataclass(frozen=True)
class RawChunk:
    """Whole COPY rows, not yet parsed: a consumer on another thread can parse them (numpy releases
    the GIL), so the read and the parse overlap."""

    data: bytearray | memoryview
    dtype: np.dtype

    def parse(self) -> tuple[np.ndarray, np.ndarray]:
        return _parse(self.data, self.dtype)


def stream_raw_chunks(*, model_key: str, space: str, dim: int, chunk_rows: int = 20_000,
                      where_sql: str = "", where_params: tuple[object, ...] = (),
                      sample_percent: float | None = None, owner: VectorOwner = "image") -> Iterator[RawChunk]:
    dtype = _row_dtype(dim)
    table, id_column = VECTOR_TABLES[owner]
    sample_sql = "TABLESAMPLE BERNOULLI (%s) REPEATABLE (0)" if sample_percent is not None else ""
    sample_params = (float(sample_percent),) if sample_percent is not None else ()
    query = (f"COPY (SELECT owner_id, vector FROM (SELECT {id_column} AS owner_id, vector::vector({int(dim)}) "
             f"FROM {table} {sample_sql} WHERE model_key = %s AND space = %s) AS rows WHERE true {where_sql} "
             "ORDER BY owner_id) TO STDOUT (FORMAT BINARY)")
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        with cursor.copy(query, (*sample_params, model_key, space, *where_params)) as copy:
            # libpq hands over one row per message: copy each into a preallocated chunk buffer
            # (one copy, no per-row objects kept) and parse the chunk in bulk when it is full.
            # Start small and grow: a catch-up query usually returns a handful of rows.
            buffer = bytearray(min(chunk_rows, 64) * dtype.itemsize)
            filled = 0
            skip = None  # bytes of the header still to drop; known once its first bytes arrived
            for block in copy:
                view = memoryview(block)
                if skip is None:
                    if bytes(view[: len(_HEADER)]) != _HEADER:
                        raise ValueError("unexpected COPY header")
                    skip = _HEADER_SIZE + int.from_bytes(view[len(_HEADER) + 4: _HEADER_SIZE], "big")
                if skip:
                    dropped = min(skip, len(view))
                    view, skip = view[dropped:], skip - dropped
                while len(view):
                    room = len(buffer) - filled
                    take = min(room, len(view))
                    buffer[filled: filled + take] = view[:take]
                    filled += take
                    view = view[take:]
                    if filled == len(buffer):
                        if len(buffer) < chunk_rows * dtype.itemsize:
                            buffer.extend(bytes(min(len(buffer) * 3, chunk_rows * dtype.itemsize - len(buffer))))
                            continue
                        yield RawChunk(buffer, dtype)
                        buffer, filled = bytearray(chunk_rows * dtype.itemsize), 0
            # What is left: whole rows and the 2-byte trailer (-1).
            usable = (filled // dtype.itemsize) * dtype.itemsize
            if usable:
                yield RawChunk(memoryview(buffer)[:usable], dtype)


def _parse(data: bytearray | memoryview, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    rows = np.frombuffer(data, dtype=dtype)
    if len(rows) and ((rows["nfields"] != 2) | (rows["dim"] != dtype["vector"].shape[0])).any():
        raise ValueError("malformed COPY row (or a vector of another dimension)")
    return rows["owner_id"].astype(np.int64), rows["vector"].astype(np.float32)


def count_vectors(*, model_key: str, space: str, owner: VectorOwner = "image") -> int:
    table, _ = VECTOR_TABLES[owner]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table} WHERE model_key = %s AND space = %s", [model_key, space])
        return int(cursor.fetchone()[0])


def load_all(*, model_key: str, space: str, dim: int, progress: Progress | None = None,
             owner: VectorOwner = "image") -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = [], []
    for chunk_ids, chunk_vectors in stream_vectors(model_key=model_key, space=space, dim=dim, owner=owner):
        ids.append(chunk_ids)
        vectors.append(chunk_vectors)
        if progress is not None:
            progress(len(chunk_ids))
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(ids), np.concatenate(vectors)


_PG_EPOCH_OFFSET_US = 946_684_800 * 1_000_000  # 2000-01-01 (PostgreSQL's epoch) in Unix microseconds


def embeddings_copy_in(*, image_ids: np.ndarray, space: str, model_key: str, vectors: np.ndarray,
                       created_at: datetime | None = None, chunk_rows: int = 20_000,
                       mask_ids: np.ndarray | None = None) -> int:
    """Bulk-insert vectors with one binary COPY: the mirror of stream_vectors, for bulk loads
    (benchmarks, restores). Image vectors, or region vectors when `mask_ids` are given (one per
    vector, with its image id). Rows must be new: COPY does not upsert. Returns the number written."""
    vectors = np.asarray(vectors, dtype=np.float32)
    count, dim = vectors.shape
    if len(image_ids) != count or (mask_ids is not None and len(mask_ids) != count):
        raise ValueError("one image id (and mask id) per vector")
    space_bytes, key_bytes = space.encode(), model_key.encode()
    owner_fields = [("mask_len", ">i4"), ("mask_id", ">i8")] if mask_ids is not None else []
    dtype = np.dtype([
        ("nfields", ">i2"),
        *owner_fields,
        ("id_len", ">i4"), ("image_id", ">i8"),
        ("space_len", ">i4"), ("space", f"S{len(space_bytes)}"),
        ("key_len", ">i4"), ("model_key", f"S{len(key_bytes)}"),
        ("vec_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("vector", ">f4", (dim,)),
        ("ts_len", ">i4"), ("created_at", ">i8"),
    ])
    table, _ = VECTOR_TABLES["region" if mask_ids is not None else "image"]
    columns = ("mask_id, " if mask_ids is not None else "") + "image_id, space, model_key, vector, created_at"
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        if created_at is None:  # the database's clock, which catch-ups compare with (not this host's)
            created_at = cursor.execute("SELECT statement_timestamp()").fetchone()[0]
        micros = int(created_at.timestamp() * 1_000_000) - _PG_EPOCH_OFFSET_US
        with cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(_HEADER + (0).to_bytes(4, "big") + (0).to_bytes(4, "big"))
            for start in range(0, count, chunk_rows):
                stop = min(count, start + chunk_rows)
                rows = np.zeros(stop - start, dtype=dtype)
                rows["nfields"] = 6 if mask_ids is not None else 5
                if mask_ids is not None:
                    rows["mask_len"], rows["mask_id"] = 8, mask_ids[start:stop]
                rows["id_len"], rows["image_id"] = 8, image_ids[start:stop]
                rows["space_len"], rows["space"] = len(space_bytes), space_bytes
                rows["key_len"], rows["model_key"] = len(key_bytes), key_bytes
                rows["vec_len"], rows["dim"], rows["vector"] = 4 + 4 * dim, dim, vectors[start:stop]
                rows["ts_len"], rows["created_at"] = 8, micros
                copy.write(rows.tobytes())
            copy.write((-1).to_bytes(2, "big", signed=True))
    return count
