"""Search latency and recall vs collection size: FAISS (the project's hybrid query) vs pgvector.

    python -m bench.search                       # N = 10k and 100k (about 3 minutes)
    python -m bench.search --n 1000000           # 1M, FAISS only by default (15-25 minutes here: the load alone 3-6)
    python -m bench.search --n 1000000 --ann ivf-sq8   # the same with compressed IVF indexes
    python -m bench.search --n 1000000 --ann ivf-pq    # product codes, re-ranked from mapped 16-bit vectors
    python -m bench.search --warm      # afterwards, in a fresh process: new queries, the same again, other new ones

For each N: synthetic clustered vectors (semantic: unit-norm at the active semantic model's
dimension; content: L1-normalized 1024-d) are stored as Image + Embedding rows (vectors through
`retrieval.vector_io.embeddings_copy_in`), FAISS indexes are built with `index_rebuild` (flat up to
IMAGINAITION_FLAT_INDEX_MAX, IVF above), pgvector's HNSW indexes are built, then the same queries
(stored images, k=50) go to:
- the hybrid query in-process (`retrieval.search.rank`: both FAISS indexes, the merge policy and
  the missing similarities), then the same query through `search` (the above plus the 50 Image
  rows for display; the query's index lists are warm by then),
- the same through `POST /api/search/ {"image_id": ...}` (Django's test client, in-process:
  routing, session auth, preferences, the query image's vectors, serialization),
- FAISS alone, pgvector HNSW and pgvector exact (sequential scan), per space.
With --regions (default on for N = 100k): each image also gets 3 masks with region vectors (300k
regions at 100k images, a label per mask; one label on 1 % of the images), region indexes are built,
and region queries (`rank` over the region indexes: each image by its best region) and a 1 %-selective
label filter on image queries are timed; region recall@50 is against exact best-region-per-image.
Per N, also: the index memory of a web process (a fresh process loads both persisted indexes: its RSS
before and after, its own anonymous memory apart from mapped files, and the same after 100 queries a
space, which is when ivf-pq's mapped re-rank vectors are read), the rebuild of both spaces against
a bare binary COPY of the same columns (one of each, the COPY after the rebuild; both after the load
is vacuumed and checkpointed, and with only the queries' vectors left in this process), and for compressed kinds (--ann ivf-sq8 …) how far
the similarities FAISS returns are from the float32 ones.
Recall@50 of each approximate engine is measured against exact brute force (`faiss.knn` over the
same normalized vectors, which the tests show agrees with pgvector exact). Above --pgvector-max
images the pgvector rows are skipped (its HNSW build alone was still running after 6 minutes at 1M).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import percentiles, section_title, setup_django, table, write_section

K = 50


def synthetic_vectors(n: int, semantic_dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered data (like real embeddings): 200 centres, points around them; normalized per space."""
    rng = np.random.default_rng(seed)
    centres_s = rng.normal(size=(200, semantic_dim)).astype(np.float32)
    centres_c = np.abs(rng.normal(size=(200, 1024))).astype(np.float32)
    which = rng.integers(0, 200, size=n)
    # float32 throughout: at 1M the float64 temporaries alone would take 11 GB.
    semantic = rng.standard_normal(size=(n, semantic_dim), dtype=np.float32)
    semantic *= 0.6
    semantic += centres_s[which]
    semantic /= np.linalg.norm(semantic, axis=1, keepdims=True)
    content = rng.standard_normal(size=(n, 1024), dtype=np.float32)
    np.abs(content, out=content)
    content *= 0.6
    content += centres_c[which]
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
            " status, error, masks_status, masks_error, segmented_by)"
            # Increasing keys: the unique sha256 index grows at its right edge (random keys made 1M
            # inserts I/O-bound on the small default shared_buffers).
            " SELECT 'bench/placeholder.png', lpad(to_hex(i), 64, '0'), 'bench-' || i || '.png',"
            " 1, 1, 'PNG', 0, now(), 'ready', '', 'ready', '', '' FROM generate_series(1, %s) AS i RETURNING id", [n])
        ids = np.sort(np.array([row[0] for row in cursor.fetchall()], dtype=np.int64))
    semantic, content = synthetic_vectors(n, semantic_dim, seed)
    embeddings_copy_in(image_ids=ids, space="semantic", model_key=semantic_key, vectors=semantic)
    embeddings_copy_in(image_ids=ids, space="content", model_key=content_key, vectors=content)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gallery_image")
        cursor.execute("ANALYZE gallery_embedding")
    return ids, semantic, content


