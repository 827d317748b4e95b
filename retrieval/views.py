"""The search pages: choose or drop a picture (its labels and masks show at once), search by it, by
words or by a gallery image, see the colour-coded results; and the preferences page. Thin: each
calls the same services as the REST API (retrieval.search.search_for for every search)."""

from __future__ import annotations

from dataclasses import replace

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from gallery import selectors, services
from gallery.access import access_image, can_view_gallery
from gallery.errors import Refused
from gallery.imaging import ACCEPTED_NAMES, header_facts, read_upload, shown_as_stored, upload_name
from gallery.models import Mask
from gallery.overlays import overlay_png
from gallery.thumbnails import DISPLAY_SIZE, webp_rendition
from gallery.views import form_of_signed_in_users, gallery_reader, mask_threshold, png_response
from gallery.views_files import uploaded_image_response
from retrieval import uploads
from retrieval.forms import PreferencesForm, TextSearchForm, UploadForm
from retrieval.preferences import preferences_get, preferences_update
from retrieval.search import Query, id_parse, labels_parse, search_for


@gallery_reader
@require_http_methods(["GET", "HEAD", "POST"])
def home(request: HttpRequest) -> HttpResponse:
    """Choose a file (or drop it), see its labels and masks, add it or search with it; or search by text."""
    form = UploadForm()
    if request.method == "POST":
        form = UploadForm(request.POST, request.FILES)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                uploads.staged_add(data=read_upload(upload), name=upload_name(upload), session=request.session)
                # To the upload's section, below the fold (the script puts the focus there; a fragment is not
                # seen by its request, so this is for a browser without it).
                return redirect(reverse("pages:home") + "#staged-title")
            except Refused as exc:
                form.add_error("file", _refused_upload_message(upload_name(upload), exc.message,
                                                               kept=uploads.staged_get(session=request.session)))
    return _home_page(request, form=form)


def _home_page(request: HttpRequest, *, form: UploadForm, text: str = "", text_error: str = "",
               text_labels: list[str] | None = None, status: int = 200) -> HttpResponse:
    """The search page; with `text_error`, a refused text search's words and labels kept in its form."""
    return render(request, "retrieval/home.html", {
        "form": form, "text_form": TextSearchForm(), "text": text, "text_error": text_error,
        "text_labels": text_labels or [], "staged": uploads.staged_get(session=request.session),
        "recent": selectors.image_recent_ready(), "label_choices": selectors.label_counts(),
        "max_upload_bytes": settings.IMAGINAITION_MAX_UPLOAD_BYTES,  # the script refuses a larger file unsent
        "accepted_formats": ACCEPTED_NAMES}, status=status)


def _refused_upload_message(name: str, message: str, *, kept: uploads.StagedUpload | None) -> str:
    """Which file was refused, and that the picture still shown is the one loaded before (the page gave
    the message alone above "Your image: <the previous file>" and its "Add to database")."""
    if kept is None:
        return f"{name} was not loaded: {message}"
    ended = message if message.endswith((".", "?", "!")) else f"{message}."  # Pillow's own words end bare
    return f"{name} was not loaded: {ended} The picture below is still {kept.name}, loaded before."


def _shown_upload(request: HttpRequest) -> uploads.StagedUpload | None:
    """The staged upload a page's picture or overlay URL names (?upload=); 404 once it was replaced."""
    try:
        return uploads.staged_get(session=request.session, token=request.GET.get("upload", ""))
    except uploads.UploadReplaced as exc:
        raise Http404(exc.message) from exc


@gallery_reader
@require_safe
@never_cache
def staged_file(request: HttpRequest) -> HttpResponseBase:
    staged = _shown_upload(request)
    if staged is None:
        raise Http404("Nothing uploaded")
    try:
        stream = default_storage.open(staged.file_name, "rb")
    except FileNotFoundError as exc:
        raise Http404("Your upload has expired") from exc
    image_format, orientation = header_facts(stream)
    if image_format and not shown_as_stored(image_format, orientation):  # TIFF, a turned WebP: the models' picture
        with stream:
            return HttpResponse(webp_rendition(stream.read(), max_side=DISPLAY_SIZE), content_type="image/webp")
    return uploaded_image_response(stream, name=staged.name, image_format=image_format)


@gallery_reader
@require_safe
@never_cache
def staged_state(request: HttpRequest) -> JsonResponse:
    """Whether the staged upload's labels are there yet (the page asks while it shows that it is working)."""
    try:
        staged = uploads.staged_get(session=request.session, token=request.GET.get("upload", ""))
    except uploads.UploadReplaced as exc:
        return JsonResponse({"state": "gone", "error": exc.message}, status=404)
    if staged is None:
        return JsonResponse({"state": "gone", "error": uploads.staged_missing_message(session=request.session)},
                            status=404)
    error = staged.error if request.user.is_staff else staged.shown_error  # which worker to start: staff only
    return JsonResponse({"state": staged.state, "error": error, "labels": [l["label"] for l in staged.labels]})


