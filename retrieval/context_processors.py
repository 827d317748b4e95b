"""Template context of every page: the status banner (with the media storage's last failure, if recent), the
user's mask threshold, the smallest region that can be searched with."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from gallery.storage import storage_recent_failure
from retrieval.preferences import preferences_get
from retrieval.status import banner_state


def retrieval_context(request: HttpRequest) -> dict[str, Any]:
    """`banner` (cached; see status.banner_state) and `mask_threshold` (read only if a page shows masks)."""
    if request.path.startswith(("/admin/", "/api/")):
        return {}
    threshold = SimpleLazyObject(
        lambda: preferences_get(user=request.user, session=request.session)["mask_threshold"])
    return {"banner": banner_state(), "mask_threshold": threshold, "storage_trouble": storage_recent_failure(),
            "region_min_area": settings.IMAGINAITION_REGION_MIN_AREA}
