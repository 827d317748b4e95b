"""Server-side folders the gallery may read (admin "Reset / initialize", `import_folder`).

Only folders under IMAGINAITION_IMPORT_ROOTS are read: otherwise any staff member could make the
server read whatever it can reach (/etc, other users' homes, the database's own files). A path is
resolved first, so `..` and symbolic links are judged by where they really lead; inside an allowed
folder, `folder_files` (gallery.services) does not follow symbolic links either.
"""

from __future__ import annotations

import contextlib
import os
import unicodedata
from pathlib import Path

from django.conf import settings


class FolderRefused(Exception):
    """A folder the server will not read, with a reason a person can act on."""


def import_roots() -> list[Path]:
    """The allowed folders, resolved (a root that is itself a symbolic link counts as its target)."""
    return [Path(root).expanduser().resolve() for root in settings.IMAGINAITION_IMPORT_ROOTS]


def _roots_text(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots) or "(none configured)"


def _resolved_as_on_disk(path: Path) -> Path:
    """The path resolved, also when the file system spells it otherwise only in how its accents are encoded:
    macOS writes "é" as e + a combining accent (NFD), a keyboard types it whole (NFC), and the two looked
    the same in the message that said the folder does not exist. FileNotFoundError when neither is there."""
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        for form in ("NFC", "NFD"):
            with contextlib.suppress(FileNotFoundError):
                return Path(unicodedata.normalize(form, str(path))).resolve(strict=True)
        raise


def import_folder_check(folder: str | Path, *, require_absolute: bool = True) -> Path:
    """`folder` resolved, when it is a readable folder under one of the import roots; else FolderRefused.

    require_absolute: pages ask for an absolute path (there is no meaningful "current folder" for
    a web request); the command line accepts one relative to where it runs.
    """
    text = str(folder)
    if text != text.strip() and not Path(text).expanduser().exists():
        text = text.strip()  # a pasted path's stray spaces; a folder whose name ends in one is kept whole
    path = Path(text).expanduser()
    if not text or (require_absolute and not path.is_absolute()):
        raise FolderRefused("Give an absolute path of a folder on the server." if require_absolute
                            else "Give the path of a folder.")
    roots = import_roots()

    def refuse_outside(resolved: Path) -> None:
        if not any(resolved.is_relative_to(root) for root in roots):
            shown = f"{path} (which leads to {resolved})" if resolved != path.absolute() else str(path)
            raise FolderRefused(
                f"{shown} is outside the folders this server may import from: {_roots_text(roots)}. "
                "An administrator adds folders with the IMAGINAITION_IMPORT_ROOTS setting.")

    try:
        # Judged before asking whether it exists, so a path outside never tells what is there.
        refuse_outside(path.resolve(strict=False))
        resolved = _resolved_as_on_disk(path)
    except FileNotFoundError:
        raise FolderRefused(f"{path} does not exist.") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic-link loop
        raise FolderRefused(f"{path} cannot be resolved: {exc}") from None
    refuse_outside(resolved)  # a link inside a root that leads out
    if not resolved.is_dir():
        raise FolderRefused(f"{path} is not a folder.")
    try:
        next(resolved.iterdir(), None)
    except PermissionError:
        raise FolderRefused(f"{path} cannot be read by the server.") from None
    if not os.access(resolved, os.R_OK | os.X_OK):  # listed, but its files cannot be reached (no execute bit)
        raise FolderRefused(f"{path} cannot be read by the server (its files cannot be opened).")
    return resolved
