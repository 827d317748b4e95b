"""The original app's merge policy, as a pure function over two ranked candidate lists.

1. Each index returned its k nearest images (nearest first) with a similarity.
2. With intersection on, images returned by both come first, ordered by the preferred index's
   similarity, labelled `both`.
3. Of the remaining k − |both| places, the preferred index gets round((k − |both|) * (split / 100))
   in floats with Python's round(), as the original: a half goes to the even number (24.5 → 24,
   1.5 → 2), and a product just under a half rounds down (45 * 0.7 = 31.499999999999996 → 31);
   the other index gets the rest, each in its own order, preferred index first.
With intersection off, step 2 is skipped: an image both returned takes the place its index's share
gives it, and is still labelled `both` (how it was found). No image appears twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.spaces import Space

BOTH = "both"  # retrieved_by of an image both indexes returned; otherwise the Space that found it alone


@dataclass(frozen=True)
class Candidate:
    image_id: int
    similarity: float


@dataclass(frozen=True)
class MergedResult:
    image_id: int
    retrieved_by: str  # BOTH, or a Space value
    semantic_similarity: float | None  # None when that index did not return it (filled in later)
    content_similarity: float | None


@dataclass(frozen=True)
class Preferences:
    k: int = 50
    intersection_first: bool = True
    preferred_index: Space | str = Space.SEMANTIC  # a Space or its value
    split: int = 50  # percent of the remaining places for the preferred index


def merge(*, semantic: Sequence[Candidate], content: Sequence[Candidate], preferences: Preferences) -> list[MergedResult]:
    """Merge the two ranked lists into at most k results, by the policy above."""
    k = preferences.k
    preferred_name = Space(preferences.preferred_index)
    other_name = preferred_name.other
    lists = {Space.SEMANTIC: list(semantic[:k]), Space.CONTENT: list(content[:k])}
    similarity = {name: {c.image_id: c.similarity for c in found} for name, found in lists.items()}

    def result(image_id: int, retrieved_by: str) -> MergedResult:
        return MergedResult(image_id=image_id, retrieved_by=retrieved_by,
                            semantic_similarity=similarity[Space.SEMANTIC].get(image_id),
                            content_similarity=similarity[Space.CONTENT].get(image_id))

    results: list[MergedResult] = []
    taken: set[int] = set()
    if preferences.intersection_first:
        in_both = [c for c in lists[preferred_name] if c.image_id in similarity[other_name]]
        # The preferred list is already in its similarity order (nearest first; stable for ties).
        for candidate in in_both[:k]:
            results.append(result(candidate.image_id, BOTH))
            taken.add(candidate.image_id)

    remaining = k - len(results)
    # The original's round(k * k_split), k_split being the fraction: same float maths, same rounding.
    preferred_quota = round(remaining * (preferences.split / 100))
    other_quota = remaining - preferred_quota

    def take(name: Space, quota: int) -> list[MergedResult]:
        picked: list[MergedResult] = []
        for candidate in lists[name]:
            if len(picked) >= quota:
                break
            if candidate.image_id not in taken:
                taken.add(candidate.image_id)
                # Placed by this index's share; labelled by how it was found (both, with intersection off).
                found_by_both = candidate.image_id in similarity[name.other]
                picked.append(result(candidate.image_id, BOTH if found_by_both else name.value))
        return picked

    preferred_part = take(preferred_name, preferred_quota)
    other_part = take(other_name, other_quota)
    return results + preferred_part + other_part
