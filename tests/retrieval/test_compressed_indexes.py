"""Compressed IVF indexes (IMAGINAITION_ANN_INDEX=ivf-sq8 …, ivf-pq): recall against exact search,
persisted and reloaded with their calibration, caught up, smaller than IVF-flat, region indexes too;
ivf-pq's re-rank vectors in a memory-mapped file beside the index."""

import json

import numpy as np
import pytest
from django.core.management import call_command

from gallery import services
from gallery.models import Image, Mask
from retrieval.index_build import ANN_KINDS
from retrieval.index_snapshots import IndexManager, database_identity, index_dir, manager
from retrieval.indexes import index_rebuild
from retrieval.metrics import similarity_between
from retrieval.neighbours import nearest, nearest_by_regions
from retrieval.vector_io import embeddings_copy_in
from tests.retrieval.test_indexes import CONTENT, SEMANTIC, random_vectors, store, store_bulk

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_indexes(settings, tmp_path, media_root):
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    settings.IMAGINAITION_INDEX_SYNC_SECONDS = 0  # check the database on every query
    settings.IMAGINAITION_FLAT_INDEX_MAX = 100
    manager.clear()
    yield
    manager.clear()


def clustered_vectors(space: str, n: int, dim: int, seed: int, clusters: int = 20) -> np.ndarray:
    """Points around a few centres, as embeddings are (bench.search's generator, smaller). Uniform
    noise, where every distance is about equal, is out of reach of 8-bit codes in the semantic space
    (recall@50 0.95 with every list scanned); the calibration reports what it reached."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, size=n)] + 0.6 * rng.normal(size=(n, dim))
    if space == "semantic":
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    vectors = np.abs(vectors)
    return (vectors / vectors.sum(axis=1, keepdims=True)).astype(np.float32)


def recall_against_exact(space: str, key: str, dim: int, queries: np.ndarray,
                         left_out: np.ndarray | None = None) -> float:
    """Mean recall@50 of FAISS against pgvector exact; `left_out`: each query's own image, excluded
    from its results as "search similar" by a stored image does."""
    recalls = []
    for row, query in enumerate(queries):
        exclude = None if left_out is None else int(left_out[row])
        approx = {c.image_id for c in nearest(space=space, model_key=key, query=query, k=50, exclude_image_id=exclude)[0]}
        exact = {c.image_id for c in nearest(space=space, model_key=key, query=query, k=50, exclude_image_id=exclude,
                                             engine="pgvector-exact")[0]}
        recalls.append(len(approx & exact) / 50)
    return float(np.mean(recalls))


@pytest.mark.parametrize("kind", ["ivf-sq8", "ivf-sq6", "ivf-pq"])
@pytest.mark.parametrize("space, key, dim", [SEMANTIC, CONTENT])
def test_a_compressed_index_keeps_recall_at_50_against_exact(settings, kind, space, key, dim):
    settings.IMAGINAITION_ANN_INDEX = kind
    vectors = clustered_vectors(space, 1530, dim, seed=31)
    ids = store_bulk(space, key, vectors[:1500])  # the last 30: new queries from the same distribution
    report = index_rebuild(space=space, model_key=key, dim=dim)
    assert report.kind == kind and report.count == 1500
    assert report.params["recall"] >= settings.IMAGINAITION_ANN_TARGET_RECALL
    if kind == "ivf-pq":
        # 2 bits a dimension only shortlist: the calibration needed a re-rank in both spaces.
        assert report.params["bits"] == 4 and report.params["codes"] == dim // 2
        assert report.params["rerank"] > 1
    elif space == "content":
        assert report.params["bits"] == int(kind[-1])
        # L1 is not scanned by FAISS's quantized lists: L2 candidates, re-ranked by L1. Scanned in
        # L2 alone, the top 50 differ from L1's, so the calibration needed a re-rank.
        assert report.params["rerank"] > 1
    else:
        assert report.params["bits"] == int(kind[-1]) and "rerank" not in report.params
    # Stored images as queries, each left out of its own results: what the calibration measures, on
    # other queries. Its 64 queries estimate recall within about ±0.02 (a fresh CI database measured
    # 0.947 on 30 other stored queries for a build calibrated at ≥ 0.97), hence 100 queries here and
    # a bound 0.03 under the target; bench.search checks recall@50 ≥ 0.95 at 1M on 100 queries.
    picks = np.random.default_rng(32).choice(1500, size=100, replace=False)
    assert recall_against_exact(space, key, dim, vectors[picks], left_out=ids[picks]) >= \
        settings.IMAGINAITION_ANN_TARGET_RECALL - 0.03
    # New pictures (uploads) come close: one that falls between clusters can have its neighbours in
    # lists other than the few the calibration found enough for stored ones (measured here: 0.933
    # for these 30 new queries in the content space with 1 list of 19 scanned).
    assert recall_against_exact(space, key, dim, vectors[1500:]) >= 0.90


@pytest.mark.parametrize("kind", ["ivf-sq8", "ivf-pq"])
@pytest.mark.parametrize("space, key, dim", [SEMANTIC, CONTENT])
def test_a_compressed_index_is_reloaded_with_its_calibration_and_caught_up(settings, kind, space, key, dim):
    settings.IMAGINAITION_ANN_INDEX = kind
    vectors = random_vectors(space, 600, dim, seed=33)
    ids = store_bulk(space, key, vectors[:599])
    report = index_rebuild(space=space, model_key=key, dim=dim)
    queries = random_vectors(space, 5, dim, seed=34)
    before = [nearest(space=space, model_key=key, query=q, k=20)[0] for q in queries]

    other = IndexManager()  # another web process: loads the file and its meta
    reloaded = other.get(space=space, model_key=key, dim=dim)
    assert reloaded.kind == kind and reloaded.version == report.version
    import faiss

    assert faiss.extract_index_ivf(reloaded.index.index).nprobe == report.params["nprobe"]
    assert reloaded.rerank == report.params.get("rerank", 1)
    labels = [[label for label, _ in reloaded.search(q, 20)] for q in queries]
    assert labels == [[c.image_id for c in found] for found in before]

    late = store(space, key, vectors[599:])[0]  # embedded after the build: added by the catch-up
    reloaded = other.get(space=space, model_key=key, dim=dim)
    assert reloaded.search(vectors[599], 1)[0][0] == late
    assert late in reloaded.vectors_for([late])  # ivf-pq: its re-rank vector is held beside the file's
    services.image_delete(image=Image.objects.get(pk=int(ids[0])))
    reloaded = other.get(space=space, model_key=key, dim=dim)
    assert int(ids[0]) not in [label for label, _ in reloaded.search(vectors[0], 5)]
    assert reloaded.count == 599


@pytest.mark.parametrize("space, key, dim", [SEMANTIC, CONTENT])
def test_similarities_from_decoded_codes_stay_close_to_the_stored_vectors(settings, space, key, dim):
    settings.IMAGINAITION_ANN_INDEX = "ivf-sq8"
    vectors = random_vectors(space, 400, dim, seed=35)
    ids = store_bulk(space, key, vectors)
    index_rebuild(space=space, model_key=key, dim=dim)
    snapshot = manager.get(space=space, model_key=key, dim=dim)
    query = random_vectors(space, 1, dim, seed=36)[0]
    found = snapshot.search(query, 30)
    position = {int(image_id): row for row, image_id in enumerate(ids.tolist())}
    exact = similarity_between(space, query, vectors[[position[label] for label, _ in found]])
    # What the search returns, and the missing similarities (computed from what vectors_for gives),
    # are close to the float32 similarity: 8-bit codes, not the vectors themselves (a small training
    # sample here: a vector beyond its ranges is clipped, hence the wider bound on the worst one).
    decoded = snapshot.vectors_for([label for label, _ in found])
    filled = similarity_between(space, query, np.stack(list(decoded.values())))
    for approximate in ([s for _, s in found], filled):
        error = np.abs(np.asarray(approximate) - exact)
        assert error.mean() < 0.005 and error.max() < 0.03
    assert not np.array_equal(decoded[found[0][0]], vectors[position[found[0][0]]])  # really decoded


@pytest.mark.parametrize("space, key, dim", [SEMANTIC, CONTENT])
def test_compressed_files_take_a_fraction_of_ivf_flat(settings, space, key, dim):
    store_bulk(space, key, random_vectors(space, 2000, dim, seed=37))
    sizes = {}
    for kind in ("ivf", "ivf-sq8", "ivf-sq4"):
        settings.IMAGINAITION_ANN_INDEX = kind
        report = index_rebuild(space=space, model_key=key, dim=dim)
        assert report.kind == kind
        files = list(index_dir().glob("*.faiss"))
        assert len(files) == 1  # the previous version's file is gone
        sizes[kind] = files[0].stat().st_size / report.count
    # float32 is 4 bytes a dimension; 8-bit codes 1, 4-bit codes ½ (plus ids and the lists' centres).
    assert sizes["ivf"] > 4 * dim
    assert sizes["ivf-sq8"] < 0.3 * sizes["ivf"]
    assert sizes["ivf-sq4"] < 0.6 * sizes["ivf-sq8"]


def test_the_kind_can_differ_per_space_and_an_unknown_kind_names_the_choices(settings):
    settings.IMAGINAITION_ANN_INDEX = "semantic=ivf-sq8, content=ivf"
    for space, key, dim in (SEMANTIC, CONTENT):
        store_bulk(space, key, random_vectors(space, 300, dim, seed=38))
    assert index_rebuild(space="semantic", model_key=SEMANTIC[1], dim=384).kind == "ivf-sq8"
    assert index_rebuild(space="content", model_key=CONTENT[1], dim=1024).kind == "ivf"
    for wrong in ("ivf-lsh", "semantic=ivf-sq8,content=ivf-lsh", "texture=ivf"):
        settings.IMAGINAITION_ANN_INDEX = wrong
        with pytest.raises(ValueError, match="IMAGINAITION_ANN_INDEX") as error:
            index_rebuild(space="content", model_key=CONTENT[1], dim=1024)
        assert ("ivf-lsh" in str(error.value) and all(kind in str(error.value) for kind in ANN_KINDS)) \
            or "texture" in str(error.value)


@pytest.mark.parametrize("kind", ["ivf-sq8", "ivf-pq"])
def test_a_region_index_can_be_compressed(settings, kind):
    settings.IMAGINAITION_ANN_INDEX = kind
    space, key, dim = CONTENT
    vectors = random_vectors(space, 600, dim, seed=39)
    images = Image.objects.bulk_create([
        Image(file=f"test/{i}.png", sha256=f"{i:064x}", original_name=f"{i}.png", width=1, height=1, format="PNG",
              byte_size=0, status="ready") for i in range(300)])
    masks = Mask.objects.bulk_create([
        Mask(image=image, segmenter="test", label=f"label{slot}", class_index=slot, probability_png=b"\0",
             area_fraction=0.2) for image in images for slot in (0, 1)])
    embeddings_copy_in(image_ids=np.array([m.image_id for m in masks], dtype=np.int64),
                       mask_ids=np.array([m.pk for m in masks], dtype=np.int64), space=space, model_key=key,
                       vectors=vectors)
    report = index_rebuild(space=space, model_key=key, dim=dim, owner="region")
    assert report.kind == kind and report.count == 600 and report.params["rerank"] >= 1
    reloaded = IndexManager().get(space=space, model_key=key, dim=dim, owner="region")
    assert reloaded.kind == kind and reloaded.rerank == report.params["rerank"]
    found, regions, engine = nearest_by_regions(space=space, model_key=key, query=vectors[7], k=5)
    assert engine == "faiss" and found[0].image_id == masks[7].image_id and regions[masks[7].image_id] == masks[7].pk


@pytest.mark.parametrize("space, key, dim", [SEMANTIC, CONTENT])
def test_product_codes_rerank_from_a_mapped_file_of_16_bit_vectors(settings, space, key, dim):
    settings.IMAGINAITION_ANN_INDEX = "ivf-pq"
    vectors = random_vectors(space, 800, dim, seed=40)
    ids = store_bulk(space, key, vectors)
    settings.IMAGINAITION_ANN_INDEX = "ivf-sq8"
    index_rebuild(space=space, model_key=key, dim=dim)
    settings.IMAGINAITION_ANN_INDEX = "ivf-pq"
    report = index_rebuild(space=space, model_key=key, dim=dim)
    # The index holds 2 bits a dimension and its ids (16 bytes), besides parts of a fixed size (the
    # lists' centres, 16 centres per code, each list's codes padded to a block of 32); the vectors it
    # re-ranks with are a file of 2 bytes a dimension, mapped, not read into the process. Rebuilding
    # removed the previous version's files.
    fixed = (report.params["lists"] + 16) * dim * 4 + report.params["lists"] * 32 * dim // 4
    per_vector = (next(index_dir().glob("*.faiss")).stat().st_size - fixed) / report.count
    assert per_vector < dim / 4 + 40
    assert sorted(path.suffix for path in index_dir().iterdir()) == [".faiss", ".json", ".rerank"]
    assert next(index_dir().glob("*.rerank")).stat().st_size == 800 * dim * 2
    snapshot = IndexManager().get(space=space, model_key=key, dim=dim)
    rows = snapshot.rerank_vectors._rows
    assert rows.base.base.obj is snapshot.rerank_vectors._mapped and not rows.flags.writeable  # the mapped file, read-only

    # Similarities come from the 16-bit vectors: far closer to float32 than 8-bit codes' (bound above).
    query = random_vectors(space, 1, dim, seed=41)[0]
    found = snapshot.search(query, 50)  # the k the calibration measured recall at
    position = {int(image_id): row for row, image_id in enumerate(ids.tolist())}
    exact = similarity_between(space, query, vectors[[position[label] for label, _ in found]])
    filled = similarity_between(space, query, np.stack(list(snapshot.vectors_for([label for label, _ in found]).values())))
    for approximate in ([s for _, s in found], filled):
        error = np.abs(np.asarray(approximate) - exact)
        assert error.mean() < 5e-4 and error.max() < 2e-3
    # Ranked by the 16-bit vectors: in float32's order up to their error, and the shortlist held the
    # nearest (a new query: the calibration's ≥ 0.95 recall is over stored ones, so at least 9 of 10).
    assert np.all(np.diff(exact) <= 2e-3)
    exact_order = [int(ids[row]) for row in np.argsort(-similarity_between(space, query, vectors))[:30]]
    assert len({label for label, _ in found[:10]} & set(exact_order[:10])) >= 9


def test_a_failed_product_quantized_build_leaves_no_file_behind(settings, monkeypatch):
    settings.IMAGINAITION_ANN_INDEX = "ivf-pq"
    space, key, dim = SEMANTIC
    store_bulk(space, key, random_vectors(space, 500, dim, seed=42))
    index_rebuild(space=space, model_key=key, dim=dim)
    before = sorted(path.name for path in index_dir().iterdir())

    from retrieval import vector_io

    real = vector_io.stream_raw_chunks

    def failing(**kwargs):
        yield from real(**kwargs)
        raise OSError("connection lost mid-stream")

    monkeypatch.setattr("retrieval.indexes.stream_raw_chunks", failing)
    with pytest.raises(OSError, match="connection lost"):
        index_rebuild(space=space, model_key=key, dim=dim)
    assert sorted(path.name for path in index_dir().iterdir()) == before  # no .rerank.tmp, no new version
    assert manager.get(space=space, model_key=key, dim=dim).count == 500


def test_an_index_below_the_target_recall_is_kept_with_a_warning(settings, caplog, capsys):
    """A target out of any kind's reach (above 1): the calibration scans every list and stops short;
    the build logs why and what to choose, rebuild_index says it on stderr and still succeeds."""
    settings.IMAGINAITION_ANN_INDEX = "ivf-sq6"
    settings.IMAGINAITION_ANN_TARGET_RECALL = 1.01
    space, key, dim = CONTENT
    store_bulk(space, key, clustered_vectors(space, 300, dim, seed=41))
    with caplog.at_level("WARNING", logger="retrieval.index_build"):
        call_command("rebuild_index")
    out, err = capsys.readouterr()
    assert "content autoencoder/v1: 300 vectors, ivf-sq6" in out
    [record] = [r for r in caplog.records if r.name == "retrieval.index_build"]
    assert record.levelname == "WARNING"
    for part in ("content index of 300 vectors", "ivf-sq6 reached recall", "target 1.01", "ivf-sq8", "flat"):
        assert part in record.getMessage()
    assert "content autoencoder/v1: warning: ivf-sq6 reached recall" in err and "ivf-pq" in err

    settings.IMAGINAITION_ANN_TARGET_RECALL = 0.5  # reached: no warning
    caplog.clear()
    call_command("rebuild_index")
    assert "warning" not in capsys.readouterr().err
    assert not [r for r in caplog.records if r.name == "retrieval.index_build"]


@pytest.mark.django_db(transaction=True)  # the copy is built on a thread of its own, with its own connection
@pytest.mark.parametrize("damage", ["truncated index", "garbled description", "description not an object",
                                    "truncated re-rank file", "built from another database"])
def test_a_damaged_index_file_is_removed_and_this_hosts_copy_built_again(settings, damage, caplog):
    """A file that cannot be read failed every search and status request (500s) until a rebuild by hand."""
    import logging

    from retrieval import indexes
    from retrieval.models import IndexState
    from tests.conftest import wait_for

    settings.IMAGINAITION_ANN_INDEX = "ivf-pq"  # the kind with a re-rank file beside the index
    space, key, dim = SEMANTIC
    vectors = random_vectors(space, 300, dim, seed=41)
    ids = store_bulk(space, key, vectors)
    report = index_rebuild(space=space, model_key=key, dim=dim)
    path = index_dir() / IndexState.objects.get(space=space, model_key=key, owner="image").file_name
    if damage == "garbled description":
        path.with_suffix(".json").write_text("{garbage")
    elif damage == "description not an object":
        path.with_suffix(".json").write_text("[]")
    elif damage == "built from another database":  # a restore's new database: the same version stamp, other rows
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["database"] == database_identity() and "?" not in meta["database"]
        path.with_suffix(".json").write_text(json.dumps({**meta, "database": "7300000000000000000/16384"}))
    else:
        with (path if damage == "truncated index" else path.with_suffix(".rerank")).open("r+b") as file:
            file.truncate(1000)

    restarted = IndexManager()  # a web process starting with the damaged files
    restarted.copy_builder = indexes.index_copy_build
    with caplog.at_level(logging.WARNING):
        assert restarted.get(space=space, model_key=key, dim=dim) is None  # pgvector answers meanwhile
    damaged = {"garbled description": path.with_suffix(".json"), "description not an object": path.with_suffix(".json"),
               "built from another database": path.with_suffix(".json"),
               "truncated re-rank file": path.with_suffix(".rerank")}.get(damage, path)
    assert f"index file {damaged} cannot be read" in caplog.text  # the file that is damaged, by its name
    if damage == "built from another database":
        assert "it was built from another database (restored since" in caplog.text
    copy = wait_for(lambda: restarted.get(space=space, model_key=key, dim=dim), timeout=60, interval=0.1,
                    message="this host's copy of the index, built again")
    assert copy.version == report.version and copy.search(vectors[5], 1)[0][0] == ids[5]
    again = IndexManager().get(space=space, model_key=key, dim=dim)  # the next process reads the new files
    assert again is not None and again.version == report.version and again.kind == "ivf-pq"
