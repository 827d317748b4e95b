"""The original app's merge policy, as a pure function over two ranked candidate lists.

1. Each index returned its k nearest images (nearest first) with a similarity.
2. With intersection on, images returned by both come first, ordered by the preferred index's
   similarity, labelled `both`.
3. Of the remaining k − |both| places, the preferred index gets round((k − |both|) · split / 100),
   the other index the rest, each in its own order, preferred index first.
With intersection off, step 2 is skipped. No image appears twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

Index = Literal["semantic", "content"]
RetrievedBy = Literal["both", "semantic", "content"]


@dataclass(frozen=True)
class Candidate:
    image_id: int
    similarity: float


@dataclass(frozen=True)
class MergedResult:
    image_id: int
    retrieved_by: RetrievedBy
    semantic_similarity: float | None  # None when that index did not return it (filled in later)
    content_similarity: float | None


@dataclass(frozen=True)
class Preferences:
    k: int = 50
    intersection_first: bool = True
    preferred_index: Index = "semantic"
    split: int = 50  # percent of the remaining places for the preferred index


def round_half_up(value: float) -> int:
    """round() as people mean it (Python's round() sends 2.5 to 2)."""
    return int(Decimal(str(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def merge(*, semantic: Sequence[Candidate], content: Sequence[Candidate], preferences: Preferences) -> list[MergedResult]:
    """Merge the two ranked lists into at most k results, by the policy above."""
    k = preferences.k
    preferred_name: Index = preferences.preferred_index
    other_name: Index = "content" if preferred_name == "semantic" else "semantic"
    lists = {"semantic": list(semantic[:k]), "content": list(content[:k])}
    similarity = {name: {c.image_id: c.similarity for c in found} for name, found in lists.items()}

    def result(image_id: int, retrieved_by: RetrievedBy) -> MergedResult:
        return MergedResult(image_id=image_id, retrieved_by=retrieved_by,
                            semantic_similarity=similarity["semantic"].get(image_id),
                            content_similarity=similarity["content"].get(image_id))

    results: list[MergedResult] = []
    taken: set[int] = set()
    if preferences.intersection_first:
        in_both = [c for c in lists[preferred_name] if c.image_id in similarity[other_name]]
        # The preferred list is already in its similarity order (nearest first; stable for ties).
        for candidate in in_both[:k]:
            results.append(result(candidate.image_id, "both"))
            taken.add(candidate.image_id)

    remaining = k - len(results)
    preferred_quota = round_half_up(remaining * preferences.split / 100)
    other_quota = remaining - preferred_quota

    def take(name: Index, quota: int) -> list[MergedResult]:
        picked = []
        for candidate in lists[name]:
            if len(picked) >= quota:
                break
            if candidate.image_id not in taken:
                taken.add(candidate.image_id)
                picked.append(result(candidate.image_id, name))
        return picked

    preferred_part = take(preferred_name, preferred_quota)
    other_part = take(other_name, other_quota)
    return results + preferred_part + other_part
