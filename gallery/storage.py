"""Stored files (originals, thumbnails, staged uploads) go through Django's storage API only, so web and
worker hosts share them: a local folder or shared mount (the class below), or an S3-compatible bucket
(django-storages; IMAGINAITION_STORAGE=s3 in settings).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage, default_storage
from django.utils import timezone


def _storage_errors() -> tuple[type[BaseException], ...]:
    """What a failing storage raises: OSError for a folder; botocore's errors for a bucket (a missing
    bucket, refused credentials, an endpoint that does not answer), which are not OSErrors."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # django-storages' S3 backend not installed: folders only
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


STORAGE_ERRORS = _storage_errors()
STORAGE_TROUBLE_SHOWN_SECONDS = 300  # pages say the media storage failed for this long after it last did


@dataclass(frozen=True)
class StorageTrouble:
    at: datetime
    reason: str


_last_failure: tuple[float, StorageTrouble] | None = None


def storage_failure_reason(exc: BaseException) -> str:
    """What a storage error (STORAGE_ERRORS) says, without Python's decoration, nor the full stop botocore's
    messages end with (the sentences it goes into put their own: "records.. Check")."""
    return str(getattr(exc, "strerror", None) or exc or type(exc).__name__).rstrip().rstrip(".")


def storage_failure_noted(exc: BaseException) -> None:
    """Remember, in this process, that the media storage just failed (a read, a write): its pages say so
    for a while, as pictures that do not show and adds that fail said nothing of why."""
    global _last_failure
    _last_failure = (time.monotonic(), StorageTrouble(at=timezone.now(), reason=storage_failure_reason(exc)))


def storage_recent_failure() -> StorageTrouble | None:
    """The media storage's last failure in this process, if it was less than STORAGE_TROUBLE_SHOWN_SECONDS ago."""
    noted = _last_failure
    if noted is None or time.monotonic() - noted[0] > STORAGE_TROUBLE_SHOWN_SECONDS:
        return None
    return noted[1]
PARTIAL_PREFIX = ".partial-"  # a file being written aside, hard-linked into place when whole
FOLDER_RACE_ATTEMPTS = 100  # a save racing deletes that empty its folders makes them again, this often at most


class AtomicFileSystemStorage(FileSystemStorage):
    """FileSystemStorage whose files appear complete or not at all: written aside, then hard-linked
    into place (which fails if the name was taken meanwhile, so a concurrent writer never overwrites;
    a new name is chosen as Django does). On a shared folder, another host never reads half a file."""

    def _folders_make(self, directory: str) -> None:
        """The folder and those above it, up to the storage's own, each made with the folder mode (os.makedirs
        gives the ones above the last the process's default: readable by every local account)."""
        missing = []
        while not os.path.isdir(directory):
            missing.append(directory)
            parent = os.path.dirname(directory)
            if parent == directory:
                break
            directory = parent
        mode = self.directory_permissions_mode or 0o777
        for folder in reversed(missing):
            try:
                os.mkdir(folder, mode)
            except FileExistsError:  # made by a concurrent writer
                pass

    def _save(self, name: str, content: Any) -> str:
        full_path = self.path(name)
        directory = os.path.dirname(full_path)
        for attempt in range(FOLDER_RACE_ATTEMPTS):
            try:
                self._folders_make(directory)
                fd, temporary = tempfile.mkstemp(dir=directory, prefix=PARTIAL_PREFIX)
                break
            except FileNotFoundError:  # a delete removed a folder on the way as it emptied (below): make it again
                if attempt == FOLDER_RACE_ATTEMPTS - 1:
                    raise
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in content.chunks():
                    out.write(chunk if isinstance(chunk, bytes) else chunk.encode())
            while True:
                try:
                    os.link(temporary, full_path)
                    break
                except FileExistsError:
                    name = self.get_available_name(name)
                    full_path = self.path(name)
        finally:
            os.unlink(temporary)
        if self.file_permissions_mode is not None:
            os.chmod(full_path, self.file_permissions_mode)
        return os.path.relpath(full_path, self.location).replace("\\", "/")

    def delete(self, name: str) -> None:
        """Delete the file, then the folders it leaves empty (content-addressed names spread files over
        thousands of folders, which would otherwise stay behind when a gallery is emptied or reset)."""
        super().delete(name)
        root = os.path.realpath(self.location)
        directory = os.path.dirname(os.path.realpath(self.path(name)))
        while directory != root and directory.startswith(root + os.sep):
            try:
                os.rmdir(directory)  # only ever removes an empty folder
            except OSError:  # not empty (or already gone, or shared and busy): the folders above are in use
                break
            directory = os.path.dirname(directory)


def stored_write_once(name: str, data: bytes) -> str:
    """Store `data` under `name` unless a file of that name exists (names derived from content: the
    same name is the same bytes). A concurrent writer's duplicate is removed. Returns the name."""
    if default_storage.exists(name):
        return name
    saved = default_storage.save(name, ContentFile(data))
    if saved != name:  # another process stored it between the check and the save
        default_storage.delete(saved)
    return name


def storage_write_check(folder: str) -> None:
    """Store a small file in `folder` (where the work will write) and delete it: raises one of STORAGE_ERRORS
    when the media storage cannot take a file there now, before work that would otherwise fail halfway (a
    reset empties the gallery, then stores)."""
    name = default_storage.save(f"{folder}/.probe-{uuid.uuid4().hex}", ContentFile(b"probe"))
    default_storage.delete(name)


def stored_read(name: str) -> bytes:
    """The file's bytes; FileNotFoundError when it is gone."""
    with default_storage.open(name, "rb") as handle:
        return handle.read()


def stored_delete(names: list[str]) -> None:
    """Delete these files; missing ones are fine (deleting twice is not an error)."""
    for name in names:
        default_storage.delete(name)
