"""The two embedding spaces: the one name for them everywhere (vectors, indexes, policy, preferences)."""

from __future__ import annotations

from django.db import models


class Space(models.TextChoices):
    """semantic: what a picture shows (text searches it too); content: how it looks."""

    SEMANTIC = "semantic", "Semantic (meaning)"
    CONTENT = "content", "Content (look)"

    @property
    def other(self) -> Space:
        return Space.CONTENT if self is Space.SEMANTIC else Space.SEMANTIC
