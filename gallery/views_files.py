"""Image files and thumbnails, served through Django so gallery privacy applies to them too."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import IO, Any

from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.utils.cache import get_conditional_response
from django.views.decorators.http import require_safe
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from gallery.access import access_image
from gallery.api_auth import ApiTokenAuthentication
from gallery.imaging import FORMAT_MEDIA_TYPES, ImageRejected, download_name
from gallery.storage_check import storage_root_check
from gallery.thumbnails import THUMBNAIL_SIZES, thumbnail_bytes

logger = logging.getLogger(__name__)


def api_token_accepted(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """The REST API hands out these files' URLs: a client that authenticates there with its token may
    read them with the same header (a page's session works as before). As on the API, a token wins over a
    session cookie: a wrong one is a 401 here too (a session beside it made these files answer 200)."""
    @wraps(view)
    def with_token(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            authenticated = ApiTokenAuthentication().authenticate(Request(request))  # None without the header
        except AuthenticationFailed as exc:
            refused = HttpResponse(str(exc.detail), status=401, content_type="text/plain")
            refused["WWW-Authenticate"] = ApiTokenAuthentication.keyword  # what the API's 401s say
            return refused  # HTTP asks every 401 to say how to authenticate, as the API's do
        if authenticated is not None:
            request.user = authenticated[0]
        return view(request, *args, **kwargs)
    return with_token


ORIGINAL_CACHING = "private, no-cache"  # kept by the browser only, and checked with the service before each use


@require_safe
@api_token_accepted
def image_file(request: HttpRequest, image_id: int) -> HttpResponseBase:
    """The original, with its SHA-256 as ETag: a browser asks again each time (the image may have been deleted
    or its access changed) and gets a 304 without the file while it holds these bytes."""
    image = access_image(user=request.user, image_id=image_id)
    etag = f'"{image.sha256}"'
    unchanged = get_conditional_response(request, etag=etag)
    if unchanged is not None:
        unchanged["ETag"], unchanged["Cache-Control"] = etag, ORIGINAL_CACHING
        return unchanged
    try:
        stream = image.file.open("rb")
    except FileNotFoundError as exc:
        storage_root_check()  # a bucket that is not there: the storage's fault (503), not the file's
        raise Http404("The stored file is missing") from exc
    response = uploaded_image_response(stream, name=image.original_name, image_format=image.format)
    response["ETag"], response["Cache-Control"] = etag, ORIGINAL_CACHING
    return response



def uploaded_image_response(stream: IO[bytes], *, name: str, image_format: str) -> FileResponse:
    """Uploaded bytes served as the image type they decoded as, under a name of that type (never what the
    uploader's name says), and never run as a page, even by a browser that ignores the type (nosniff is
    on too)."""
    response = FileResponse(stream, filename=download_name(name, image_format),
                            content_type=FORMAT_MEDIA_TYPES.get(image_format, "application/octet-stream"))
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    return response


@require_safe
@api_token_accepted
def image_thumbnail(request: HttpRequest, image_id: int, size: int = 256) -> HttpResponse:
    image = access_image(user=request.user, image_id=image_id)
    if size not in THUMBNAIL_SIZES:
        raise Http404("Unknown thumbnail size")
    try:
        response = HttpResponse(thumbnail_bytes(image=image, size=size), content_type="image/webp")
    except FileNotFoundError as exc:
        storage_root_check()
        raise Http404("The stored file is missing") from exc
    except ImageRejected as exc:  # decoded when it was added: changed on the storage since (a disk, a hand)
        logger.warning("image %s: its stored file %s no longer decodes: %s", image.pk, image.file.name, exc.message)
        raise Http404("The stored file can no longer be read as a picture") from exc
    response["Cache-Control"] = "private, max-age=86400"
    return response


@require_safe
@api_token_accepted
def mask_png(request: HttpRequest, image_id: int, mask_id: int) -> HttpResponse:
    """The soft mask as stored: an 8-bit grayscale PNG of per-pixel probability."""
    image = access_image(user=request.user, image_id=image_id)
    mask = image.masks.filter(pk=mask_id).only("probability_png").first()
    if mask is None:
        raise Http404("No such mask")
    return HttpResponse(bytes(mask.probability_png), content_type="image/png")
