"""A "reset / initialize from a folder" run, started from Django admin and followed on a progress page."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ResetJob(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    folder = models.CharField(max_length=1024)
    recursive = models.BooleanField(default=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    phase = models.CharField(max_length=64, blank=True, help_text="what the job is doing now")
    deleted_images = models.PositiveIntegerField(default=0)
    total_files = models.PositiveIntegerField(default=0)
    scanned = models.PositiveIntegerField(default=0)
    imported = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    rejected = models.JSONField(default=list, help_text="[file, reason] pairs")
    embedded = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Reset from {self.folder} ({self.state})"

    @property
    def active(self) -> bool:
        return self.state in (self.State.QUEUED, self.State.RUNNING)
