"""Django admin pages for "Reset / initialize from a folder" (staff with the gallery.reset_gallery permission,
CSRF-protected; the folder must lie under IMAGINAITION_IMPORT_ROOTS)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_http_methods, require_safe

from gallery.folders import import_roots
from gallery.forms import FirstErrorFocused
from gallery.models import ACTIVE_RESET_STATES, ResetJob
from gallery.reset import ResetRefused, reset_folder_check, reset_preview, reset_resume_if_abandoned, reset_start


class ResetForm(FirstErrorFocused, forms.Form):
    folder = forms.CharField(label="Folder on the server", max_length=1024,
                             widget=forms.TextInput(attrs={"size": 80, "placeholder": "/srv/photos"}))
    recursive = forms.BooleanField(label="Include sub-folders", required=False, initial=True)

    def clean_folder(self) -> str:
        try:
            return str(reset_folder_check(folder=self.cleaned_data["folder"]))
        except ResetRefused as exc:
            raise forms.ValidationError(str(exc)) from None


def _context(request: HttpRequest, *, title: str, **extra: Any) -> dict[str, Any]:
    """Each step its own title (the browser's tab, a screen reader's first words)."""
    return {**admin.site.each_context(request), "title": title, **extra}


@require_http_methods(["GET", "HEAD", "POST"])
def reset_form_view(request: HttpRequest) -> HttpResponse:
    """Step 1 asks for the folder; a valid POST shows step 2, the confirmation with counts."""
    # A refused start comes back here with what was typed (?folder=…&recursive=…), not an empty form.
    form = ResetForm(request.POST or None, initial={"folder": request.GET.get("folder", ""),
                                                    "recursive": request.GET.get("recursive", "on") == "on"})
    active = ResetJob.objects.filter(state__in=ACTIVE_RESET_STATES).first()
    if request.method == "POST" and form.is_valid():
        try:
            preview = reset_preview(folder=form.cleaned_data["folder"], recursive=form.cleaned_data["recursive"])
        except ResetRefused as exc:
            form.add_error("folder", str(exc))
        else:
            return render(request, "admin/gallery/reset/confirm.html",
                          _context(request, title="Confirm reset", preview=preview, active=active))
    return render(request, "admin/gallery/reset/form.html",
                  _context(request, title="Reset / initialize from a folder", form=form, active=active,
                           roots=[str(root) for root in import_roots()]))


@require_http_methods(["GET", "HEAD", "POST"])
def reset_start_view(request: HttpRequest) -> HttpResponse:
    if request.method in ("GET", "HEAD"):  # a bookmarked or reloaded confirmation: start over at the form
        return redirect("gallery-reset")
    form = ResetForm(request.POST)
    back = (f"{reverse('gallery-reset')}?"
            f"{urlencode({'folder': request.POST.get('folder', ''), 'recursive': request.POST.get('recursive', 'off')})}")
    if not form.is_valid():  # e.g. the folder went away after the preview: say what is wrong with it
        messages.error(request, " ".join(str(error) for errors in form.errors.values() for error in errors))
        return redirect(back)
    if request.POST.get("confirm") != "yes":
        messages.error(request, "The reset was not confirmed.")
        return redirect(back)
    try:
        job = reset_start(folder=form.cleaned_data["folder"], recursive=form.cleaned_data["recursive"],
                          user=request.user)
    except ResetRefused as exc:
        messages.error(request, str(exc))
        return redirect(back)
    return redirect("gallery-reset-progress", job_id=job.pk)


def _job_data(job: ResetJob) -> dict[str, Any]:
    return {"id": job.pk, "state": job.state, "state_label": job.get_state_display(), "phase": job.phase,
            "folder": job.folder,
            "deleted_images": job.deleted_images, "total_files": job.total_files, "scanned": job.scanned,
            "imported": job.imported, "duplicates": job.duplicates, "rejected": job.rejected,
            "embedded": job.embedded, "error": job.error, "to_process": _to_process(job)}


def _to_process(job: ResetJob) -> int:
    """What it counted (the images left to process: some may have been deleted meanwhile); a job from before
    to_process was counted has 0: what it imported or processed."""
    return job.to_process or max(job.imported, job.embedded)


@require_safe
def reset_progress_view(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(ResetJob, pk=job_id)
    return render(request, "admin/gallery/reset/progress.html", _context(
        request, title="Reset progress", job=job, to_process=_to_process(job),
        status_url=reverse("gallery-reset-status", args=[job.pk]),
        images_url=reverse("admin:gallery_image_changelist")))


@require_safe
def reset_status_view(request: HttpRequest, job_id: int) -> JsonResponse:
    job = ResetJob.objects.filter(pk=job_id).first()
    if job is None:  # the page's script reads JSON, a 404 included
        return JsonResponse({"detail": f"There is no reset job {job_id}."}, status=404)
    if reset_resume_if_abandoned(job):
        job.refresh_from_db()
    return JsonResponse(_job_data(job))


RESET_PERMISSION = "gallery.reset_gallery"


RESET_REFUSED = ("Resetting the gallery needs its own permission, “Can reset / initialize the gallery from a server "
                 "folder” (listed under Gallery | reset job). An administrator grants it in admin: Users → your user "
                 "→ User permissions.")


def _reset_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Admin login (staff) first, then the reset permission: a staff member without it gets 403 naming it."""
    @wraps(view)
    def permitted(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(RESET_PERMISSION):
            raise PermissionDenied(RESET_REFUSED)
        return view(request, *args, **kwargs)
    return admin.site.admin_view(permitted)


urlpatterns = [
    path("", _reset_view(reset_form_view), name="gallery-reset"),
    path("start/", _reset_view(reset_start_view), name="gallery-reset-start"),
    path("<int:job_id>/", _reset_view(reset_progress_view), name="gallery-reset-progress"),
    path("<int:job_id>/status/", _reset_view(reset_status_view), name="gallery-reset-status"),
]
