"""ivf-pq's 16-bit re-rank vectors: the bfloat16 codec and the file's rows by label."""

import numpy as np
import pytest

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
