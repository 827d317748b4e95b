"""Reads of the gallery: one query for each list or page, shared by the web pages and the REST API."""

from __future__ import annotations

from django.db.models import Count, Prefetch, Q, QuerySet

from gallery.models import Image, Mask, ProcessingStatus


def image_list(*, label: str = "") -> QuerySet[Image]:
    """Every image, newest first; with `label`, only images with a mask of that label."""
    images = Image.objects.order_by("-created_at", "-id")
    if label:
        images = images.filter(masks__label=label).distinct()
    return images


def image_recent_ready(*, limit: int = 12) -> QuerySet[Image]:
    """The newest images that can be searched with already."""
    return Image.objects.filter(status=ProcessingStatus.READY).order_by("-created_at", "-id")[:limit]


def image_detail(*, image_id: int) -> Image | None:
    """The image with its masks (without their pixels), or None."""
    masks = Mask.objects.defer("probability_png")
    return Image.objects.prefetch_related(Prefetch("masks", queryset=masks)).filter(pk=image_id).first()


def label_counts() -> list[tuple[str, int]]:
    """Each label any mask has, alphabetically, with how many images have it."""
    rows = (Mask.objects.values("label").annotate(images=Count("image", distinct=True)).order_by("label"))
    return [(row["label"], row["images"]) for row in rows]


def images_pending_count() -> int:
    """Images still waiting for their vectors or their masks (an image waiting for both counts once)."""
    return Image.objects.filter(Q(status=ProcessingStatus.PENDING) | Q(masks_status=ProcessingStatus.PENDING)).count()
