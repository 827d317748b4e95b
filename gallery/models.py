"""Images, their segmentation masks, and the reset jobs that replace the whole gallery.

An image's file is content-addressed (its SHA-256 names it), so the same bytes are never stored
twice. Masks keep the segmenter's per-pixel probability as an 8-bit PNG in the row itself: a
user's threshold is applied later without recomputing, and a mask can never be an orphan file.
The vectors computed from them live in the retrieval app (retrieval.models.Embedding).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ProcessingStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


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
    orientation = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="the stored file's EXIF orientation (1: stored upright); empty: not read yet")
    byte_size = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Embedding (what search needs) and segmentation are separate stages with separate states, each
    # written when it is done, so an image is searchable before its slower segmentation is done.
    status = models.CharField(max_length=16, choices=ProcessingStatus.choices,
                              default=ProcessingStatus.PENDING, db_index=True)
    error = models.TextField(blank=True)
    masks_status = models.CharField(max_length=16, choices=ProcessingStatus.choices,
                                    default=ProcessingStatus.PENDING, db_index=True)
    masks_error = models.TextField(blank=True)
    # Which segmenter the masks are of, also when it found none: a segmenter change then reaches the
    # images the old one found nothing in (their masks would not say it). Blank: not known.
    segmented_by = models.CharField(max_length=100, blank=True)

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


class ResetJob(models.Model):
    """A "reset / initialize from a folder" run, started from Django admin and followed on a progress page."""
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    folder = models.CharField(max_length=1024)
    recursive = models.BooleanField(default=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    phase = models.CharField(max_length=200, blank=True, help_text="what the job is doing now")
    deleted_images = models.PositiveIntegerField(default=0)
    total_files = models.PositiveIntegerField(default=0)
    scanned = models.PositiveIntegerField(default=0)
    imported = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    rejected = models.JSONField(default=list, help_text="[file, reason] pairs")
    embedded = models.PositiveIntegerField(default=0)
    to_process = models.PositiveIntegerField(default=0, help_text="the gallery's images while the reset processes "
                                             "them: the folder's and any added meanwhile")
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # Deleting everything and reading a server folder is more than staff work: its own permission,
        # which superusers (the first administrator) hold; grant it to other staff explicitly.
        permissions = [("reset_gallery", "Can reset / initialize the gallery from a server folder")]

    def __str__(self) -> str:
        return f"Reset from {self.folder} ({self.state})"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_RESET_STATES


# A reset job that is not over: one at a time, and the admin keeps it (ResetJob.active).
ACTIVE_RESET_STATES = (ResetJob.State.QUEUED, ResetJob.State.RUNNING)
