"""Per-user search preferences (the original app's settings) and retrieval bookkeeping."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class PreferredIndex(models.TextChoices):
    SEMANTIC = "semantic", "Semantic (meaning)"
    CONTENT = "content", "Content (look)"


class SearchPreferences(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="search_preferences")
    mask_threshold = models.PositiveSmallIntegerField(
        default=30, validators=[MaxValueValidator(100)],
        help_text="Percent probability above which a pixel belongs to a mask")
    k = models.PositiveSmallIntegerField(
        default=50, validators=[MinValueValidator(1), MaxValueValidator(500)],
        help_text="Number of results")
    intersection_first = models.BooleanField(
        default=True, help_text="Show images found by both indexes first")
    preferred_index = models.CharField(max_length=16, choices=PreferredIndex.choices,
                                       default=PreferredIndex.SEMANTIC)
    split = models.PositiveSmallIntegerField(
        default=50, validators=[MaxValueValidator(100)],
        help_text="Percent of the remaining places given to the preferred index")

    class Meta:
        verbose_name_plural = "search preferences"

    def __str__(self) -> str:
        return f"Search preferences of {self.user}"


class IndexState(models.Model):
    """The version stamp of the FAISS index of one (space, model): every web process compares its
    loaded version with this row and reloads the file when a newer one was built elsewhere."""

    space = models.CharField(max_length=16)
    model_key = models.CharField(max_length=100)
    version = models.PositiveIntegerField(default=0)
    vector_count = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, blank=True, help_text="flat, ivf or hnsw")
    file_name = models.CharField(max_length=255, blank=True)
    built_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["space", "model_key"], name="index_state_unique")]

    def __str__(self) -> str:
        return f"{self.space} index of {self.model_key} v{self.version}"


class DeletedImage(models.Model):
    """Tombstones: web processes drop these ids from their in-memory indexes without a rebuild."""

    image_id = models.BigIntegerField(db_index=True)
    deleted_at = models.DateTimeField(auto_now_add=True, db_index=True)
