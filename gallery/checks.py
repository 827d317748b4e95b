"""Django system checks of the gallery's settings: a folder setting that names no folder is said by every
command before it starts (it showed only when an import was refused, naming a file as an allowed folder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from gallery.folders import import_roots


@register()
def import_roots_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A warning, not an error: a root may be a mount that comes up after the service."""
    found: list[CheckMessage] = []
    for named, root in zip(settings.IMAGINAITION_IMPORT_ROOTS, import_roots(), strict=True):
        if not root.is_dir():
            what = "a file" if root.exists() else "nothing there"
            found.append(Warning(f"IMAGINAITION_IMPORT_ROOTS names {named}, which is not a folder ({what}): "
                                 "nothing can be imported from it.",
                                 hint="Give folders, separated by ':' (README, Settings).", id="gallery.W001"))
    return found


@register()
def media_root_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The local storage's folder (IMAGINAITION_MEDIA_ROOT): one that cannot be made stopped nothing until a
    page failed on it. Made here when missing, as the first upload would. Not writable is a warning only: the
    gallery can still be read, backed up and checked (storage_check) from a read-only mount."""
    if settings.STORAGES["default"]["BACKEND"] != "gallery.storage.AtomicFileSystemStorage":
        return []  # another storage (S3) is checked by storage_check, which reaches it
    folder = Path(settings.MEDIA_ROOT)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a file, not a folder" if folder.is_file() else (exc.strerror or str(exc))
        return [Error(f"IMAGINAITION_MEDIA_ROOT={folder} cannot be used as a folder: {reason}",
                      hint="The folder the images are stored in (README, Configuration).", id="gallery.E001")]
    if not os.access(folder, os.W_OK | os.X_OK):
        return [Warning(f"IMAGINAITION_MEDIA_ROOT={folder} cannot be written by this user: images can be read "
                        "but not added (uploads, imports and resets fail).", id="gallery.W002")]
    return []
