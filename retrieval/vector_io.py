"""Reading vectors out of PostgreSQL fast: binary COPY parsed in bulk with numpy.

Each row of `COPY (SELECT image_id, vector::vector(dim) ...) TO STDOUT (FORMAT BINARY)` has a fixed
size, so a chunk of rows is one numpy structured array: no Python object per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from django.db import connection

_HEADER = b"PGCOPY\n\xff\r\n\x00"
_HEADER_SIZE = len(_HEADER) + 8  # signature, flags (int32), header extension length (int32)


def _row_dtype(dim: int) -> np.dtype:
    return np.dtype([
        ("nfields", ">i2"), ("id_len", ">i4"), ("image_id", ">i8"),
        ("vec_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("vector", ">f4", (dim,)),
    ])


def stream_vectors(*, model_key: str, space: str, dim: int, chunk_rows: int = 20_000,
                   where_sql: str = "", where_params: tuple = ()) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (image_ids int64, vectors float32 (n, dim)) chunks for one model and space."""
    dtype = _row_dtype(dim)
    query = (f"COPY (SELECT image_id, vector::vector({int(dim)}) FROM gallery_embedding "
             f"WHERE model_key = %s AND space = %s {where_sql} ORDER BY image_id) TO STDOUT (FORMAT BINARY)")
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        with cursor.copy(query, (model_key, space, *where_params)) as copy:
            buffer = bytearray()
            header_seen = False
            target = chunk_rows * dtype.itemsize
            for block in copy:
                buffer += block
                if not header_seen and len(buffer) >= _HEADER_SIZE:
                    if bytes(buffer[: len(_HEADER)]) != _HEADER:
                        raise ValueError("unexpected COPY header")
                    extension = int.from_bytes(buffer[len(_HEADER) + 4: _HEADER_SIZE], "big")
                    del buffer[: _HEADER_SIZE + extension]
                    header_seen = True
                if header_seen and len(buffer) >= target:
                    usable = (len(buffer) // dtype.itemsize) * dtype.itemsize
                    yield _parse(bytes(buffer[:usable]), dtype)
                    del buffer[:usable]
            # What is left: whole rows and the 2-byte trailer (-1).
            if header_seen:
                usable = (len(buffer) // dtype.itemsize) * dtype.itemsize
                if usable:
                    yield _parse(bytes(buffer[:usable]), dtype)


def _parse(data: bytes, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    rows = np.frombuffer(data, dtype=dtype)
    if len(rows) and (rows["nfields"] != 2).any():
        raise ValueError("malformed COPY row")
    return rows["image_id"].astype(np.int64), rows["vector"].astype(np.float32)


def count_vectors(*, model_key: str, space: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM gallery_embedding WHERE model_key = %s AND space = %s",
                       [model_key, space])
        return int(cursor.fetchone()[0])


def load_all(*, model_key: str, space: str, dim: int,
             progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = [], []
    for chunk_ids, chunk_vectors in stream_vectors(model_key=model_key, space=space, dim=dim):
        ids.append(chunk_ids)
        vectors.append(chunk_vectors)
        if progress is not None:
            progress(len(chunk_ids))
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(ids), np.concatenate(vectors)
