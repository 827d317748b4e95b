"""Writes to the gallery. Every way an image enters the product ends in `image_add`."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Q

from gallery import events
from gallery.imaging import ImageRejected, decode_image
from gallery.models import Image, ProcessingStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageAddResult:
    image: Image
    created: bool  # False: the same bytes were already stored; `image` is the existing one


def image_add(*, data: bytes, original_name: str, user=None, enqueue: bool = True) -> ImageAddResult:
    """Validate, store once (by SHA-256) and schedule embedding + segmentation after commit.

    Raises ImageRejected (nothing written) for input that is not an acceptable image.
    """
    decoded = decode_image(data)  # before anything is written
    digest = hashlib.sha256(data).hexdigest()
    existing = Image.objects.filter(sha256=digest).first()
    if existing is not None:
        return ImageAddResult(image=existing, created=False)

    name = Path(original_name or "upload").name[:255] or "upload"
    image = Image(sha256=digest, original_name=name, width=decoded.width, height=decoded.height,
                  format=decoded.format, byte_size=len(data),
                  added_by=user if getattr(user, "is_authenticated", False) else None)
    extension = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif"}.get(decoded.format, decoded.format.lower())
    try:
        with transaction.atomic():
            # The file is written first, then the row; any failure removes the file again, so
            # there is never a row without a file nor a file without a row.
            image.file.save(f"{digest}.{extension}", ContentFile(data), save=False)
            image.save()
            if enqueue:
                transaction.on_commit(lambda: events.schedule_processing([image.pk]))
    except IntegrityError:
        _delete_file(image)
        existing = Image.objects.filter(sha256=digest).first()
        if existing is None:
            raise
        return ImageAddResult(image=existing, created=False)  # a concurrent add of the same bytes won
    except BaseException:
        _delete_file(image)
        raise
    return ImageAddResult(image=image, created=True)


def _delete_file(image: Image) -> None:
    if image.file and image.file.name:
        image.file.storage.delete(image.file.name)


def image_delete(*, image: Image) -> None:
    """Remove the image, its masks, embeddings, file and thumbnails; indexes forget it at once."""
    from gallery.thumbnails import thumbnail_files

    image_id, file_name, storage = image.pk, image.file.name, image.file.storage
    thumbs = thumbnail_files(image=image)
    with transaction.atomic():
        image.delete()
        events.images_deleted.send(sender=Image, image_ids=[image_id])

        def remove_files() -> None:
            storage.delete(file_name)
            for thumb in thumbs:
                thumb.unlink(missing_ok=True)

        transaction.on_commit(remove_files)


def image_retry(*, image: Image) -> Image:
    """Put a failed image (embedding or masks) back in the queue."""
    changed = []
    if image.status == ProcessingStatus.FAILED:
        image.status, image.error = ProcessingStatus.PENDING, ""
        changed += ["status", "error"]
    if image.masks_status == ProcessingStatus.FAILED:
        image.masks_status, image.masks_error = ProcessingStatus.PENDING, ""
        changed += ["masks_status", "masks_error"]
    if changed:
        image.save(update_fields=changed)
        transaction.on_commit(lambda: events.schedule_processing([image.pk]))
    return image


def images_pending_ids() -> list[int]:
    return list(Image.objects.filter(Q(status=ProcessingStatus.PENDING) | Q(masks_status=ProcessingStatus.PENDING))
                .order_by("id").values_list("id", flat=True))


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    added_ids: list[int] = field(default_factory=list)


def folder_files(*, root: Path, recursive: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    """Regular files under `root` (sorted); symlinks and anything resolving outside root are refused."""
    root = root.resolve()
    files: list[Path] = []
    refused: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            relative = str(entry.relative_to(root))
            if entry.is_symlink():
                refused.append((relative, "symbolic link: not followed"))
            elif entry.is_dir():
                if recursive:
                    stack.append(entry)
            elif entry.is_file():
                if entry.resolve().is_relative_to(root):
                    files.append(entry)
                else:
                    refused.append((relative, "outside the folder"))
            else:
                refused.append((relative, "not a regular file"))
    return sorted(files), refused


def folder_import(*, root: Path, recursive: bool = False, user=None, enqueue: bool = True,
                  progress=None) -> ImportReport:
    """Add every image file under `root`; one bad file never stops the rest.

    `progress` is called once per file (a tqdm bar's update, a reset job's counter).
    Raises NotADirectoryError / PermissionError when root itself is unusable.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    files, refused = folder_files(root=root, recursive=recursive)
    report = ImportReport(rejected=list(refused))
    resolved_root = root.resolve()
    for path in files:
        relative = str(path.relative_to(resolved_root))
        try:
            result = image_add(data=path.read_bytes(), original_name=path.name, user=user, enqueue=enqueue)
        except ImageRejected as exc:
            report.rejected.append((relative, exc.message))
        except OSError as exc:
            report.rejected.append((relative, f"could not read the file: {exc.strerror or exc}"))
        else:
            if result.created:
                report.added.append(relative)
                report.added_ids.append(result.image.pk)
            else:
                report.duplicates.append(relative)
        if progress is not None:
            progress(1)
    return report


def images_reembed_for_active_models(*, enqueue: bool = True) -> list[int]:
    """After a model change: put every image lacking the active models' embeddings back in the queue.

    Vectors of other models stay (each row records its model key), so switching back needs no work.
    """
    from django.db.models import Exists, OuterRef

    from gallery.models import Embedding
    from retrieval.encoders.registry import active_models

    models = active_models()
    has_all = [Exists(Embedding.objects.filter(image=OuterRef("pk"), space=space, model_key=key))
               for space, key in (("semantic", models.semantic), ("content", models.content))]
    missing = (Image.objects.filter(status=ProcessingStatus.READY)
               .exclude(has_all[0] & has_all[1]).values_list("pk", flat=True))
    ids = list(missing)
    if ids:
        with transaction.atomic():
            Image.objects.filter(pk__in=ids).update(status=ProcessingStatus.PENDING, error="")
            if enqueue:
                transaction.on_commit(lambda: events.schedule_processing(ids))
    return ids
