"""The gallery's web pages: the image list, an image with its masks, retrying or deleting an image.
Thin: each calls the same selectors and services as the REST API."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial, wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST, require_safe

from gallery import selectors, services
from gallery.access import (DELETE_REFUSED, RETRY_REFUSED, access_image, can_delete_image, can_retry_image,
                            can_view_gallery)
from gallery.imaging import ACCEPTED_NAMES, read_upload, upload_name
from gallery.models import Mask, ProcessingStatus
from gallery.overlays import overlay_png
from gallery.storage_check import stored_file_missing
from gallery.thumbnails import DISPLAY_SIZE, thumbnail_url

GALLERY_PAGE_SIZE = 48
DEFAULT_MASK_THRESHOLD = 50  # percent, when a page does not say (the same cut as a mask's area)

View = Callable[..., HttpResponseBase]


def gallery_reader(view: View) -> View:
    """Pages that show the gallery follow IMAGINAITION_PUBLIC_GALLERY (private by default)."""
    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponseBase:
        if not can_view_gallery(request.user):
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)
    return wrapper


def form_of_signed_in_users(form_page: Callable[..., str]) -> Callable[[View], View]:
    """A POST-only view whose form only signed-in users send. A visitor signed out meanwhile (in
    another tab, or the session ended) is asked to sign in and then brought back to the page that
    holds the form, form_page(**the view's URL arguments), to press its button again: login_required
    would bring them back to the POST-only address itself, a 405."""
    def decorate(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return redirect_to_login(form_page(**kwargs))
            return view(request, *args, **kwargs)
        return wrapper
    return decorate


def mask_threshold(request: HttpRequest) -> int:
    """?threshold= (0–100; the pages put the user's preference there)."""
    try:
        value = int(request.GET.get("threshold", ""))
    except ValueError:
        value = DEFAULT_MASK_THRESHOLD
    return max(0, min(100, value))


def png_response(data: bytes, *, cache: bool) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600" if cache else "no-store"
    return response


@gallery_reader
@require_safe
def gallery_page(request: HttpRequest) -> HttpResponse:
    label = request.GET.get("label", "").strip()
    failed = request.GET.get("status") == "failed"  # the banner's "Failed: N" links here
    upto = pinned_upto(request)
    images = selectors.image_list(label=label, upto=upto, failed=failed)
    # The pager's links carry the newest id of the first page asked for, as the API's do: images added
    # while a visitor pages do not push the ones they saw onto the next page.
    newest = upto or selectors.newest_id(images)
    page = Paginator(images, GALLERY_PAGE_SIZE).get_page(page_number(request))
    added_since = selectors.images_added_since(label=label, upto=upto, failed=failed) if upto else 0
    chosen = {name.casefold() for name in selectors.label_names(label)}  # the list matches in any letter case
    chips = [(name, count, name.casefold() in chosen) for name, count in selectors.label_counts()]
    # What every pager link carries beside its page number (the label asked for, even empty, as before).
    pager_query = urlencode({"label": label, **({"status": "failed"} if failed else {}),
                             **({"upto": newest} if newest else {})})
    return render(request, "gallery/gallery.html", {"page": page, "label": label, "labels": chips,
                                                    "failed": failed, "pager_query": pager_query,
                                                    "added_since": added_since,
                                                    "max_upload_bytes": settings.IMAGINAITION_MAX_UPLOAD_BYTES,
                                                    "accepted_formats": ACCEPTED_NAMES,
                                                    "max_files": settings.DATA_UPLOAD_MAX_NUMBER_FILES,
                                                    "max_request_bytes": settings.IMAGINAITION_MAX_UPLOAD_BYTES
                                                    + settings.DATA_UPLOAD_MAX_MEMORY_SIZE})


def pinned_upto(request: HttpRequest) -> int | None:
    """?upto=: a positive id pins the list to the images up to it; anything else is no pin (the newest)."""
    try:
        upto = int(request.GET.get("upto", ""))
    except ValueError:
        return None
    return upto if upto >= 1 else None


def page_number(request: HttpRequest) -> str | None:
    """?page=: a number below 1 is the first page (Django's paginator would show the last); "last" the last, as
    the API reads it (the paginator showed the first)."""
    number = request.GET.get("page")
    if number == "last":
        return str(2**31)  # past the last page: the paginator shows the last
    try:
        return "1" if number is not None and int(number) < 1 else number
    except ValueError:
        return number  # not a number: the paginator shows the first page


@gallery_reader
@require_safe
@never_cache  # Back after deleting it (or after its processing ended) asks again: it showed a live, stale page
def image_page(request: HttpRequest, image_id: int) -> HttpResponse:
    image = access_image(user=request.user, image_id=image_id)
    shown = (reverse("gallery:image-file", args=[image.pk]) if services.image_shown_as_stored(image)
             else thumbnail_url(image, DISPLAY_SIZE))
    return render(request, "gallery/image.html", {
        "image": image, "image_url": shown,
        "masks": image.masks.only("id", "image_id", "label", "class_index", "area_fraction"),
        "can_delete": can_delete_image(request.user, image),
        "can_retry": can_retry_image(request.user, image),
        "file_missing": stored_file_missing(image),
        "pending": ProcessingStatus.PENDING in (image.status, image.masks_status),
        "failed": ProcessingStatus.FAILED in (image.status, image.masks_status),
        # Pending again after a model change, it still has the vectors the serving models search with.
        "searchable": image.status == ProcessingStatus.READY or (
            image.status == ProcessingStatus.PENDING and image.embeddings.exists())})


@gallery_reader
@require_safe
def mask_overlay(request: HttpRequest, image_id: int, mask_id: int) -> HttpResponse:
    image = access_image(user=request.user, image_id=image_id)
    mask = get_object_or_404(Mask, pk=mask_id, image=image)
    return png_response(overlay_png(mask_png=mask.probability_png, size=(image.width, image.height),
                                    threshold_percent=mask_threshold(request)), cache=True)


@form_of_signed_in_users(lambda: reverse("pages:gallery"))
@require_POST
def images_add(request: HttpRequest) -> HttpResponse:
    """The gallery's "Add images" form: one or more files, each added on its own. The page's script sends
    them one per request and asks for JSON (a progress list, no request-size limit on the whole set);
    without it the form sends them all and the gallery page lists what became of each."""
    uploads = request.FILES.getlist("files")
    outcomes = services.uploads_add(files=[(upload_name(upload), partial(read_upload, upload)) for upload in uploads],
                                    user=request.user)
    if request.headers.get("Accept") == "application/json":
        return JsonResponse({"results": [
            {"name": outcome.name, "state": outcome.state, "message": outcome.message,
             "url": reverse("pages:image", args=[outcome.image.pk]) if outcome.image else None,
             "storage_failed": outcome.storage_failed}  # the script then stops sending the others
            for outcome in outcomes]}, status=200 if outcomes else 400)
    if not outcomes:
        messages.error(request, "Choose one or more image files to add.")
    added = [outcome.name for outcome in outcomes if outcome.state == "added"]
    if added:
        messages.success(request, f"Added {len(added)} image{pluralize(len(added))}; "
                                  f"{'they are' if len(added) > 1 else 'it is'} being processed: {', '.join(added)}.")
    if existing := [outcome.name for outcome in outcomes if outcome.state == "exists"]:
        messages.info(request, f"Already in the gallery: {', '.join(existing)}.")
    for outcome in outcomes:
        if outcome.state in ("refused", "failed", "unsent"):
            messages.error(request, f"{outcome.name}: {outcome.message}")
    return redirect("pages:gallery")


@form_of_signed_in_users(lambda image_id: reverse("pages:image", args=[image_id]))
@require_POST
def retry(request: HttpRequest, image_id: int) -> HttpResponse:
    image = access_image(user=request.user, image_id=image_id)
    if not can_retry_image(request.user, image):
        raise PermissionDenied(RETRY_REFUSED)
    failed = ProcessingStatus.FAILED in (image.status, image.masks_status)
    services.image_retry(image=image)
    messages.info(request, "The image is back in the queue." if failed else "Nothing failed: nothing to retry.")
    return redirect("pages:image", image_id=image_id)


@form_of_signed_in_users(lambda image_id: reverse("pages:image", args=[image_id]))
@require_POST
def delete(request: HttpRequest, image_id: int) -> HttpResponse:
    """Remove the image with its masks, vectors and files: whoever added it, or with the delete permission."""
    image = access_image(user=request.user, image_id=image_id)
    if not can_delete_image(request.user, image):
        raise PermissionDenied(DELETE_REFUSED)
    name = image.original_name
    if services.image_delete(image=image):
        messages.success(request, f"Deleted {name}.")
    else:
        messages.info(request, f"{name} had already been deleted (by someone else, a moment before).")
    return redirect("pages:gallery")
