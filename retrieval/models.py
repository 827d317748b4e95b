"""Vectors of the gallery's images, per-user search preferences (the original app's settings), and
the bookkeeping of the FAISS indexes."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Now
from pgvector.django import VectorField

from gallery.models import Image, Mask
from retrieval.spaces import Space


class Embedding(models.Model):
    """One image's vector in one space by one model: vectors of two models never share an index,
    and a model change re-embeds in the background while the old vectors keep answering."""

    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embeddings")
    space = models.CharField(max_length=16, choices=Space.choices)
    model_key = models.CharField(max_length=100)
    # No fixed dimension: models of different sizes coexist. pgvector's HNSW indexes are partial
    # expression indexes per (model, space) with the dimension cast in (retrieval/pgvector_store.py).
    vector = VectorField()
    created_at = models.DateTimeField(db_default=Now())  # the database's clock, as catch-ups read it

    class Meta:
        db_table = "gallery_embedding"  # created by the gallery app before the layers were split
        constraints = [
            models.UniqueConstraint(fields=["image", "space", "model_key"], name="embedding_unique_per_model"),
        ]
        indexes = [
            models.Index(fields=["model_key", "space"], name="embedding_model_space"),
            # Each web process asks every second for the vectors created since its last sync.
            models.Index(fields=["model_key", "space", "created_at"], name="embedding_model_space_created"),
        ]

    def __str__(self) -> str:
        return f"{self.space} {self.model_key} of image #{self.image_id}"


class RegionEmbedding(models.Model):
    """One mask's region (retrieval/regions.py) as a vector in one space by one model: search by
    region. `image` repeats the mask's image so region hits map to images without a join."""

    mask = models.ForeignKey(Mask, on_delete=models.CASCADE, related_name="embeddings")
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="region_embeddings")
    space = models.CharField(max_length=16, choices=Space.choices)
    model_key = models.CharField(max_length=100)
    vector = VectorField()  # undimensioned, with per-model partial HNSW indexes as for images
    created_at = models.DateTimeField(db_default=Now())  # the database's clock, as catch-ups read it

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["mask", "space", "model_key"], name="region_embedding_unique_per_model"),
        ]
        indexes = [
            models.Index(fields=["model_key", "space"], name="region_model_space"),
            models.Index(fields=["model_key", "space", "created_at"], name="region_model_space_created"),
        ]

    def __str__(self) -> str:
        return f"{self.space} {self.model_key} of mask #{self.mask_id}"


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
    preferred_index = models.CharField(max_length=16, choices=Space.choices, default=Space.SEMANTIC)
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

    owner = models.CharField(max_length=8, default="image", help_text="image or region vectors")
    space = models.CharField(max_length=16)
    model_key = models.CharField(max_length=100)
    version = models.PositiveIntegerField(default=0)
    vector_count = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=16, blank=True, help_text="flat, ivf, ivf-sq8, ivf-sq6, ivf-sq4, ivf-pq or hnsw")
    file_name = models.CharField(max_length=255, blank=True)
    built_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True, help_text="the file holds what Postgres held then")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "space", "model_key"], name="index_state_unique_per_owner")]

    def __str__(self) -> str:
        return f"{self.space} index of {self.model_key} v{self.version}"


class DeletedImage(models.Model):
    """Tombstones: web processes drop these ids from their in-memory indexes without a rebuild."""

    image_id = models.BigIntegerField(db_index=True)
    deleted_at = models.DateTimeField(db_default=Now(), db_index=True)  # the database's clock


class DeletedMask(models.Model):
    """Tombstones of masks replaced when their image is segmented again (a segmenter change, a rerun):
    web processes drop their region vectors from their in-memory indexes without a rebuild. (A deleted
    image's masks go with its own tombstone.)"""

    mask_id = models.BigIntegerField(db_index=True)
    deleted_at = models.DateTimeField(db_default=Now(), db_index=True)  # the database's clock


class StagedUploadRecord(models.Model):
    """An upload looked at before (or without) adding it (retrieval/uploads.py): its facts and the state
    of its segmentation live here, so any web or worker host reads them; its bytes are in the file
    storage (staging/<token>.upload)."""

    token = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=255)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    state = models.CharField(max_length=8, default="working", help_text="working, ready or failed")
    error = models.TextField(blank=True)
    labels = models.JSONField(default=list, help_text="[{class_index, label, area_fraction}] once ready")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"staged upload {self.name} ({self.state})"


class StagedUploadMask(models.Model):
    """A staged upload's soft mask of one label, an 8-bit PNG like gallery masks."""

    upload = models.ForeignKey(StagedUploadRecord, on_delete=models.CASCADE, related_name="masks")
    class_index = models.PositiveSmallIntegerField()
    probability_png = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["upload", "class_index"], name="staged_mask_unique_label")]
