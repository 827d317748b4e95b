"""The web pages. Thin: each calls the same services and selectors as the REST API."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from gallery import services, staging
from gallery.access import access_image, can_view_gallery
from gallery.forms import PreferencesForm, TextSearchForm, UploadForm
from gallery.imaging import ImageRejected
from gallery.models import Image, Mask, ProcessingStatus
from gallery.overlays import overlay_png
from retrieval import search as search_service
from retrieval.encoders.registry import active_models
from retrieval.preferences import (
    policy_preferences,
    preferences_get,
    preferences_update,
)

GALLERY_PAGE_SIZE = 48


def gallery_reader(view):
    """Pages that show the gallery follow IMAGINAITION_PUBLIC_GALLERY (private by default)."""
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not can_view_gallery(request.user):
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)
    return wrapper


def _mask_threshold(request) -> int:
    """?threshold= when given (0–100), else the user's saved mask threshold."""
    try:
        value = int(request.GET.get("threshold", ""))
    except ValueError:
        value = preferences_get(user=request.user, session=request.session)["mask_threshold"]
    return max(0, min(100, value))


def _png(data: bytes, *, cache: bool) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600" if cache else "no-store"
    return response


@gallery_reader
@require_http_methods(["GET", "POST"])
def home(request):
    """Choose a file (or drop it), see its labels and masks, add it or search with it; or search by text."""
    form = UploadForm()
    if request.method == "POST":
        form = UploadForm(request.POST, request.FILES)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            if upload.size > settings.IMAGINAITION_MAX_UPLOAD_BYTES:
                form.add_error("file", f"The file is larger than {settings.IMAGINAITION_MAX_UPLOAD_BYTES:,} bytes.")
            else:
                try:
                    staging.staged_add(data=upload.read(), name=upload.name, session=request.session)
                    return redirect("pages:home")
                except ImageRejected as exc:
                    form.add_error("file", exc.message)
    return render(request, "gallery/home.html", {
        "form": form, "text_form": TextSearchForm(), "staged": staging.staged_get(session=request.session),
        "threshold": preferences_get(user=request.user, session=request.session)["mask_threshold"],
        "recent": Image.objects.filter(status=ProcessingStatus.READY)[:12]})


@gallery_reader
@require_GET
@never_cache
def staged_file(request):
    staged = staging.staged_get(session=request.session)
    if staged is None:
        raise Http404("Nothing uploaded")
    return FileResponse(staged.path.open("rb"))


@gallery_reader
@require_GET
def staged_overlay(request, class_index: int):
    staged = staging.staged_get(session=request.session)
    if staged is None or not staged.mask_path(class_index).exists():
        raise Http404("No such mask")
    # Same URL for every upload of this session: never cached.
    return _png(overlay_png(mask_png=staged.mask_path(class_index).read_bytes(), size=staged.size,
                            threshold_percent=_mask_threshold(request)), cache=False)


@login_required
@require_POST
def staged_add_to_gallery(request):
    staged = staging.staged_get(session=request.session)
    if staged is None:
        messages.error(request, "Choose a file first.")
        return redirect("pages:home")
    try:
        result = services.image_add(data=staged.data(), original_name=staged.name, user=request.user)
    except ImageRejected as exc:
        messages.error(request, exc.message)
        return redirect("pages:home")
    staging.staged_clear(session=request.session)
    if result.created:
        messages.success(request, f"Added {result.image.original_name}; it is being processed.")
    else:
        messages.info(request, f"This image is already in the database (as {result.image.original_name}).")
    return redirect("pages:image", image_id=result.image.pk)


@gallery_reader
@require_GET
def search(request):
    """Search by a stored image (?image=), words (?text=) or the staged upload (?upload=1); a read, so GET."""
    models = active_models()
    prefs = preferences_get(user=request.user, session=request.session)
    image_id, text = request.GET.get("image", ""), request.GET.get("text", "").strip()[:500]
    query_image, about, back = None, "", redirect("pages:home")
    try:
        if image_id:
            if not image_id.isdigit():
                raise Http404("No such image")
            query_image = access_image(user=request.user, image_id=int(image_id))
            back = redirect("pages:image", image_id=query_image.pk)
            query, about = search_service.vectors_for_image_id(image_id=query_image.pk, models=models), query_image.original_name
        elif text:
            query, about = search_service.vectors_for_text(text=text, models=models), f"“{text}”"
        elif request.GET.get("upload"):
            staged = staging.staged_get(session=request.session)
            if staged is None:
                raise search_service.QueryError("Your upload has expired; choose the file again.")
            query, about = search_service.vectors_for_upload(data=staged.data(), models=models), staged.name
        else:
            raise search_service.QueryError("Choose a file, pick an image or type some words first.")
        response = search_service.search(query=query, preferences=policy_preferences(prefs), models=models)
    except (search_service.QueryError, ImageRejected) as exc:
        messages.error(request, str(getattr(exc, "message", exc)))
        return back
    return render(request, "gallery/results.html", {
        "response": response, "about": about, "query_image": query_image, "text": text,
        "staged_query": bool(request.GET.get("upload")) and not image_id and not text})


@gallery_reader
@require_GET
def gallery_page(request):
    images = Image.objects.order_by("-created_at", "-id")
    label = request.GET.get("label", "").strip()
    if label:
        images = images.filter(masks__label=label).distinct()
    page = Paginator(images, GALLERY_PAGE_SIZE).get_page(request.GET.get("page"))
    labels = Mask.objects.order_by("label").values_list("label", flat=True).distinct()
    return render(request, "gallery/gallery.html", {"page": page, "label": label, "labels": labels})


@gallery_reader
@require_GET
def image_page(request, image_id: int):
    image = access_image(user=request.user, image_id=image_id)
    return render(request, "gallery/image.html", {
        "image": image, "masks": image.masks.only("id", "label", "class_index", "area_fraction"),
        "threshold": preferences_get(user=request.user, session=request.session)["mask_threshold"],
        "pending": ProcessingStatus.PENDING in (image.status, image.masks_status),
        "failed": ProcessingStatus.FAILED in (image.status, image.masks_status)})


@gallery_reader
@require_GET
def mask_overlay(request, image_id: int, mask_id: int):
    image = access_image(user=request.user, image_id=image_id)
    mask = get_object_or_404(Mask, pk=mask_id, image=image)
    return _png(overlay_png(mask_png=mask.probability_png, size=(image.width, image.height),
                            threshold_percent=_mask_threshold(request)), cache=True)


@login_required
@require_POST
def retry(request, image_id: int):
    services.image_retry(image=access_image(user=request.user, image_id=image_id))
    messages.info(request, "The image is back in the queue.")
    return redirect("pages:image", image_id=image_id)


@require_http_methods(["GET", "POST"])
def preferences(request):
    """Everyone's search preferences: saved to the account, or to the session for anonymous visitors."""
    current = preferences_get(user=request.user, session=request.session)
    form = PreferencesForm(request.POST or None, initial=current)
    if request.method == "POST" and form.is_valid():
        preferences_update(user=request.user, session=request.session, values=form.cleaned_data)
        messages.success(request, "Preferences saved.")
        return redirect("pages:preferences")
    return render(request, "gallery/preferences.html", {"form": form})
