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