@gallery_reader
@require_safe
def staged_overlay(request: HttpRequest, class_index: int) -> HttpResponse:
    staged = _shown_upload(request)
    mask = staged.mask_png(class_index) if staged is not None else None
    if staged is None or mask is None:
        raise Http404("No such mask")
    # Same URL for every upload of this session: never cached.
    return png_response(overlay_png(mask_png=mask, size=staged.size,
                                    threshold_percent=mask_threshold(request)), cache=False)


@form_of_signed_in_users(lambda: reverse("pages:home"))
@require_POST
def staged_add_to_gallery(request: HttpRequest) -> HttpResponse:
    try:
        staged = uploads.staged_get(session=request.session, token=request.POST.get("upload", ""))
        if staged is None:
            messages.error(request, "Choose a file first.")
            return redirect("pages:home")
        result = services.image_add(data=staged.data(), original_name=staged.name, user=request.user)
    except Refused as exc:
        messages.error(request, exc.message)
        return redirect("pages:home")
    uploads.staged_clear(session=request.session)
    if result.created:
        messages.success(request, f"Added {result.image.original_name}; it is being processed.")
    else:
        messages.info(request, f"This image is already in the database (as {result.image.original_name}).")
    return redirect("pages:image", image_id=result.image.pk)


@gallery_reader
@require_safe
def search(request: HttpRequest) -> HttpResponseBase:
    """Search by a stored image (?image=), one of its regions (?mask=), words (?text=) or the staged
    upload (?upload=<its token>, with &label= for one of its regions); ?labels= keeps images with those labels.
    A read, so GET."""
    image_id, mask_id = request.GET.get("image", ""), request.GET.get("mask", "")
    text = request.GET.get("text", "").strip()  # a longer one is refused by the search, saying so
    labels = labels_parse(request.GET.getlist("labels"))
    staged_token = request.GET.get("upload", "")  # the staged picture the page showed
    back = redirect("pages:home")
    given = [name for name, value in (("image", image_id), ("mask", mask_id), ("text", text), ("upload", staged_token))
             if value]
    if len(given) > 1:  # no form sends two: an edited address, answered as the API answers it, not half-used
        messages.error(request, f"Search by one thing at a time: an image, a region (mask), words (text) or your "
                                f"upload; this address gives {' and '.join(given)}.")
        return back
    staged = bool(staged_token)
    if image_id or mask_id:
        if mask_id:
            mask = Mask.objects.filter(pk=id_parse(mask_id) or 0).first()
            if mask is None:
                raise Http404(f"There is no mask {mask_id}.")
            stored_id, query = mask.image_id, Query(mask_id=mask.pk)
        else:
            stored_id = id_parse(image_id) or 0
            if not stored_id:  # not a number: name what was asked, as the mask's refusal does
                raise Http404(f"There is no image {image_id}.")
            query = Query(image_id=stored_id)
        back = redirect("pages:image", image_id=access_image(user=request.user, image_id=stored_id).pk)
    else:
        asked_words = "text" in request.GET and not staged  # a blank box: "type some words", not "choose a file"
        query = Query(text=text if asked_words else None, staged=staged, staged_token=staged_token if staged else "",
                      label=(request.GET.get("label") or None) if staged else None)
    query = replace(query, labels=labels)
    try:
        response = search_for(user=request.user, session=request.session, query=query)
    except Refused as exc:
        if query.text is not None:  # the words typed and the labels ticked stay, the field says why (they were lost)
            return _home_page(request, form=UploadForm(), text=request.GET.get("text", ""), text_error=exc.message,
                              text_labels=request.GET.getlist("labels"), status=400)
        messages.error(request, exc.message)
        return back
    return render(request, "retrieval/results.html", {
        "response": response, "text": text, "staged_query": staged, "staged_token": staged_token, "labels": labels,
        "query_mask": query.mask_id, "query_label": query.label})


@require_http_methods(["GET", "HEAD", "POST"])
def preferences(request: HttpRequest) -> HttpResponse:
    """Everyone's search preferences: saved to the account, or to the session for anonymous visitors."""
    if request.method == "POST" and not can_view_gallery(request.user):  # as the API: nothing to search with them
        return redirect_to_login(request.get_full_path())
    current = preferences_get(user=request.user, session=request.session)
    form = PreferencesForm(request.POST or None, initial=dict(current))
    if request.method == "POST" and form.is_valid():
        # Against what the page showed; a field sent without it (a form of another page, a script) is taken whole.
        changed = {name: value for name, value in form.cleaned_data.items()
                   if name in form.changed_data or form[name].html_initial_name not in request.POST}
        preferences_update(user=request.user, session=request.session, values=changed)
        messages.success(request, "Preferences saved.")
        return redirect("pages:preferences")
    return render(request, "retrieval/preferences.html", {"form": form, "may_change": can_view_gallery(request.user)})
