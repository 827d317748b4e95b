"""ivf-pq's 16-bit re-rank vectors: the bfloat16 codec and the file's rows by label."""

import faiss
import numpy as np
import pytest

from retrieval import rerank_vectors
from retrieval.rerank_vectors import RerankWriter, from_bfloat16, to_bfloat16


def test_bfloat16_keeps_the_upper_half_of_each_float_rounded_to_nearest():
    vectors = np.random.default_rng(0).standard_normal((300, 96), dtype=np.float32)
    halves = to_bfloat16(vectors)
    assert halves.dtype == np.uint16 and halves.shape == vectors.shape
    back = from_bfloat16(halves)
    assert back.dtype == np.float32 and back.shape == vectors.shape
    # 8 significant bits: rounded to nearest, each value within half a unit of the last place
    assert np.all(np.abs(back - vectors) <= np.abs(vectors) * 2.0 ** -8)
    truncated = (vectors.view(np.uint32) & 0xFFFF0000).view(np.float32)
    assert np.abs(back - vectors).mean() < np.abs(truncated - vectors).mean() * 0.6  # rounded, not cut
    assert np.array_equal(from_bfloat16(to_bfloat16(back)), back)  # values already 16-bit survive exactly


def test_rows_come_back_by_label_from_the_file_and_from_vectors_added_since(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50, 8), dtype=np.float32)
    labels = rng.permutation(np.arange(1000, 1050, dtype=np.int64))
    writer = RerankWriter(tmp_path, 8)
    writer.append(vectors[:20])
    writer.append(vectors[20:])
    stored = writer.finish(labels)
    assert stored.path.stat().st_size == 50 * 8 * 2
    later = rng.standard_normal((2, 8), dtype=np.float32)
    stored.add(np.array([7, 9]), later)
    wanted = np.array([labels[3], 9, labels[40], 7])
    got = stored.get(wanted)
    expected = np.stack([vectors[3], later[1], vectors[40], later[0]])
    assert np.allclose(got, expected, rtol=2.0 ** -8, atol=0)
    with pytest.raises(KeyError):
        stored.get(np.array([5]))


def test_rows_in_the_order_the_index_received_them_and_their_labels(tmp_path):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((30, 8), dtype=np.float32)
    labels = rng.permutation(np.arange(500, 530, dtype=np.int64))
    writer = RerankWriter(tmp_path, 8)
    writer.append(vectors)
    stored = writer.finish(labels)
    later = rng.standard_normal((3, 8), dtype=np.float32)
    stored.add(np.array([11, 12, 13]), later)  # rows 30, 31, 32
    rows = np.array([31, 4, 0, 32, 29])
    assert stored.labels_of(rows).tolist() == [12, labels[4], labels[0], 13, labels[29]]
    assert np.allclose(stored.rows(rows), np.stack([later[1], vectors[4], vectors[0], later[2], vectors[29]]),
                       rtol=2.0 ** -8, atol=0)
    assert np.array_equal(stored.rows(rows[1:3]), stored.get(stored.labels_of(rows[1:3])))


@pytest.mark.parametrize("metric", [faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L1])
def test_the_nearest_rows_compared_in_16_bits_match_an_exact_search_of_the_widened_rows(tmp_path, metric,
                                                                                       monkeypatch):
    """L2 and inner product compare the 16-bit rows as they are (FAISS's bfloat16 index), L1 widens
    them: either way the same neighbours and distances as faiss.knn over the float32 rows, also for
    rows added since the build and for a thread reusing its buffer with fewer rows. A thread keeps
    its buffer only up to a size: a deep search's is let go."""
    monkeypatch.setattr(rerank_vectors, "KEPT_RANKER_BYTES", 100 * 40 * 2)
    rerank_vectors._rankers().clear()
    rng = np.random.default_rng(3)
    dim = 40
    vectors = rng.standard_normal((400, dim), dtype=np.float32)
    writer = RerankWriter(tmp_path, dim)
    writer.append(vectors)
    stored = writer.finish(np.arange(400, dtype=np.int64))
    stored.add(np.array([900, 901]), rng.standard_normal((2, dim), dtype=np.float32))  # rows 400, 401
    query = rng.standard_normal((1, dim), dtype=np.float32)
    for rows in (rng.choice(402, 300, replace=False), np.array([401, 7, 400, 3, 250])):
        distances, positions = stored.nearest(query, rows, 10, metric=metric)
        k = min(10, len(rows))
        expected_distances, expected_positions = faiss.knn(query, stored.rows(rows), k, metric=metric)
        assert distances.shape == (1, k) and positions.shape == (1, k)
        assert positions[0].tolist() == expected_positions[0].tolist()
        assert np.allclose(distances, expected_distances, rtol=1e-5, atol=1e-5)
        kept = (dim, metric) in rerank_vectors._rankers()
        assert kept == (metric != faiss.METRIC_L1 and len(rows) <= 100), len(rows)  # 300 rows: let go
    with pytest.raises(IndexError):
        stored.nearest(query, np.array([0, 402]), 1, metric=metric)
