"""Search latency and recall vs collection size: FAISS (the project's hybrid query) vs pgvector.

    python -m bench.search [--n 10000 100000] [--queries 100]

For each N: synthetic vectors (semantic: unit-norm at the active semantic model's dimension;
content: L1-normalized 1024-d) are stored through the project's models (Image + Embedding rows,
bulk-created; images have a placeholder file name, no file), FAISS indexes are built with
`index_rebuild`, pgvector's HNSW indexes are (re)built, then the same queries go to:
- the hybrid query in-process (`retrieval.search.search`: both FAISS indexes + the merge policy),
- the same through `POST /api/search/` (Django's test client, in-process: request + serialization),
- pgvector HNSW and pgvector exact (sequential scan), per space.
Recall@50 of each approximate engine is measured against pgvector exact.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import percentiles, setup_django, table, write_section

K = 50


def synthetic_vectors(n: int, semantic_dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered data (like real embeddings): 200 centres, points around them; normalized per space."""
    rng = np.random.default_rng(seed)
    centres_s = rng.normal(size=(200, semantic_dim)).astype(np.float32)
    centres_c = np.abs(rng.normal(size=(200, 1024))).astype(np.float32)
    which = rng.integers(0, 200, size=n)
    semantic = centres_s[which] + 0.6 * rng.normal(size=(n, semantic_dim)).astype(np.float32)
    semantic /= np.linalg.norm(semantic, axis=1, keepdims=True)
    content = centres_c[which] + 0.6 * np.abs(rng.normal(size=(n, 1024))).astype(np.float32)
    content /= content.sum(axis=1, keepdims=True)
    return semantic, content


