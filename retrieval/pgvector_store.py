"""PostgreSQL's own kNN over stored embeddings (pgvector): the fallback engine and FAISS's cross-check.

Embeddings of every model share one table with an undimensioned ``vector`` column, so each
(model, space) gets a partial HNSW index on the expression ``vector::vector(dim)``; queries use
the same expression and WHERE clause so the planner can pick that index.
Metrics match the FAISS indexes: semantic vectors are L2-normalized and compared by L2 distance
(``<->``, ranking as cosine does); content vectors are L1-normalized and compared by L1 (``<+>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from django.db import connection, transaction
from pgvector import Vector

from retrieval.spaces import VECTOR_OWNERS, VECTOR_TABLES, VectorOwner

if TYPE_CHECKING:
    from retrieval.encoders.specs import ModelSpec

OPERATORS = {"semantic": ("<->", "vector_l2_ops"), "content": ("<+>", "vector_l1_ops")}


@dataclass(frozen=True)
class Neighbour:
    id: int  # an image id, or a mask id for region vectors
    distance: float


# Image vectors and region vectors: the same columns, each table with its own HNSW indexes.
INDEX_PREFIX = {"image": "embedding_hnsw", "region": "region_hnsw"}


def _index_name(model_key: str, space: str, owner: VectorOwner = "image") -> str:
    digest = hashlib.sha1(f"{model_key}|{space}".encode()).hexdigest()[:10]
    return f"{INDEX_PREFIX[owner]}_{space}_{digest}"


def hnsw_index_ensure(*, model_key: str, space: str, dim: int, owner: VectorOwner = "image") -> str:
    """Create (if missing) the HNSW index serving kNN for one model and space (of image or region
    vectors); return its name."""
    _, opclass = OPERATORS[space]
    name = _index_name(model_key, space, owner)
    # DDL takes no bind parameters; keys come from our registry but are quoted properly anyway.
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {VECTOR_TABLES[owner][0]} "
            f"USING hnsw ((vector::vector({int(dim)})) {opclass}) "
            f"WHERE model_key = {_literal(model_key)} AND space = {_literal(space)}"
        )
    return name


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def hnsw_indexes_for_registry(model_specs: Iterable[ModelSpec]) -> list[str]:
    """Ensure HNSW indexes (image and region vectors) for every registered embedding model (run
    after migrations)."""
    return [hnsw_index_ensure(model_key=spec.key, space=spec.role, dim=spec.dim, owner=owner)
            for spec in model_specs if spec.role in OPERATORS and spec.dim for owner in VECTOR_OWNERS]


def knn(*, model_key: str, space: str, dim: int, query: np.ndarray, k: int, exact: bool = False,
        ef_search: int = 100, exclude_image_id: int | None = None, owner: VectorOwner = "image",
        only_image_ids: Sequence[int] | None = None, only_ids: Sequence[int] | None = None) -> list[Neighbour]:
    """The k stored vectors nearest to `query` for one model and space, nearest first: images, or
    mask regions (owner="region"; each region row also names its image).

    exact=True forbids index scans, so Postgres computes every distance (ground truth).
    only_image_ids keeps images (or regions of images) in that list: a label filter; only_ids keeps
    the owners (images, or regions by mask id) in that list: a label filter of regions.
    """
    operator, _ = OPERATORS[space]
    table, id_column = VECTOR_TABLES[owner]
    vector = Vector(np.asarray(query, dtype=np.float32).ravel()).to_text()
    expr = f"vector::vector({int(dim)})"
    # relaxed_order (below) may return rows slightly out of order: the outer query re-sorts them.
    sql = (
        "WITH nearest AS MATERIALIZED ("
        f"SELECT {id_column} AS id, {expr} {operator} %s::vector({int(dim)}) AS distance FROM {table} "
        "WHERE model_key = %s AND space = %s"
        + (" AND image_id <> %s" if exclude_image_id is not None else "")
        + (" AND image_id = ANY(%s)" if only_image_ids is not None else "")
        + (f" AND {id_column} = ANY(%s)" if only_ids is not None else "")
        + f" ORDER BY {expr} {operator} %s::vector({int(dim)}) LIMIT %s"
        ") SELECT id, distance FROM nearest ORDER BY distance, id"
    )
    params: list = [vector, model_key, space]
    if exclude_image_id is not None:
        params.append(exclude_image_id)
    if only_image_ids is not None:
        params.append(list(only_image_ids))
    if only_ids is not None:
        params.append(list(only_ids))
    params += [vector, int(k)]
    with transaction.atomic(), connection.cursor() as cursor:
        if exact:
            cursor.execute("SET LOCAL enable_indexscan = off")
        else:
            cursor.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
            # Filtered HNSW scans may return fewer than k rows; iterative scans keep looking (pgvector ≥ 0.8).
            cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        if len(rows) < k and not exact:
            # Dead tuples (deleted or rolled-back vectors not yet vacuumed) stay in the HNSW graph and
            # can fill its candidate list, so a scan may come back short or even empty (pgvector #244).
            # Short means "fewer than k live rows" or "the graph failed": an exact scan tells which.
            cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute(sql, params)
            rows = cursor.fetchall()
    return [Neighbour(id=row[0], distance=float(row[1])) for row in rows]


def region_images(mask_ids: Sequence[int]) -> dict[int, int]:
    """mask id -> image id for these region owners."""
    if not mask_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, image_id FROM gallery_mask WHERE id = ANY(%s)", [list(mask_ids)])
        return dict(cursor.fetchall())
