"""FAISS rebuild from PostgreSQL vs a bare binary COPY of the same vector columns (same run).

    python -m bench.rebuild [--n 100000]

Goal: rebuild ≤ 2× the bare COPY. The rebuild streams the same binary COPY, parses it with numpy
(retrieval/vector_io.py), normalizes, builds the index (flat or HNSW by size) and writes it to disk.
"""

from __future__ import annotations

import argparse
import time

from bench.common import setup_django, table, write_section
from bench.search import load


def bare_copy_seconds(model_key: str, space: str, dim: int) -> float:
    from django.db import connection

    connection.ensure_connection()
    started = time.perf_counter()
    with connection.connection.cursor() as cursor:
        query = (f"COPY (SELECT image_id, vector::vector({dim}) FROM gallery_embedding WHERE model_key = %s "
                 "AND space = %s ORDER BY image_id) TO STDOUT (FORMAT BINARY)")
        with cursor.copy(query, (model_key, space)) as copy:
            for _ in copy:
                pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    setup_django()
    from retrieval.encoders.registry import MODELS, active_models
    from retrieval.indexes import index_rebuild

    models = active_models()
    rows = []
    for n in args.n:
        load(n, MODELS[models.semantic].dim, models.semantic, models.content)
        for space, key in (("semantic", models.semantic), ("content", models.content)):
            dim = MODELS[key].dim
            copy_s = min(bare_copy_seconds(key, space, dim) for _ in range(3))
            rebuild = min((index_rebuild(space=space, model_key=key, dim=dim) for _ in range(3)),
                          key=lambda report: report.seconds)
            rows.append([f"{n:,}", space, dim, rebuild.kind, copy_s, rebuild.seconds, rebuild.seconds / copy_s])
        print(table(["N", "space", "dim", "index", "bare COPY s", "rebuild s", "ratio"], rows), flush=True)
    body = (table(["N", "space", "dim", "index", "bare COPY s", "rebuild s", "ratio (goal ≤ 2)"], rows)
            + "\n\nBest of 3 for each; the rebuild includes parsing, normalizing, building the index and writing "
              "its file. An HNSW build (above IMAGINAITION_FLAT_INDEX_MAX) is CPU-bound graph construction, "
              "which the ratio charges to the rebuild.")
    print(body)
    if not args.no_write:
        write_section("Index rebuild", "python -m bench.rebuild --n " + " ".join(str(n) for n in args.n), body)


if __name__ == "__main__":
    main()
