"""Writes to the gallery. Every way an image enters the product ends in `image_add`."""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction

from gallery import events, selectors
from gallery.errors import Refused
from gallery.imaging import (BLANK_CONTROLS, FORMAT_SUFFIXES, SHOWN_BY_BROWSERS, ImageRejected, header_facts,
                             image_check, read_file_in, shown_as_stored)
from gallery.models import Image, ProcessingStatus, image_upload_path
from gallery.storage import STORAGE_ERRORS, storage_failure_noted, storage_failure_reason, stored_write_once
from gallery.storage_check import deleted_images_files_remove, storage_settings_named, stored_files_lock
from gallery.thumbnails import thumbnail_names

if TYPE_CHECKING:
    from django.contrib.auth.models import User as UserModel  # what AUTH_USER_MODEL names

logger = logging.getLogger(__name__)


User = AbstractBaseUser | AnonymousUser
Progress = Callable[[int], object]  # called with a count of items just finished (a tqdm bar's update)


def images_schedule(image_ids: Sequence[int]) -> None:
    """After commit: tell the layer above that these images wait for processing."""
    ids = list(image_ids)
    transaction.on_commit(lambda: events.images_added.send(sender=Image, image_ids=ids))


@dataclass(frozen=True)
class ImageAddResult:
    image: Image
    created: bool  # False: the same bytes were already stored; `image` is the existing one


class StorageFailed(Refused):
    """A file could not be stored: the storage fails for every file alike (HTTP 503: not the
    caller's mistake, and worth trying again once an administrator has fixed it)."""

    status_code = 503


def image_shown_as_stored(image: Image) -> bool:
    """Whether a page can show the stored file itself (else the WebP rendition the masks are of). An
    image added before its orientation was recorded has it read from the file's header once."""
    if image.format not in SHOWN_BY_BROWSERS:
        return False
    if image.orientation is None:
        try:
            with image.file.open("rb") as stream:
                _, orientation = header_facts(stream)
        except STORAGE_ERRORS:  # the file view says what is wrong with it
            return True
        image.orientation = orientation
        Image.objects.filter(pk=image.pk).update(orientation=orientation)
    return shown_as_stored(image.format, image.orientation)


def image_add(*, data: bytes, original_name: str, user: User | None = None, enqueue: bool = True) -> ImageAddResult:
    """Validate, store once (by SHA-256) and schedule embedding + segmentation after commit.

    Raises ImageRejected (nothing written) for input that is not an acceptable image.
    """
    decoded = image_check(data)  # before anything is written
    digest = hashlib.sha256(data).hexdigest()
    with transaction.atomic():
        # Locked: an image being deleted (image_delete, a reset) is waited for, then not found, and the
        # picture is added anew; unlocked, the deleted image was the answer ("already in the gallery").
        existing = Image.objects.select_for_update().filter(sha256=digest).first()
        if existing is not None:
            _stored_file_restore(existing, data)
            return ImageAddResult(image=existing, created=False)

    image = Image(sha256=digest, original_name=stored_name(original_name), width=decoded.width, height=decoded.height,
                  format=decoded.format, orientation=decoded.orientation, byte_size=len(data),
                  # An authenticated user is an instance of the user model the foreign key points to.
                  added_by=cast("UserModel", user) if getattr(user, "is_authenticated", False) else None)
    extension = FORMAT_SUFFIXES[decoded.format][0]
    name = image_upload_path(image, f"{digest}.{extension}")
    reused = False  # a file of these bytes already stored, which a failure here must leave alone
    try:
        with transaction.atomic():
            # The file is written first, then the row; any failure removes the file again, so
            # there is never a row without a file nor a file without a row.
            try:
                # A file of these bytes that no row names (left by a restore, or an add killed before its
                # commit) is taken as it is: saved again, it became a second copy (<sha256>_x7Yz.jpg). A deleted
                # image's file is removed after its delete commits: locked, so that removal is over, or sees
                # this row and leaves the file.
                stored_files_lock([digest])
                reused = image.file.storage.exists(name)
                if reused:
                    image.file.name = name
                else:
                    image.file.save(f"{digest}.{extension}", ContentFile(data), save=False)
            except STORAGE_ERRORS as exc:  # the storage, not this file: every other file would fail alike
                storage_failure_noted(exc)
                raise StorageFailed(f"Storing the file failed: {storage_failure_reason(exc)}. The file was not kept; "
                                    "the media storage must be reachable and writable: "
                                    f"{storage_settings_named()}.") from exc
            image.save()
            if enqueue:
                images_schedule([image.pk])
    except IntegrityError:
        if not reused:  # a reused file may be the one the concurrent add that won refers to
            _delete_file(image)
        existing = Image.objects.filter(sha256=digest).first()
        if existing is None:
            raise
        return ImageAddResult(image=existing, created=False)  # a concurrent add of the same bytes won
    except BaseException:
        if not reused:
            _delete_file(image)
        raise
    if reused:  # the add that wrote it may have failed and removed it meanwhile: stored again if so
        _stored_file_restore(image, data)
    return ImageAddResult(image=image, created=True)


