"""Django system checks of the gallery's settings: a folder setting that names no folder is said by every
command before it starts (it showed only when an import was refused, naming a file as an allowed folder)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning, register

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
