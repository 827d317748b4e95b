"""Images, their segmentation masks and their embeddings.

An image's file is content-addressed (its SHA-256 names it), so the same bytes are never stored
twice. Masks keep the segmenter's per-pixel probability as an 8-bit PNG in the row itself: a
user's threshold is applied later without recomputing, and a mask can never be an orphan file.
Embeddings record the model that made them, so vectors of two models never share an index.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from pgvector.django import VectorField


class ProcessingStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class Space(models.TextChoices):
    SEMANTIC = "semantic", "Semantic"
    CONTENT = "content", "Content"


def image_upload_path(instance: "Image", filename: str) -> str:
    """images/ab/cd/<sha256>.<ext>: content-addressed, fanned out so no folder grows huge."""
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
    digest = instance.sha256
    return f"images/{digest[:2]}/{digest[2:4]}/{digest}.{ext}"


class Image(models.Model):
    file = models.FileField(upload_to=image_upload_path, max_length=255)
    sha256 = models.CharField(max_length=64, unique=True, editable=False)
    original_name = models.CharField(max_length=255)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=16, help_text="Pillow's name of the decoded format, e.g. JPEG")
    byte_size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Embedding (what search needs) and segmentation are separate tasks with separate states, so
    # an image is searchable before its slower segmentation is done.
    status = models.CharField(max_length=16, choices=ProcessingStatus.choices,
                              default=ProcessingStatus.PENDING, db_index=True)
    error = models.TextField(blank=True)
    masks_status = models.CharField(max_length=16, choices=ProcessingStatus.choices,
                                    default=ProcessingStatus.PENDING, db_index=True)
    masks_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.original_name} (#{self.pk})"


class Mask(models.Model):
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="masks")
    segmenter = models.CharField(max_length=100, help_text="Model key of the segmenter that produced it")
    label = models.CharField(max_length=64, db_index=True)
    class_index = models.IntegerField()
    probability_png = models.BinaryField(help_text="8-bit grayscale PNG: per-pixel probability × 255")
    area_fraction = models.FloatField(help_text="Fraction of pixels with probability ≥ 0.5")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-area_fraction"]
        constraints = [
            models.UniqueConstraint(fields=["image", "segmenter", "class_index"], name="mask_unique_per_class"),
        ]

    def __str__(self) -> str:
        return f"{self.label} on image #{self.image_id}"


class Embedding(models.Model):
    image = models.ForeignKey(Image, on_delete=models.CASCADE, related_name="embeddings")
    space = models.CharField(max_length=16, choices=Space.choices)
    model_key = models.CharField(max_length=100)
    # No fixed dimension: models of different sizes coexist. pgvector's HNSW indexes are partial
    # expression indexes per (model, space) with the dimension cast in (retrieval/pgvector_indexes.py).
    vector = VectorField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
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
from gallery.models_reset import ResetJob  # noqa: E402,F401