def index_memory_in_a_fresh_process() -> dict:
    """What loading the persisted image indexes of both spaces costs a web process: RSS before and
    after (and the peak) in a fresh Python process, measured there by psutil and /proc."""
    out = subprocess.run([sys.executable, "-c", "from bench.search import _load_indexes_and_report; "
                          "_load_indexes_and_report()"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, env={**os.environ})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _proc_status(field: str) -> int:
    """A memory figure of this process, in bytes, from /proc/self/status (RssAnon, RssFile, VmHWM)."""
    return int(Path("/proc/self/status").read_text().split(f"{field}:")[1].split()[0]) * 1024


def _django_on_the_bench_database() -> None:
    """Django on the benchmark database as the last run left it (no setup_django: it empties the
    vectors)."""
    from bench.common import BENCH_DATABASE, bench_folders

    os.environ["IMAGINAITION_DATABASE_NAME"] = BENCH_DATABASE
    bench_folders(BENCH_DATABASE)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
    import django

    django.setup()


def _load_indexes_and_report() -> None:
    """In the fresh process: Django on the benchmark database, connected, then both indexes loaded
    as a web process does on its first query."""
    _django_on_the_bench_database()
    import faiss  # noqa: F401  (its import is not index memory)
    import psutil

    from retrieval.encoders.registry import MODELS, active_models
    from retrieval.index_snapshots import db_now, index_dir, manager

    db_now()  # the connection too
    process = psutil.Process()
    before, anon_before = process.memory_info().rss, _proc_status("RssAnon")
    file_before = _proc_status("RssFile")
    models = active_models()
    files = rerank_files = 0
    snapshots = []
    for space, key in (("semantic", models.semantic), ("content", models.content)):
        snapshot = manager.get(space=space, model_key=key, dim=MODELS[key].dim)
        assert snapshot is not None and snapshot.count, (space, key)
        snapshots.append(snapshot)
        files += sum(path.stat().st_size for path in index_dir().glob(f"{space}-*.faiss"))
        rerank_files += sum(path.stat().st_size for path in index_dir().glob(f"{space}-*.rerank"))
    after, anon_after, file_after = (process.memory_info().rss, _proc_status("RssAnon"),
                                     _proc_status("RssFile"))
    # Then 100 queries a space (stored vectors as queries): what they add, in the process's own memory
    # (anonymous) and in mapped file pages (ivf-pq's re-rank vectors: the host's page cache, shared).
    for snapshot in snapshots:
        labels = np.random.default_rng(5).choice(np.fromiter(snapshot.ids, dtype=np.int64), size=100, replace=False)
        _, queries = snapshot.vectors_matrix(labels.tolist())
        for query in queries:
            snapshot.search(query, K)
    print(json.dumps({"before": before, "after": after, "peak": _proc_status("VmHWM"), "files": files,
                      "rerank_files": rerank_files, "anon_before": anon_before, "anon_after": anon_after,
                      "file_before": file_before,
                      "file_after": file_after, "after_queries": process.memory_info().rss,
                      "anon_after_queries": _proc_status("RssAnon"),
                      "file_after_queries": _proc_status("RssFile")}))


HYBRID = "hybrid query in-process (`rank`: both indexes, policy, similarities)"


def fresh_process_passes(queries: int) -> str:
    """--warm: in a fresh process on the benchmark database as the last run left it, hybrid queries
    in three passes. ivf-pq's re-rank files are first read once into the host's page cache (a host
    serving them keeps them in RAM; the process's own memory is unchanged): the first pass then maps
    the rows its candidates touch from the page cache, as a newly started web process does; the second
    repeats the same queries; the third asks other queries, new to the process, once the kernel has
    mapped the pages around each row read before (64 KB a fault), as in a long-running process.
    Returns the section's body."""
    out = subprocess.run([sys.executable, "-c", f"from bench.search import _three_passes; _three_passes({queries})"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                         env={**os.environ})
    if out.returncode != 0:  # its own last line says why (no indexes yet), or its traceback does
        raise SystemExit(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    return out.stdout.strip().split("BODY\n", 1)[1]


def _rerank_files_into_page_cache(snapshots: list) -> tuple[int, float]:
    """Reads ivf-pq's re-rank files once (into the host's page cache, as a host serving them keeps
    them; not into the process): (bytes, seconds)."""
    started, cached = time.perf_counter(), 0
    for snapshot in snapshots:
        if snapshot is not None and snapshot.rerank_vectors is not None:
            with snapshot.rerank_vectors.path.open("rb", buffering=0) as file:
                while chunk := file.read(1 << 24):
                    cached += len(chunk)
    return cached, time.perf_counter() - started


def _three_passes(queries: int) -> None:
    _django_on_the_bench_database()
    from retrieval.encoders.registry import MODELS, active_models
    from retrieval.index_snapshots import manager
    from retrieval.policy import Preferences
    from retrieval.search import QueryVectors, rank

    from django.db import OperationalError

    models = active_models()
    try:
        snapshots = {space: manager.get(space=space, model_key=key, dim=MODELS[key].dim)
                     for space, key in (("semantic", models.semantic), ("content", models.content))}
    except OperationalError:  # no benchmark database yet
        snapshots = {}
    kinds = {space: (snapshot.kind, snapshot.count) for space, snapshot in snapshots.items() if snapshot is not None}
    if len(kinds) != 2:
        raise SystemExit(f"--warm measures the indexes the last run left: run `python -m bench.search` first "
                         f"(indexes found: {kinds or 'none'})")
    picked = np.random.default_rng(7).choice(np.fromiter(snapshots["semantic"].ids, dtype=np.int64),
                                             size=2 * queries, replace=False).tolist()
    cached, cache_s = _rerank_files_into_page_cache(list(snapshots.values()))
    query_sets = []
    for labels in (picked[:queries], picked[queries:]):
        present, semantic = snapshots["semantic"].vectors_matrix(labels)
        _, content = snapshots["content"].vectors_matrix(present)
        query_sets.append(list(zip(present, semantic, content, strict=True)))
    passes = {"first pass (queries new to the process)": query_sets[0],
              "second pass (the same queries)": query_sets[0],
              "third pass (other queries, new to the process)": query_sets[1]}
    timings: dict[str, list[float]] = {name: [] for name in passes}
    for name, query_set in passes.items():
        samples = timings[name]
        for image_id, s_vector, c_vector in query_set:
            query = QueryVectors(semantic=s_vector, content=c_vector, exclude_image_id=image_id)
            started = time.perf_counter()
            ranking = rank(query=query, preferences=Preferences(), models=models)
            samples.append((time.perf_counter() - started) * 1000)
            assert len(ranking.results) == K and set(ranking.engines.values()) == {"faiss"}
    anon, mapped = (_proc_status(field) / 1e9 for field in ("RssAnon", "RssFile"))
    rows = [[f"{kinds['semantic'][1]:,}", f"{HYBRID}, {name}", *percentiles(samples)]
            for name, samples in timings.items()]
    print("BODY\n" + table(["N", "engine", "p50 ms", "p95 ms", "p99 ms"], rows) + "\n\n"
          f"- indexes: semantic {kinds['semantic'][0]}, content {kinds['content'][0]}, as the last `python -m "
          f"bench.search` run built them; {queries} stored images as queries a pass (k={K}, the query excluded), "
          "each pass in the same fresh process\n"
          f"- before the passes: the re-rank files ({cached / 1e9:.2f} GB) read once into the page cache in "
          f"{cache_s:.1f} s (not into the process)\n"
          f"- the process afterwards: RSS anonymous {anon:.2f} GB, mapped files {mapped:.2f} GB (libraries and "
          "the re-rank files' pages it has read)")


def run(n: int, queries: int, pgvector: bool) -> dict:
    import faiss
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    from retrieval.encoders.registry import MODELS, active_models
    from retrieval.index_build import PRODUCT_QUANTIZED, SCALAR_QUANTIZERS
    from retrieval.index_snapshots import manager
    from retrieval.indexes import index_rebuild
    from retrieval.metrics import similarity_between
    from retrieval.models import Embedding
    from retrieval.pgvector_store import hnsw_indexes_for_registry
    from retrieval.policy import Preferences
    from retrieval.neighbours import nearest
    from retrieval.search import QueryVectors, rank, search

    models = active_models()
    keys = {"semantic": models.semantic, "content": models.content}
    metrics = {"semantic": faiss.METRIC_L2, "content": faiss.METRIC_L1}
    compressed_kinds = (*SCALAR_QUANTIZERS, PRODUCT_QUANTIZED)  # their similarities are not float32's
    started = time.perf_counter()
    ids, semantic, content = load(n, MODELS[models.semantic].dim, models.semantic, models.content)
    load_s = time.perf_counter() - started
    # As a gallery's table is after a while (autovacuum): a bulk load leaves every row's visibility
    # hints unset, so whichever reads the table first (the timed rebuild) would also write all of it
    # back, and the load's own writes would still be going to disk.
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE gallery_embedding")
        cursor.execute("CHECKPOINT")
    settle_s = time.perf_counter() - started
    pg_build_s = None
    if pgvector:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '2GB'")
            hnsw_indexes_for_registry([MODELS[models.semantic], MODELS[models.content]])
        pg_build_s = time.perf_counter() - started
    # REST gets queries of its own: a query that just ran has its index lists in the CPU caches.
    both = np.random.default_rng(1).choice(n, size=min(2 * queries, n), replace=False)
    picks, rest_picks = both[:queries], (both[queries:] if len(both) > queries else both[:queries])
    vectors = {"semantic": semantic, "content": content}
    # Exact neighbours of every query (the query image itself excluded, as the search does).
    exact = {}
    similarity_error: dict[str, list[float]] = {space: [] for space in keys}
    for space, data in vectors.items():
        _, rows = faiss.knn(np.ascontiguousarray(data[picks]), data, K + 1, metric=metrics[space])
        exact[space] = [set([i for i in ids[r[r >= 0]].tolist() if i != int(ids[q])][:K])
                        for r, q in zip(rows, picks, strict=True)]
    # Postgres holds the data now. Only the queries' own vectors stay in this process, before the
    # rebuild is timed: at 1M the float32 arrays are 10.75 GB, which left too little memory for the page
    # cache to hold Postgres's tables during the rebuild, or ivf-pq's mapped re-rank files later, as a
    # host serving them would.
    query_vectors = {space: {int(q): data[q].copy() for q in picks.tolist()} for space, data in vectors.items()}
    del semantic, content, vectors, data

    manager.clear()
    rebuilds = {space: index_rebuild(space=space, model_key=key, dim=MODELS[key].dim) for space, key in keys.items()}
    from bench.rebuild import bare_copy_seconds  # here: bench.rebuild imports this module

    copy_s = {space: bare_copy_seconds(key, space, MODELS[key].dim) for space, key in keys.items()}
    memory = index_memory_in_a_fresh_process()
    # The bare COPY has just read Postgres's tables through the page cache, pushing out the re-rank
    # files the rebuild wrote: a host serving ivf-pq keeps them there (docs/SCALING.md).
    page_cache = _rerank_files_into_page_cache([manager.loaded(space=space, model_key=key)
                                                for space, key in keys.items()])

    engines = [("faiss", "FAISS")] + ([("pgvector", "pgvector HNSW"), ("pgvector-exact", "pgvector exact")]
                                      if pgvector else [])
    timings: dict[str, list[float]] = {HYBRID: [], "+ Image rows (`search`)": [], "REST POST /api/search/": []}
    recall: dict[str, list[float]] = {}
    for space in keys:
        for _, label in engines:
            timings[f"{label} {space}"] = []
        recall[f"FAISS {space}"] = []
        if pgvector:
            recall[f"pgvector HNSW {space}"] = []
    prefs = Preferences()
    user = get_user_model().objects.get_or_create(username="bench")[0]
    client = Client(SERVER_NAME="localhost")  # a host the default ALLOWED_HOSTS serve
    client.force_login(user)
    for number, q in enumerate(picks.tolist()):
        image_id = int(ids[q])
        query = QueryVectors(semantic=query_vectors["semantic"][q], content=query_vectors["content"][q],
                             exclude_image_id=image_id)
        t = time.perf_counter()
        ranking = rank(query=query, preferences=prefs, models=models)
        timings[HYBRID].append((time.perf_counter() - t) * 1000)
        assert set(ranking.engines.values()) == {"faiss"} and len(ranking.results) == K, ranking.engines
        t = time.perf_counter()
        response = search(query=query, preferences=prefs, models=models)  # again, with the Image rows
        timings["+ Image rows (`search`)"].append((time.perf_counter() - t) * 1000)
        assert response.engine == "faiss" and len(response.hits) == K, (response.engine, len(response.hits))
        # Per space below: the same query again (its lists now cached), FAISS then pgvector.
        rest_id = int(ids[rest_picks[number % len(rest_picks)]])
        t = time.perf_counter()
        rest = client.post("/api/search/", {"image_id": rest_id}, content_type="application/json")
        timings["REST POST /api/search/"].append((time.perf_counter() - t) * 1000)
        assert rest.status_code == 200 and len(rest.json()["results"]) == K, rest.content[:300]
        for space, key in keys.items():
            for engine, label in engines:
                t = time.perf_counter()
                found, _ = nearest(space=space, model_key=key, query=query_vectors[space][q], k=K,
                                   exclude_image_id=image_id, engine=engine)
                timings[f"{label} {space}"].append((time.perf_counter() - t) * 1000)
                if label in ("FAISS", "pgvector HNSW"):
                    recall[f"{label} {space}"].append(len({c.image_id for c in found} & exact[space][number]) / K)
                if label == "FAISS" and rebuilds[space].kind in compressed_kinds and found:
                    # the stored float32 vectors of its results, from Postgres: the error of decoded codes
                    # or of 16-bit vectors
                    stored = dict(Embedding.objects.filter(model_key=key, space=space, image__in=[
                        c.image_id for c in found]).values_list("image_id", "vector"))
                    truth = similarity_between(space, query_vectors[space][q],
                                               np.stack([stored[c.image_id] for c in found]).astype(np.float32))
                    similarity_error[space] += np.abs(np.array([c.similarity for c in found]) - truth).tolist()
    return {"n": n, "page_cache": page_cache, "load_s": load_s, "settle_s": settle_s, "pg_hnsw_build_s": pg_build_s,
            "rebuilds": rebuilds, "copy_s": copy_s,
            "memory": memory, "similarity_error": {space: e for space, e in similarity_error.items() if e},
            "timings": timings, "recall": {name: float(np.mean(v)) for name, v in recall.items()}}


REGIONS_PER_IMAGE = 3
COMMON_LABELS = tuple(f"label{i:02d}" for i in range(20))
RARE_LABEL = "rare"


def load_regions(ids: np.ndarray, semantic_dim: int, semantic_key: str, content_key: str,
                 seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """3 masks per image (SQL) with region vectors (binary COPY); 1 % of the images get RARE_LABEL on
    one mask. Returns (mask ids, their image ids, semantic, content)."""
    from django.db import connection

    from retrieval.vector_io import embeddings_copy_in

    n = len(ids)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE gallery_mask CASCADE")
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'retrieval_regionembedding' "
                       "AND indexdef LIKE '%USING hnsw%'")
        for (name,) in cursor.fetchall():  # FAISS answers here; a row-by-row HNSW insert would dominate
            cursor.execute(f"DROP INDEX {name}")
        cursor.execute(
            "INSERT INTO gallery_mask (image_id, segmenter, label, class_index, probability_png, area_fraction,"
            " created_at) SELECT image_id, 'bench', CASE WHEN slot = 0 AND image_id %% 100 = 7 THEN %s"
            " ELSE 'label' || lpad(((image_id * 7 + slot) %% 20)::text, 2, '0') END, slot + 1, '\\x00', 0.2, now()"
            " FROM unnest(%s::bigint[]) AS image_id, generate_series(0, %s) AS slot RETURNING id, image_id",
            [RARE_LABEL, ids.tolist(), REGIONS_PER_IMAGE - 1])
        rows = sorted(cursor.fetchall())
    mask_ids = np.array([r[0] for r in rows], dtype=np.int64)
    owners = np.array([r[1] for r in rows], dtype=np.int64)
    semantic, content = synthetic_vectors(len(mask_ids), semantic_dim, seed)
    embeddings_copy_in(image_ids=owners, mask_ids=mask_ids, space="semantic", model_key=semantic_key, vectors=semantic)
    embeddings_copy_in(image_ids=owners, mask_ids=mask_ids, space="content", model_key=content_key, vectors=content)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE gallery_mask")
        cursor.execute("ANALYZE retrieval_regionembedding")
    return mask_ids, owners, semantic, content


def run_regions(ids: np.ndarray, queries: int) -> dict:
    """Region indexes at 3 regions per image; region queries and a 1 % label filter, timed."""
    import faiss
    from django.db import connection

    from retrieval.encoders.registry import MODELS, active_models
    from retrieval.indexes import index_rebuild
    from retrieval.neighbours import nearest_by_regions
    from retrieval.policy import Preferences
    from retrieval.search import QueryVectors, masks_with_labels, rank, vectors_for_image_id

    models = active_models()
    keys = {"semantic": models.semantic, "content": models.content}
    metrics = {"semantic": faiss.METRIC_L2, "content": faiss.METRIC_L1}
    started = time.perf_counter()
    mask_ids, owners, semantic, content = load_regions(ids, MODELS[models.semantic].dim, models.semantic,
                                                       models.content)
    load_s = time.perf_counter() - started
    rebuilds = {space: index_rebuild(space=space, model_key=key, dim=MODELS[key].dim, owner="region")
                for space, key in keys.items()}
    vectors = {"semantic": semantic, "content": content}
    picks = np.random.default_rng(2).choice(len(mask_ids), size=queries, replace=False)
    prefs = Preferences()
    timings: dict[str, list[float]] = {"region query (`rank` over both region indexes)": [],
                                       "region search, one space (FAISS)": [],
                                       "image query with a 1 % label filter (`rank`)": []}
    recall: list[float] = []
    # Region queries back to back, as a server answers them; recall against exact comes after, in its
    # own loop: a brute-force scan of 300k vectors before each query flushed the caches (2026-12-04:
    # rank p50 6.3 ms interleaved with it against 3.3 ms back to back, same build).
    found_by: dict[tuple[int, str], set[int]] = {}
    for q in picks.tolist():
        image_id = int(owners[q])
        query = QueryVectors(semantic=semantic[q], content=content[q], exclude_image_id=image_id, owner="region")
        t = time.perf_counter()
        ranking = rank(query=query, preferences=prefs, models=models)
        timings["region query (`rank` over both region indexes)"].append((time.perf_counter() - t) * 1000)
        assert set(ranking.engines.values()) == {"faiss"} and len(ranking.results) == K
        for space, key in keys.items():
            t = time.perf_counter()
            found, _, _ = nearest_by_regions(space=space, model_key=key, query=vectors[space][q], k=K,
                                             exclude_image_id=image_id)
            timings["region search, one space (FAISS)"].append((time.perf_counter() - t) * 1000)
            found_by[q, space] = {c.image_id for c in found}
    for q in picks.tolist():
        image_id = int(owners[q])
        for space in keys:
            # Exact: every region's distance, each image by its best region.
            _, rows = faiss.knn(np.ascontiguousarray(vectors[space][q:q + 1]), vectors[space], K * 8,
                                metric=metrics[space])
            exact: list[int] = []
            for row in rows[0].tolist():
                owner = int(owners[row])
                if owner != image_id and owner not in exact:
                    exact.append(owner)
                if len(exact) == K:
                    break
            recall.append(len(found_by[q, space] & set(exact)) / K)
    rare = frozenset(image_id for _, image_id in masks_with_labels([RARE_LABEL]))
    for image_id in np.random.default_rng(3).choice(ids, size=queries, replace=False).tolist():
        query = vectors_for_image_id(image_id=int(image_id), models=models)
        t = time.perf_counter()
        ranking = rank(query=QueryVectors(semantic=query.semantic, content=query.content,
                                          exclude_image_id=query.exclude_image_id, only_image_ids=rare),
                       preferences=prefs, models=models)
        timings["image query with a 1 % label filter (`rank`)"].append((time.perf_counter() - t) * 1000)
        expected = min(K, len(rare - {int(image_id)}))  # k whenever k images qualify
        assert len(ranking.results) == expected and {r.image_id for r in ranking.results} <= rare
    with connection.cursor() as cursor:
        # Leave no 300k regions behind: the next run's `migrate` would build pgvector HNSW indexes on them.
        cursor.execute("TRUNCATE retrieval_regionembedding, gallery_mask CASCADE")
    return {"regions": len(mask_ids), "rare_images": len(rare), "load_s": load_s, "rebuilds": rebuilds,
            "timings": timings, "recall": float(np.mean(recall))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="collection sizes (1000000 works)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--ann", default=None,
                        help="IMAGINAITION_ANN_INDEX for this run (ivf, ivf-sq8, ivf-sq6, ivf-sq4, ivf-pq, hnsw, or "
                             "semantic=KIND,content=KIND); default: the setting")
    parser.add_argument("--pgvector-max", type=int, default=200_000,
                        help="skip pgvector (HNSW build and queries) above this many images")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/BENCHMARKS.md")
    parser.add_argument("--regions", type=int, default=100_000,
                        help="after the run at this N, the region section (3 regions per image); 0: none")
    parser.add_argument("--warm", action="store_true",
                        help="no new data: time hybrid queries in three passes in a fresh process on the indexes "
                             "the last run left (queries new to the process, the same again, other new ones)")
    args = parser.parse_args()
    if args.warm:
        body = fresh_process_passes(args.queries)
        print(body)
        if not args.no_write:
            write_section("Search latency of a fresh web process, three passes", "python -m bench.search --warm", body)
        return
    if args.ann:
        os.environ["IMAGINAITION_ANN_INDEX"] = args.ann
    setup_django()
    from django.conf import settings

    ann = settings.IMAGINAITION_ANN_INDEX
    rows, notes = [], []
    warm_processes = False  # ivf-pq: its three passes in a fresh process follow
    headers = ["N", "engine", "p50 ms", "p95 ms", "p99 ms", "recall@50 vs exact"]
    for n in args.n:
        result = run(n, args.queries, pgvector=n <= args.pgvector_max)
        first = len(rows)
        for engine, samples in result["timings"].items():
            p50, p95, p99 = percentiles(samples)
            rows.append([f"{n:,}", engine, p50, p95, p99, result["recall"].get(engine, "")])
        built = ", ".join(f"{space} {r.kind} {r.params or ''} in {r.seconds:.1f} s"
                          for space, r in result["rebuilds"].items())
        pg = (f"pgvector HNSW build {result['pg_hnsw_build_s']:.0f} s" if result["pg_hnsw_build_s"] is not None
              else "pgvector skipped (above --pgvector-max)")
        notes.append(f"- N={n:,}: load {result['load_s']:.0f} s (then VACUUM ANALYZE and CHECKPOINT "
                     f"{result['settle_s']:.0f} s); FAISS {built}; {pg}")
        memory, gb = result["memory"], 1e9
        rebuild_s = sum(r.seconds for r in result["rebuilds"].values())
        copy_s = sum(result["copy_s"].values())
        notes.append(f"- N={n:,}, index memory of a web process (a fresh process loads both indexes): RSS "
                     f"+{(memory['after'] - memory['before']) / gb:.2f} GB ({memory['before'] / gb:.2f} → "
                     f"{memory['after'] / gb:.2f} GB; peak {memory['peak'] / gb:.2f} GB), of which its own "
                     f"(anonymous) memory +{(memory['anon_after'] - memory['anon_before']) / gb:.2f} GB; after 100 "
                     f"queries a space RSS {memory['after_queries'] / gb:.2f} GB (anonymous "
                     f"+{(memory['anon_after_queries'] - memory['anon_before']) / gb:.2f} GB over the start, mapped "
                     f"files +{(memory['file_after_queries'] - memory['file_before']) / gb:.2f} GB); index files "
                     f"{memory['files'] / gb:.2f} GB"
                     + (f", re-rank vector files {memory['rerank_files'] / gb:.2f} GB (mapped)"
                        if memory["rerank_files"] else ""))
        notes.append(f"- N={n:,}, rebuild of both spaces {rebuild_s:.1f} s vs a bare binary COPY of the same columns "
                     f"{copy_s:.1f} s: {rebuild_s / copy_s:.2f}× (" + ", ".join(
                         f"{space} {result['rebuilds'][space].seconds:.1f} / {result['copy_s'][space]:.1f} s"
                         for space in result["copy_s"]) + ")")
        cached, cache_s = result["page_cache"]
        if cached:
            notes.append(f"- N={n:,}: before the queries, the re-rank files ({cached / 1e9:.2f} GB) read once into the "
                         f"page cache ({cache_s:.1f} s), as a host serving them keeps them; each query's candidate "
                         "rows are still new to this process (their pages are mapped in as they are first read): a "
                         "process that has served a few hundred queries is in the section \"Search latency of a "
                         "fresh web process, three passes\", which this run writes too")
            warm_processes = True
        for space, errors in result["similarity_error"].items():
            notes.append(f"- N={n:,}, {space}: returned similarities vs float32 ({len(errors):,} results): mean "
                         f"|error| {np.mean(errors):.5f}, max {np.max(errors):.5f}")
        print(table(headers, rows[first:]), flush=True)
        if n == args.regions:
            from retrieval.encoders.registry import active_models
            from retrieval.models import Embedding

            image_ids = np.array(sorted(Embedding.objects.filter(model_key=active_models().semantic)
                                        .values_list("image_id", flat=True)), dtype=np.int64)
            regions = run_regions(image_ids, args.queries)
            first = len(rows)
            for engine, samples in regions["timings"].items():
                p50, p95, p99 = percentiles(samples)
                recall = regions["recall"] if engine.startswith("region search") else ""
                rows.append([f"{n:,} images, {regions['regions']:,} regions", engine, p50, p95, p99, recall])
            built = ", ".join(f"{space} {r.kind} {r.params or ''} in {r.seconds:.1f} s"
                              for space, r in regions["rebuilds"].items())
            notes.append(f"- regions at N={n:,}: {regions['regions']:,} region vectors per space loaded in "
                         f"{regions['load_s']:.0f} s; region FAISS {built}; the label filter keeps "
                         f"{regions['rare_images']:,} images (1 %), every query returned k={K} of them "
                         "(min(k, qualifying images) at small N)")
            print(table(headers, rows[first:]), flush=True)
    body = (table(headers, rows) + "\n\n" + "\n".join(notes)
            + f"\n\n{args.queries} queries per N (stored images as queries, k={K}, the query image excluded); "
              "semantic dimension of the active model; REST through Django's test client in-process.")
    print(body)
    if not args.no_write:
        profile = os.environ.get("IMAGINAITION_MODEL_PROFILE", "")
        command = (f"IMAGINAITION_MODEL_PROFILE={profile} " if profile else "") + "python -m bench.search --n " + \
            " ".join(str(n) for n in args.n) + (f" --ann {ann}" if args.ann else "")
        name = "Search latency" if ann == "ivf" else f"Search latency, {ann}"
        if profile:  # the vectors' dimensions follow the profile's semantic model
            name += f", {profile} profile"
        write_section(section_title(name, args.n, [10_000, 100_000]), command, body)
    if warm_processes:  # on the indexes of the last N, as `--warm` does
        passes = fresh_process_passes(args.queries)
        print(passes)
        if not args.no_write:
            write_section("Search latency of a fresh web process, three passes",
                          "python -m bench.search --warm (also run by the command above)", passes)


if __name__ == "__main__":
    main()
