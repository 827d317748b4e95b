"""Stored files against image rows, both ways: files no image refers to (left by a process killed
between writing a file and committing its row, or while writing it: a `.partial-` file), and images
whose file is gone. Through the storage API only, so a shared folder and a bucket are checked alike.

Every write stores the file first and commits the row after it, so a file younger than `min_age` may
belong to a row about to commit: it is never reported, nor deleted."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.utils import timezone

from gallery.models import Image
from gallery.storage import PARTIAL_PREFIX, STORAGE_ERRORS, storage_failure_reason, stored_delete
from gallery.thumbnails import THUMBNAIL_FOLDER, thumbnail_sha256

IMAGE_FOLDER = "images"

logger = logging.getLogger(__name__)


def storage_settings_named() -> str:
    """The settings that say where the media storage is, for the storage configured (to check them)."""
    if settings.STORAGES["default"]["BACKEND"].startswith("storages.backends.s3"):
        return ("IMAGINAITION_S3_ENDPOINT_URL, IMAGINAITION_S3_BUCKET and the credentials (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY, or the instance role) of IMAGINAITION_STORAGE=s3")
    return "IMAGINAITION_MEDIA_ROOT (a folder or shared mount the service's user can read and write)"


STORED_FILE_LOCKS = 0x66696C65  # ("file") the class of pg_advisory_xact_lock(class, key) on a picture's stored file
REMOVAL_BATCH = 200  # deleted images whose files are removed under one transaction's locks


def stored_files_lock(digests: Iterable[str]) -> None:
    """Hold, until the transaction ends, the locks on the stored files of these pictures (by SHA-256, which
    names the file). An add that takes a file of its bytes already stored and the removal of a deleted
    image's files both take it: a removal that had not yet run removed the file that an add of the same
    bytes had just taken (an image without its file)."""
    keys = sorted({int(digest[:8], 16) - 2**31 for digest in digests})  # a signed 32-bit key
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, key) FROM unnest(%s::int[]) AS key",
                       [STORED_FILE_LOCKS, keys])


def deleted_images_files_remove(files_of_images: list[tuple[str, list[str]]], *, deleted: str) -> None:
    """The files of images whose rows are deleted (committed: a failure here leaves files without rows,
    which take space but answer nothing, never rows without files), through the storage API; each
    image is (its SHA-256, its file names). The files of one added again meanwhile (the same bytes) are
    its new image's now: left. A storage that fails (stopped, hung) stops this at its first error, as
    every later call would wait on it alike; the rest is logged and left to `manage.py storage_check --delete`."""
    for start in range(0, len(files_of_images), REMOVAL_BATCH):
        batch = files_of_images[start:start + REMOVAL_BATCH]
        with transaction.atomic():
            stored_files_lock(digest for digest, _ in batch)
            added_again = set(Image.objects.filter(sha256__in=[digest for digest, _ in batch])
                              .values_list("sha256", flat=True))
            for done, (digest, names) in enumerate(batch, start):
                if digest in added_again:
                    continue
                try:
                    stored_delete(names)
                except STORAGE_ERRORS as exc:
                    logger.warning("%s, but the media storage failed removing the files (%s): the files of %d "
                                   "image(s) are left for `manage.py storage_check --delete` (the first's: %s)",
                                   deleted, storage_failure_reason(exc), len(files_of_images) - done, ", ".join(names))
                    return


def stored_file_missing(image: Image) -> bool:
    """Whether the image's stored file is gone (removed outside the service, a backup restored without it):
    its page said "Ready" over a broken picture. False when the storage fails to say (its page shows what it can)."""
    try:
        return not image.file.name or not image.file.storage.exists(image.file.name)
    except STORAGE_ERRORS:
        return False


STORAGE_RETRY_AFTER_SECONDS = 30  # a 503's Retry-After: an outage is not the request's fault, nor over at once


def storage_unreachable_message(exc: BaseException) -> str:
    """Why a request that needed a stored file could not be answered: the media storage failed (a
    stopped or hung endpoint, refused credentials, an unmounted folder), not the request."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # reached, and full
        return (f"The media storage (where the gallery's files are kept) is full: {storage_failure_reason(exc)}. "
                "Try again once an administrator has freed space on it.")
    return (f"The media storage (where the gallery's files are kept) could not be reached: "
            f"{storage_failure_reason(exc)}. Try again once it is reachable; an administrator checks "
            f"{storage_settings_named()}.")


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int


