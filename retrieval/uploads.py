"""An uploaded image looked at before (or without) adding it: kept for an hour under MEDIA_ROOT/staging,
keyed in the visitor's session. Its segmentation runs at once so its labels can be browsed, and it
can be searched with (retrieval.search) or added to the gallery (gallery.services.image_add)."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase

from gallery.imaging import decode_image, picture_for_models, probability_to_png
from retrieval.encoders.registry import active_models, get_model

SESSION_KEY = "staged_upload"
MAX_AGE_SECONDS = 3600


class StagedLabel(TypedDict):
    class_index: int
    label: str
    area_fraction: float


@dataclass(frozen=True)
class StagedUpload:
    token: str
    name: str
    path: Path
    labels: list[StagedLabel]
    size: tuple[int, int] = (0, 0)  # as displayed: EXIF orientation applied

    def data(self) -> bytes:
        return self.path.read_bytes()

    def mask_path(self, class_index: int) -> Path:
        return self.path.with_name(f"{self.token}-mask-{int(class_index)}.png")


def _folder() -> Path:
    folder = Path(settings.MEDIA_ROOT) / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def staged_clear_all() -> None:
    """Forget every staged upload (a gallery reset starts from nothing)."""
    shutil.rmtree(Path(settings.MEDIA_ROOT) / "staging", ignore_errors=True)


def _cleanup() -> None:
    limit = time.time() - MAX_AGE_SECONDS
    for path in _folder().iterdir():
        if path.stat().st_mtime < limit:
            path.unlink(missing_ok=True)


def staged_add(*, data: bytes, name: str, session: SessionBase) -> StagedUpload:
    """Validate (ImageRejected for bad input), keep the bytes, segment them. Replaces the previous one."""
    picture = decode_image(data).picture  # the full check every stored image passes
    _cleanup()
    token = secrets.token_hex(12)
    path = _folder() / f"{token}.upload"
    path.write_bytes(data)
    staged = StagedUpload(token=token, name=Path(name).name[:255] or "upload", path=path, labels=[])
    masks = get_model(active_models().segmenter).segment([picture_for_models(data)])[0]  # as the workers see it
    for mask in masks:
        staged.mask_path(mask.class_index).write_bytes(probability_to_png(mask.probability))
    labels = [StagedLabel(class_index=m.class_index, label=m.label, area_fraction=m.area_fraction) for m in masks]
    path.with_suffix(".json").write_text(json.dumps({"name": staged.name, "labels": labels,
                                                     "size": list(picture.size)}))
    session[SESSION_KEY] = token
    return StagedUpload(token=token, name=staged.name, path=path, labels=labels, size=picture.size)


def staged_get(*, session: SessionBase) -> StagedUpload | None:
    token = session.get(SESSION_KEY)
    if not token or not all(c in "0123456789abcdef" for c in token):
        return None
    path = _folder() / f"{token}.upload"
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        return None
    info = json.loads(meta.read_text())
    width, height = info["size"]
    return StagedUpload(token=token, name=info["name"], path=path, labels=info["labels"], size=(width, height))


def staged_clear(*, session: SessionBase) -> None:
    staged = staged_get(session=session)
    if staged is not None:
        for path in staged.path.parent.glob(f"{staged.token}*"):
            path.unlink(missing_ok=True)
    session.pop(SESSION_KEY, None)
