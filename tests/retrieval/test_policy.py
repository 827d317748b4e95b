"""The original merge policy, table-driven on hand-made candidate lists."""

import pytest

from retrieval.policy import Candidate, Preferences, merge

# Semantic finds 1..6, content finds 4..9: images 4, 5, 6 are found by both.
SEMANTIC = [Candidate(i, s) for i, s in [(1, .99), (2, .98), (3, .97), (4, .96), (5, .95), (6, .94)]]
CONTENT = [Candidate(i, s) for i, s in [(9, .90), (6, .89), (8, .88), (5, .87), (4, .86), (7, .85)]]


def ids(results):
    return [(r.image_id, r.retrieved_by) for r in results]


CASES = [
    # (k, intersection, preferred, split, expected)
    (6, True, "semantic", 50, [(4, "both"), (5, "both"), (6, "both"),
                               (1, "semantic"), (2, "semantic"), (9, "content")]),  # 3 left: round(1.5)=2 + 1
    (6, True, "content", 50, [(6, "both"), (5, "both"), (4, "both"),
                              (9, "content"), (8, "content"), (1, "semantic")]),
    (6, True, "semantic", 0, [(4, "both"), (5, "both"), (6, "both"), (9, "content"), (8, "content"), (7, "content")]),
    (6, True, "semantic", 100, [(4, "both"), (5, "both"), (6, "both"),
                                (1, "semantic"), (2, "semantic"), (3, "semantic")]),
    # Intersection off: each index's share places images in its own order; one both returned is labelled so.
    (6, False, "semantic", 50, [(1, "semantic"), (2, "semantic"), (3, "semantic"),
                                (9, "content"), (6, "both"), (8, "content")]),
    (6, False, "content", 50, [(9, "content"), (6, "both"), (8, "content"),
                               (1, "semantic"), (2, "semantic"), (3, "semantic")]),
    (6, False, "semantic", 0, [(9, "content"), (6, "both"), (8, "content"), (5, "both"), (4, "both"),
                               (7, "content")]),
    (6, False, "semantic", 100, [(1, "semantic"), (2, "semantic"), (3, "semantic"), (4, "both"),
                                 (5, "both"), (6, "both")]),
    # k larger than what the indexes returned: everything, nothing twice.
    (50, True, "semantic", 50, [(4, "both"), (5, "both"), (6, "both"), (1, "semantic"), (2, "semantic"),
                                (3, "semantic"), (9, "content"), (8, "content"), (7, "content")]),
    (50, False, "content", 50, [(9, "content"), (6, "both"), (8, "content"), (5, "both"), (4, "both"),
                                (7, "content"), (1, "semantic"), (2, "semantic"), (3, "semantic")]),
    (4, False, "semantic", 50, [(1, "semantic"), (2, "semantic"), (9, "content"), (6, "content")]),
    (2, True, "semantic", 50, [(1, "semantic"), (9, "content")]),  # no overlap within the top 2
]


@pytest.mark.parametrize("k, intersection, preferred, split, expected", CASES)
def test_merge_policy(k, intersection, preferred, split, expected):
    prefs = Preferences(k=k, intersection_first=intersection, preferred_index=preferred, split=split)
    results = merge(semantic=SEMANTIC[:k], content=CONTENT[:k], preferences=prefs)
    assert ids(results) == expected
    assert len({r.image_id for r in results}) == len(results) <= k


def test_k_limits_what_each_index_contributes():
    # Only the first k of each list count as "returned by the index" (step 1).
    prefs = Preferences(k=3, intersection_first=True, preferred_index="semantic", split=50)
    results = merge(semantic=SEMANTIC, content=CONTENT, preferences=prefs)
    assert ids(results) == [(1, "semantic"), (2, "semantic"), (9, "content")]  # no overlap within the top 3


def test_results_carry_both_similarities_when_known():
    results = merge(semantic=SEMANTIC, content=CONTENT, preferences=Preferences(k=6))
    both = [r for r in results if r.retrieved_by == "both"]
    assert (both[0].semantic_similarity, both[0].content_similarity) == (.96, .86)
    semantic_only = next(r for r in results if r.retrieved_by == "semantic")
    assert semantic_only.content_similarity is None  # filled in from stored vectors by the search service


