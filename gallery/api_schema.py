"""The API's OpenAPI schema class (its own module: DRF's settings name it, and it must not import the views)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema


class GallerySchema(AutoSchema):
    """drf-spectacular's schema, where an operation a public gallery's visitor may call without credentials
    says so (an empty entry among its security): it knows that only of DRF's own permission classes, so with
    IMAGINAITION_PUBLIC_GALLERY=1 the gallery's reads and search were listed as needing a token or a cookie."""

    def get_auth(self) -> list[dict[str, Any]]:
        auths: list[dict[str, Any]] = super().get_auth()
        opens = [getattr(permission, "anonymous_allowed", None) for permission in self.view.get_permissions()]
        if {} not in auths and opens and all(allowed is not None and allowed(self.method) for allowed in opens):
            auths.append({})
        return auths