@dataclass(frozen=True)
class StorageReport:
    checked: int  # files under the folders images go in
    orphans: list[StoredFile]  # older than min_age, referred to by no image
    missing: list[int]  # ids of images whose file is gone
    referenced: int = 0  # stored originals (images/) an image refers to
    young: int = 0  # referred to by no image but younger than min_age: not judged (maybe being added)

    @property
    def orphan_bytes(self) -> int:
        return sum(stored.size for stored in self.orphans)

    @property
    def orphaned_originals(self) -> int:
        """Orphans that are pictures (not a half-written file, never one)."""
        return sum(stored.name.startswith(f"{IMAGE_FOLDER}/") and not os.path.basename(stored.name).startswith(
            PARTIAL_PREFIX) for stored in self.orphans)

    @property
    def looks_like_another_database(self) -> bool:
        """More stored originals are referred to by no image than by one (an empty database included): a
        check against the wrong database (a mistyped DATABASE_URL, an empty one after a restore), not
        files left by killed adds, which are a few among many. Deleting them would delete the pictures."""
        return self.orphaned_originals > self.referenced


def storage_check(*, min_age: timedelta = timedelta(hours=1),
                  progress: Callable[[int], object] | None = None) -> StorageReport:
    rows = list(Image.objects.values_list("id", "file", "sha256"))
    files = {name for _, name, _ in rows if name}
    digests = {digest for _, _, digest in rows}
    cutoff = timezone.now() - min_age
    checked, orphans, seen, young = 0, [], set(), 0
    for folder in (IMAGE_FOLDER, THUMBNAIL_FOLDER):
        for name in _stored_names(folder):
            checked += 1
            if progress is not None:
                progress(1)
            if folder == IMAGE_FOLDER and name in files:
                seen.add(name)
                continue
            if folder == THUMBNAIL_FOLDER and thumbnail_sha256(name) in digests:
                continue
            if default_storage.get_modified_time(name) < cutoff:
                orphans.append(StoredFile(name=name, size=default_storage.size(name)))
            else:
                young += 1
    missing = images_file_missing(rows=[(image_id, name) for image_id, name, _ in rows], listed=seen)
    return StorageReport(checked=checked, orphans=orphans, missing=missing, referenced=len(seen), young=young)


def images_file_missing(*, rows: Iterable[tuple[int, str]] | None = None, listed: AbstractSet[str] = frozenset(),
                        ) -> list[int]:
    """Ids of the images (of `rows`, else all) whose stored file is gone; names in `listed` were just
    seen in the storage and need no call of their own (e.g. one stored outside images/ does)."""
    rows = list(Image.objects.values_list("id", "file") if rows is None else rows)
    missing = [image_id for image_id, name in rows if name not in listed and not default_storage.exists(name)]
    if missing:
        storage_root_check()
    elif not rows and getattr(default_storage, "bucket", None) is not None:
        # No file to ask: a misspelt bucket read "ok" on a new, empty gallery. (A local media folder is made
        # by the first upload: not there yet is no fault.)
        storage_root_check()
    return missing


class StorageRootMissing(OSError):
    """The bucket (or media folder) itself is not there: every file reads as missing, which is not the files'
    fault (e.g. IMAGINAITION_S3_BUCKET misspelt). One of gallery.storage.STORAGE_ERRORS."""


def storage_root_check() -> None:
    """Raise StorageRootMissing (or the storage's own error) unless the storage itself is there. Asked when a
    file is missing: "stored file missing" sent an operator to delete good images whose bucket was misnamed."""
    bucket = getattr(default_storage, "bucket", None)
    if bucket is not None:  # django-storages' S3 storage
        from botocore.exceptions import ClientError  # S3 only: a local storage needs no boto

        try:
            bucket.meta.client.head_bucket(Bucket=bucket.name)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "403", "AccessDenied", "Forbidden"):
                what = "does not exist" if code in ("404", "NoSuchBucket") else "cannot be read with these credentials"
                raise StorageRootMissing(f"the bucket {bucket.name!r} {what}") from exc
            raise
        return
    location = getattr(default_storage, "location", None)
    if location is not None and not os.path.isdir(location):
        raise StorageRootMissing(f"the media folder {location} does not exist")


def storage_orphans_delete(report: StorageReport) -> int:
    """Delete the report's orphans that are still orphans (an upload of the same bytes since the check
    would have reused its content-addressed name)."""
    files = set(Image.objects.filter(file__in=[o.name for o in report.orphans]).values_list("file", flat=True))
    digests = set(Image.objects.values_list("sha256", flat=True))
    doomed = [o.name for o in report.orphans
              if o.name not in files and thumbnail_sha256(o.name) not in digests]
    stored_delete(doomed)
    return len(doomed)


def _stored_names(folder: str) -> Iterator[str]:
    """Every file under `folder` of the storage, depth first (listdir: a folder or a bucket prefix)."""
    try:
        directories, names = default_storage.listdir(folder)
    except FileNotFoundError:  # nothing stored there yet
        return
    for name in sorted(names):
        yield f"{folder}/{name}"
    for directory in sorted(directories):
        yield from _stored_names(f"{folder}/{directory}")