@pytest.mark.parametrize("intersection", [True, False])
@pytest.mark.parametrize("preferred", ["semantic", "content"])
def test_empty_collection(intersection, preferred):
    prefs = Preferences(k=10, intersection_first=intersection, preferred_index=preferred)
    assert merge(semantic=[], content=[], preferences=prefs) == []


def test_text_query_has_only_the_semantic_part():
    prefs = Preferences(k=4, split=50)
    assert ids(merge(semantic=SEMANTIC, content=[], preferences=prefs)) == [(1, "semantic"), (2, "semantic")]


def test_ties_keep_each_index_order():
    semantic = [Candidate(i, 0.5) for i in (3, 1, 2)]
    content = [Candidate(i, 0.5) for i in (2, 3, 1)]
    results = merge(semantic=semantic, content=content, preferences=Preferences(k=3))
    assert ids(results) == [(3, "both"), (1, "both"), (2, "both")]  # preferred (semantic) order


def test_split_rounds_like_the_original_python_round():
    # 5 places at 50 %: round(2.5) is 2 (halves go to the even number), so 2 preferred, 3 other.
    prefs = Preferences(k=5, intersection_first=False, split=50)
    assert [r.retrieved_by for r in merge(semantic=SEMANTIC, content=CONTENT, preferences=prefs)] == \
        ["semantic"] * 2 + ["content"] * 3
    # 3 places: round(1.5) is 2.
    prefs = Preferences(k=3, intersection_first=False, split=50)
    assert [r.retrieved_by for r in merge(semantic=SEMANTIC, content=CONTENT, preferences=prefs)] == \
        ["semantic"] * 2 + ["content"]


@pytest.mark.parametrize("k, split, preferred_places", [(45, 70, 31), (75, 14, 11), (90, 35, 31), (110, 55, 61)])
def test_a_half_that_is_not_exact_in_floats_rounds_by_its_float_value_as_the_original(k, split, preferred_places):
    # The original's round(k * k_split): 45 * 0.7 is 31.499999999999996, so 31 (an exact 31.5 would give 32).
    semantic = [Candidate(1000 + i, 0.5) for i in range(k)]
    content = [Candidate(2000 + i, 0.5) for i in range(k)]
    results = merge(semantic=semantic, content=content, preferences=Preferences(k=k, intersection_first=False,
                                                                                 split=split))
    assert sum(r.retrieved_by == "semantic" for r in results) == preferred_places == round(k * (split / 100))


@pytest.mark.parametrize("overlap, preferred_places", [(1, 24), (2, 24), (3, 24), (5, 22), (49, 0), (0, 25)])
def test_default_preferences_give_the_preferred_index_round_half_even_of_the_rest(overlap, preferred_places):
    # k 50, split 50: with 1 image in both, 49 places are left and round(24.5) = 24 (not 25).
    semantic = [Candidate(i, 1 - i / 1000) for i in range(overlap)] + \
        [Candidate(1000 + i, 0.5) for i in range(60)]
    content = [Candidate(i, 1 - i / 1000) for i in range(overlap)] + \
        [Candidate(2000 + i, 0.5) for i in range(60)]
    results = merge(semantic=semantic[:50], content=content[:50], preferences=Preferences())
    counts = {name: sum(r.retrieved_by == name for r in results) for name in ("both", "semantic", "content")}
    assert counts == {"both": overlap, "semantic": preferred_places, "content": 50 - overlap - preferred_places}


def test_images_found_by_both_come_first_in_the_preferred_order_then_the_quota():
    semantic = [Candidate(i, 1 - i / 10) for i in (4, 5, 6)]
    content = [Candidate(i, 1 - i / 10) for i in (6, 5, 4)]
    prefs = Preferences(k=2, intersection_first=True, preferred_index="semantic", split=50)
    # One place left after the image in both: round(0.5) = 0 for the preferred index, so content's first.
    assert ids(merge(semantic=semantic, content=content, preferences=prefs)) == [(5, "both"), (6, "content")]