def load(n: int, semantic_dim: int, semantic_key: str, content_key: str,
         seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empty the bench database and store n images with both embeddings; returns (image ids, semantic,
    content). Image rows are generated in SQL (placeholder files); vectors go in through the project's
    bulk path (retrieval.vector_io.embeddings_copy_in, one binary COPY per space)."""
    from django.db import connection

    from retrieval.vector_io import embeddings_copy_in

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE gallery_image, gallery_embedding, gallery_mask, retrieval_deletedimage CASCADE")
        # pgvector's HNSW indexes are rebuilt after the bulk load (much faster than row by row).
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'gallery_embedding' "
                       "AND indexdef LIKE '%USING hnsw%'")
        for (name,) in cursor.fetchall():
            cursor.execute(f"DROP INDEX {name}")
        cursor.execute(
            "INSERT INTO gallery_image (file, sha256, original_name, width, height, format, byte_size, created_at,"
            " status, error, masks_status, masks_error)"
            " SELECT 'bench/placeholder.png', md5('bench-' || i) || md5('hcneb-' || i), 'bench-' || i || '.png',"
            " 1, 1, 'PNG', 0, now(), 'ready', '', 'ready', '' FROM generate_series(1, %s) AS i RETURNING id", [n])
        ids = np.sort(np.array([row[0] for row in cursor.fetchall()], dtype=np.int64))
    semantic, content = synthetic_vectors(n, semantic_dim, seed)
    embeddings_copy_in(image_ids=ids, space="semantic", model_key=semantic_key, vectors=semantic)
    embeddings_copy_in(image_ids=ids, space="content", model_key=content_key, vectors=content)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gallery_image")
        cursor.execute("ANALYZE gallery_embedding")
    return ids, semantic, content


def run(n: int, queries: int) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from retrieval.encoders.registry import MODELS, active_models
    from retrieval.indexes import index_rebuild, manager
    from retrieval.pgvector_store import hnsw_indexes_for_registry
    from retrieval.policy import Preferences
    from retrieval.search import QueryVectors, nearest, search

    models = active_models()
    semantic_dim = MODELS[models.semantic].dim
    started = time.perf_counter()
    ids, semantic, content = load(n, semantic_dim, models.semantic, models.content)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '2GB'")
        hnsw_indexes_for_registry([MODELS[models.semantic], MODELS[models.content]])
    pg_build_s = time.perf_counter() - started
    manager.clear()
    rebuilds = {space: index_rebuild(space=space, model_key=key, dim=MODELS[key].dim)
                for space, key in (("semantic", models.semantic), ("content", models.content))}

    rng = np.random.default_rng(1)
    picks = rng.integers(0, n, size=queries)
    prefs = Preferences()
    timings: dict[str, list[float]] = {"hybrid (FAISS + policy)": [], "REST /api/search/": []}
    for space in ("semantic", "content"):
        timings[f"pgvector HNSW {space}"] = []
        timings[f"pgvector exact {space}"] = []
        timings[f"FAISS {space}"] = []
    recall: dict[str, list[float]] = {f"FAISS {s}": [] for s in ("semantic", "content")}
    recall.update({f"pgvector HNSW {s}": [] for s in ("semantic", "content")})

    user = get_user_model().objects.get_or_create(username="bench")[0]
    client = Client()
    client.force_login(user)
    for q in picks.tolist():
        query = QueryVectors(semantic=semantic[q], content=content[q])
        t = time.perf_counter()
        search(query=query, preferences=prefs, models=models)
        timings["hybrid (FAISS + policy)"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        response = client.post("/api/search/", {"image_id": int(ids[q])}, content_type="application/json")
        timings["REST /api/search/"].append((time.perf_counter() - t) * 1000)
        assert response.status_code == 200, response.content
        for space, vector, key in (("semantic", semantic[q], models.semantic), ("content", content[q], models.content)):
            results = {}
            for engine, label in (("faiss", "FAISS"), ("pgvector", "pgvector HNSW"), ("pgvector-exact", "pgvector exact")):
                t = time.perf_counter()
                found, _ = nearest(space=space, model_key=key, query=vector, k=K, engine=engine)
                timings[f"{label} {space}"].append((time.perf_counter() - t) * 1000)
                results[label] = {c.image_id for c in found}
            for label in ("FAISS", "pgvector HNSW"):
                recall[f"{label} {space}"].append(len(results[label] & results["pgvector exact"]) / K)
    return {"n": n, "load_s": load_s, "pg_hnsw_build_s": pg_build_s,
            "faiss_kind": rebuilds["semantic"].kind, "faiss_build_s": {s: r.seconds for s, r in rebuilds.items()},
            "timings": timings, "recall": {k: float(np.mean(v)) for k, v in recall.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="collection sizes (1000000 works, slowly)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/BENCHMARKS.md")
    args = parser.parse_args()
    setup_django()
    rows, notes = [], []
    for n in args.n:
        result = run(n, args.queries)
        for engine, samples in result["timings"].items():
            p50, p95, p99 = percentiles(samples)
            rows.append([f"{n:,}", engine, p50, p95, p99, result["recall"].get(engine, "")])
        notes.append(f"- N={n:,}: load {result['load_s']:.0f} s, FAISS index {result['faiss_kind']} "
                     f"(built in {result['faiss_build_s']['semantic']:.1f} s semantic, "
                     f"{result['faiss_build_s']['content']:.1f} s content), pgvector HNSW build {result['pg_hnsw_build_s']:.0f} s")
        print(table(["N", "engine", "p50 ms", "p95 ms", "p99 ms", "recall@50"], rows[-8:]), flush=True)
    body = (table(["N", "engine", "p50 ms", "p95 ms", "p99 ms", "recall@50 vs exact"], rows) + "\n\n" + "\n".join(notes)
            + f"\n\n{args.queries} queries per N (stored vectors as queries, k={K}); semantic dimension of the active "
              "model; REST through Django's test client in-process (routing, auth, serialization, DB hydration).")
    print(body)
    if not args.no_write:
        write_section("Search latency", "python -m bench.search --n " + " ".join(str(n) for n in args.n), body)


if __name__ == "__main__":
    main()
