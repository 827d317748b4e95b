"""Reads of the gallery: one query for each list or page, shared by the web pages and the REST API."""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.core.cache import caches
from django.db.models import Count, Max, Prefetch, Q, QuerySet
from django.db.models.functions import Lower
from django.utils import timezone
from django_q.models import OrmQ

from gallery.models import Image, Mask, ProcessingStatus

WAITING = Q(status=ProcessingStatus.PENDING) | Q(masks_status=ProcessingStatus.PENDING)  # vectors or masks to come
FAILED = Q(status=ProcessingStatus.FAILED) | Q(masks_status=ProcessingStatus.FAILED)  # vectors or masks failed


def image_list(*, label: str = "", upto: int | None = None, failed: bool = False) -> QuerySet[Image]:
    """Every image, newest (the highest id) first; with `label` ("cat", or "cat,dog"; any letter case), only
    images with a mask of one of those labels; with `upto`, only those with an id up to it (added before it).
    In id order, as `upto` and the API's links (pages after an id) read it: the hosts' clocks that set
    `created_at` may differ. With `failed`, only images whose processing failed (vectors or masks)."""
    images = Image.objects.order_by("-id")
    if failed:
        images = images.filter(FAILED)
    if upto is not None:
        images = images.filter(pk__lte=upto)
    wanted = label_names(label)
    if wanted:
        images = images.filter(pk__in=Mask.objects.filter(label__in=labels_as_stored(wanted)).values("image_id"))
    return images


def newest_id(images: QuerySet[Image]) -> int | None:
    """The id of the newest of these images (what `upto` pins a list to), None for none."""
    return images.aggregate(newest=Max("pk"))["newest"]


def images_added_since(*, label: str = "", upto: int, failed: bool = False) -> int:
    """How many images of the list (`label` and `failed` as for image_list) were added after the id `upto`."""
    return image_list(label=label, failed=failed).filter(pk__gt=upto).count()


def label_names(text: str) -> list[str]:
    """The labels of a "cat,dog" filter, as typed."""
    return [part.strip() for part in text.split(",") if part.strip()]


def labels_as_stored(labels: Iterable[str]) -> list[str]:
    """Each label as the masks spell it, matched in any letter case ("Dog" finds "dog"), sorted;
    labels no mask has are left out. An exact name is one index lookup; only a miss compares
    case-insensitively, which reads every mask's label."""
    stored: set[str] = set()
    for label in set(labels):
        if Mask.objects.filter(label=label).exists():
            stored.add(label)
        else:
            stored.update(Mask.objects.filter(label__iexact=label).values_list("label", flat=True).distinct())
    return sorted(stored)


def image_recent_ready(*, limit: int = 12) -> QuerySet[Image]:
    """The newest images that can be searched with already."""
    return Image.objects.filter(status=ProcessingStatus.READY).order_by("-created_at", "-id")[:limit]


def image_detail(*, image_id: int) -> Image | None:
    """The image with its masks (without their pixels), or None."""
    masks = Mask.objects.defer("probability_png")
    return Image.objects.prefetch_related(Prefetch("masks", queryset=masks)).filter(pk=image_id).first()


def labels_unknown_message(labels: Iterable[str], stored: Iterable[str]) -> str:
    """"" when every label of a filter is some mask's (`stored`: labels_as_stored of them); otherwise a
    message naming the unknown ones and listing the known (a typo shows at once, not as "no images")."""
    folded = {label.casefold() for label in stored}
    unknown = sorted(label for label in set(labels) if label.casefold() not in folded)
    if not unknown:
        return ""
    known = [label for label, _ in label_counts()]  # only now: a count over all masks
    return (f"Unknown label{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known labels: {', '.join(known) or 'none yet'}.")


# Counting labels reads every mask (1.2 s a page at 1.5M masks, measured): each process keeps the answer a
# while, asked again at once when a mask is added (a new highest id) or images are deleted (labels_changed).
LABEL_COUNTS_SECONDS = 10
_LABELS_VERSION = "imaginaition-labels-version"


def label_counts() -> list[tuple[str, int]]:
    """Each label any mask has, alphabetically in any letter case, with how many images have it."""
    newest = Mask.objects.aggregate(newest=Max("id"))["newest"] or 0  # the primary key's index: one lookup
    key = f"imaginaition-label-counts-{newest}-{caches[settings.SHARED_CACHE].get(_LABELS_VERSION, 0)}"
    counted: list[tuple[str, int]] | None = caches["default"].get(key)
    if counted is None:
        rows = (Mask.objects.values("label").annotate(images=Count("image", distinct=True))
                .order_by(Lower("label"), "label"))
        counted = [(row["label"], row["images"]) for row in rows]
        caches["default"].set(key, counted, LABEL_COUNTS_SECONDS)
    return counted


def labels_changed() -> None:
    """Images (and so masks) were deleted: every process counts the labels again on its next page."""
    shared = caches[settings.SHARED_CACHE]
    try:
        shared.incr(_LABELS_VERSION)
    except ValueError:  # the first change: no version yet (add() before each incr() was a failed INSERT each time
        shared.add(_LABELS_VERSION, 1, timeout=None)  # once there, an ERROR line in the database's log per delete)


def main_queue_untaken() -> QuerySet[OrmQ]:
    """The main queue's tasks no worker has taken (a taken one is locked until its retry time)."""
    return OrmQ.objects.filter(key=settings.Q_CLUSTER["name"], lock__lte=timezone.now())


def images_pending_ids() -> list[int]:
    """Images waiting for their vectors or their masks, oldest first."""
    return list(Image.objects.filter(WAITING).order_by("pk").values_list("pk", flat=True))


def images_failed(*, ids: Iterable[int]) -> list[Image]:
    """Those of `ids` whose vectors or masks failed, with why."""
    return list(Image.objects.filter(FAILED, pk__in=list(ids)).order_by("pk"))


def images_still_there(*, ids: Iterable[int]) -> tuple[int, int]:
    """How many of `ids` still exist, and how many of those still wait for their vectors or masks."""
    counts = Image.objects.filter(pk__in=list(ids)).aggregate(there=Count("pk"), waiting=Count("pk", filter=WAITING))
    return counts["there"], counts["waiting"]


def images_pending_count() -> int:
    """Images still waiting for their vectors or their masks (an image waiting for both counts once)."""
    return Image.objects.filter(WAITING).count()


def images_failed_count() -> int:
    """Images whose vectors or masks failed (an image failed in both counts once)."""
    return Image.objects.filter(FAILED).count()