def _stored_file_restore(image: Image, data: bytes) -> None:
    """The same bytes again for an image whose stored file is gone (removed by hand, a disk restored
    without it): stored again under its name, and the stages that failed without it are queued again."""
    name = image.file.name
    if not name:
        return
    try:
        if image.file.storage.exists(name):
            return
        stored_write_once(name, data)
    except STORAGE_ERRORS as exc:
        storage_failure_noted(exc)
        raise StorageFailed(f"Storing the file again failed: {storage_failure_reason(exc)}.") from exc
    logger.warning("image %s: its stored file %s was missing; stored again from the same bytes", image.pk, name)
    images_retry_failed(ids=[image.pk])
    image.refresh_from_db()


def readable_name(text: str) -> str:
    """A file name as text that can be shown and stored: bytes of a name that are not UTF-8 (kept by
    Python as lone surrogates, which PostgreSQL and JSON refuse) become U+FFFD."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a file name's bytes
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def path_text(text: str) -> str:
    """A path of a folder's file as a report shows it (a command's output, the reset page, the log): readable,
    each control character written out (\\n, \\x1b), so that no name breaks a line or sends a terminal escape."""
    return "".join(repr(char)[1:-1] if unicodedata.category(char) == "Cc" else char for char in readable_name(text))


# Bidirectional controls (U+202E RIGHT-TO-LEFT OVERRIDE, ...): in a name they reversed it and the text
# after it on every page ("gnp.exe.png"). Django's multipart parser drops them from uploads' names.
_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
# Control characters: a folder's file named "a\nERROR forged.png" or "\x1b[2J.png" wrote a line of its own, or
# a terminal's escape, into logs and command output. Line breaks and tabs become spaces (as a browser's upload
# of such a name has them), the rest go (as Django's multipart parser drops them).
_CONTROLS: dict[int, str | None] = {code: (" " if chr(code) in BLANK_CONTROLS else None)
                                    for code in [*range(0x20), *range(0x7F, 0xA0)]}


def stored_name(original_name: str) -> str:
    """The name an image is stored and shown under, one for one file whichever way it came: readable,
    composed (NFC: macOS writes é as e + a combining accent, which a search for é missed), without
    bidirectional or other control characters, at most 255 characters; "upload" when nothing of it would show."""
    name = without_controls(unicodedata.normalize("NFC", readable_name(Path(original_name or "upload").name)))
    return name[:255] if shows_anything(name) else "upload"


def without_controls(text: str) -> str:
    """Text to show (a name, a search's words): without bidirectional controls, line breaks and tabs as spaces,
    other control characters gone."""
    return text.translate(_BIDI_CONTROLS).translate(_CONTROLS)


def shows_anything(text: str) -> bool:
    """Whether text has a character that shows: not only spaces and invisible format characters (U+FEFF...)."""
    return any(not char.isspace() and unicodedata.category(char) != "Cf" for char in text)


def _delete_file(image: Image) -> None:
    if image.file and image.file.name:
        try:
            image.file.storage.delete(image.file.name)
        except STORAGE_ERRORS:  # the storage failing is what is being reported: this must not hide it
            logger.warning("could not remove %s after a failed add", image.file.name, exc_info=True)


def image_delete(*, image: Image) -> bool:
    """Remove the image, its masks, vectors, file and thumbnails; searches forget it at once. False when
    it was deleted meanwhile (by another request: this one deleted nothing)."""
    image_id = image.pk
    names = ([image.file.name] if image.file.name else []) + thumbnail_names(image=image)  # typed optional
    with transaction.atomic():
        # Locked first: a worker writing its masks or vectors holds this row (pipeline._write), and a
        # delete that listed them before that write committed would fail on the new rows' foreign keys.
        if not Image.objects.select_for_update().filter(pk=image_id).exists():
            return False  # deleted meanwhile
        image.delete()
        events.images_deleted.send(sender=Image, image_ids=[image_id])
        selectors.labels_changed()  # in the same transaction: the label counts follow the delete
        # After commit the image is deleted whatever happens to its files.
        transaction.on_commit(lambda: deleted_images_files_remove([(image.sha256, names)],
                                                                  deleted=f"image {image_id} was deleted"))
    return True


def images_retry_failed(*, ids: Sequence[int] | None = None, enqueue: bool = True) -> list[int]:
    """Put every image (of `ids`, if given) whose vectors or masks failed back to pending, only the
    failed stage(s) (e.g. after the missing weights were fetched); enqueue=False leaves them for this
    process (`images_process_here`). Returns their ids."""
    failed = Image.objects.select_for_update().filter(selectors.FAILED)
    if ids is not None:
        failed = failed.filter(pk__in=list(ids))
    with transaction.atomic():
        retried = list(failed.values_list("pk", flat=True))
        Image.objects.filter(pk__in=retried, status=ProcessingStatus.FAILED).update(status=ProcessingStatus.PENDING,
                                                                                    error="")
        Image.objects.filter(pk__in=retried, masks_status=ProcessingStatus.FAILED).update(
            masks_status=ProcessingStatus.PENDING, masks_error="")
        if enqueue and retried:
            images_schedule(retried)
    return retried


def image_retry(*, image: Image) -> Image:
    """Put a failed image (embedding or masks) back in the queue; returns it as it is now."""
    images_retry_failed(ids=[image.pk])
    # As it is now, whoever retried it (another caller may have, meanwhile); as it was, if deleted meanwhile.
    return Image.objects.filter(pk=image.pk).first() or image


@dataclass
class ImportReport:
    added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    added_ids: list[int] = field(default_factory=list)
    folders_not_read: list[str] = field(default_factory=list)  # the root's sub-folders, when not recursive


class ImportStopped(StorageFailed):
    """The storage failed part-way through a folder: `report` holds what was done before it."""

    def __init__(self, message: str, *, report: ImportReport) -> None:
        super().__init__(message)
        self.report = report


def subfolders_not_read(root: Path, *, recursive: bool) -> list[str]:
    """The sub-folders of `root` (names, sorted) that an import without recursion leaves (none with it):
    said, never skipped in silence. Symbolic links are not among them: they are refused as such."""
    if recursive:
        return []
    return sorted(path_text(entry.name) for entry in root.iterdir() if entry.is_dir() and not entry.is_symlink())


def names_shortened(names: list[str], *, shown: int = 10) -> str:
    """The first `shown` names, and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def folder_files(*, root: Path, recursive: bool) -> tuple[list[Path], list[tuple[str, str]]]:
    """Regular files under `root` (sorted); symlinks and anything resolving outside root are refused,
    and so is a sub-folder this process cannot read (named once, with the reason). OSError when root
    itself cannot be read."""
    root = root.resolve()
    files: list[Path] = []
    refused: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            found, found_refused, below = _folder_entries(folder, root)
        except OSError as exc:  # no listing (no read permission) or no look inside (no execute permission)
            if folder == root:
                raise
            refused.append((path_text(str(folder.relative_to(root))),
                            f"could not read the folder: {exc.strerror or exc}"))
            continue
        files += found
        refused += found_refused
        if recursive:
            stack += below
    return sorted(files), refused


def _folder_entries(folder: Path, root: Path) -> tuple[list[Path], list[tuple[str, str]], list[Path]]:
    """(files, refused entries, sub-folders) of one folder; OSError, and nothing, when it cannot be read."""
    files: list[Path] = []
    refused: list[tuple[str, str]] = []
    below: list[Path] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        relative = path_text(str(entry.relative_to(root)))
        if entry.is_symlink():
            refused.append((relative, "symbolic link: not followed"))
        elif entry.is_dir():
            below.append(entry)
        elif entry.is_file():
            if entry.resolve().is_relative_to(root):
                files.append(entry)
            else:
                refused.append((relative, "outside the folder"))
        else:
            refused.append((relative, "not a regular file"))
    return files, refused, below


def folder_import(*, root: Path, recursive: bool = False, user: User | None = None, enqueue: bool = True,
                  progress: Progress | None = None) -> ImportReport:
    """Add every image file under `root`; one bad file never stops the rest.

    `progress` is called once per file (a tqdm bar's update, a reset job's counter).
    Raises NotADirectoryError / PermissionError when root itself is unusable.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    files, refused = folder_files(root=root, recursive=recursive)
    resolved_root = root.resolve()
    report = ImportReport(rejected=list(refused),
                          folders_not_read=subfolders_not_read(resolved_root, recursive=recursive))
    for path in files:
        relative = path_text(str(path.relative_to(resolved_root)))
        try:
            data = read_file_in(resolved_root, path)
        except ImageRejected as exc:
            report.rejected.append((relative, exc.message))
        except OSError as exc:
            report.rejected.append((relative, f"could not read the file: {exc.strerror or exc}"))
        else:
            try:
                result = image_add(data=data, original_name=path.name, user=user, enqueue=enqueue)
            except ImageRejected as exc:
                report.rejected.append((relative, exc.message))
            except StorageFailed as exc:  # the storage, not this file: every other would fail too
                raise ImportStopped(f"{relative}: {exc.message} {len(report.added)} files were added before "
                                    "it.", report=report) from exc
            else:
                if result.created:
                    report.added.append(relative)
                    report.added_ids.append(result.image.pk)
                else:
                    report.duplicates.append(relative)
        if progress is not None:
            progress(1)
    return report


def images_process_here(*, progress: Progress | None = None, batch_size: int | None = None) -> None:
    """Process every waiting image in this process (the layer above does the work), then return.
    batch_size: images per model forward pass (None: the configured size)."""
    events.processing_wanted.send(sender=Image, progress=progress, batch_size=batch_size)


@dataclass(frozen=True)
class UploadOutcome:
    """What became of one file of a page's "Add images" form."""

    name: str
    # "added", "exists" (the same bytes were already stored), "refused" (the file's fault), "failed" (the media
    # storage's: the same file may be sent again) or "unsent" (not tried once the storage failed)
    state: str
    message: str = ""  # why it was not added
    image: Image | None = None  # the added or existing image
    storage_failed: bool = False  # the storage failed: every other file would fail alike


def uploads_add(*, files: Sequence[tuple[str, Callable[[], bytes]]], user: User) -> list[UploadOutcome]:
    """Add several uploaded files, each on its own: a refused file (not an image, too large) is reported with
    its reason and the rest go on; once the storage fails, the rest are reported as not tried (each would wait
    for the storage's timeout, holding a web thread). files: (name, read its bytes)."""
    outcomes = []
    storage_failed: StorageFailed | None = None
    for name, read in files:
        shown = stored_name(name)  # the name the image gets
        if storage_failed is not None:  # every other file would fail alike, each after the storage's timeout
            outcomes.append(UploadOutcome(name=shown, state="unsent", message="Not tried: storing the file before "
                                          f"it failed ({storage_failed.message})"))
            continue
        try:
            result = image_add(data=read(), original_name=name, user=user)
        except StorageFailed as exc:  # not the file's fault: it is offered again
            logger.warning("adding %s: the media storage failed: %s", shown, exc.message)
            storage_failed = exc
            outcomes.append(UploadOutcome(name=shown, state="failed", message=exc.message, storage_failed=True))
        except Refused as exc:
            outcomes.append(UploadOutcome(name=shown, state="refused", message=exc.message))
        else:
            outcomes.append(UploadOutcome(name=shown, state="added" if result.created else "exists",
                                          image=result.image))
    return outcomes
