"""The two embedding spaces: the one name for them everywhere (vectors, indexes, policy, preferences)."""

from __future__ import annotations

from typing import Literal

from django.db import models


class Space(models.TextChoices):
    """semantic: what a picture shows (text searches it too); content: how it looks."""

    SEMANTIC = "semantic", "Semantic (meaning)"
    CONTENT = "content", "Content (look)"

    @property
    def other(self) -> Space:
        return Space.CONTENT if self is Space.SEMANTIC else Space.SEMANTIC


# Whose vectors an index holds: whole images, or mask regions (search by region). Each has its own
# table; its FAISS labels are that table's owner ids (image ids, mask ids).
VectorOwner = Literal["image", "region"]
VECTOR_OWNERS: tuple[VectorOwner, ...] = ("image", "region")
VECTOR_TABLES: dict[str, tuple[str, str]] = {
    "image": ("gallery_embedding", "image_id"),
    "region": ("retrieval_regionembedding", "mask_id"),
}
