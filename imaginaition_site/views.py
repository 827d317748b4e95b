"""Site-wide views that are no app's: the pages a refused form (CSRF), a throttled sign-in and a server
error show."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Django's CSRF refusal in the site's layout, saying what a person can do about it.

    Django's own page is bare and speaks to developers; the usual cause here is a form left open
    while the session changed (signed in or out in another tab) or cookies turned off.
    """
    if reason.startswith(("Origin checking failed", "Referer checking failed")):
        advice = ("The page was sent from an address this service does not trust. If it is reached through a "
                  "proxy or another name, its administrator adds that origin to DJANGO_CSRF_TRUSTED_ORIGINS.")
    elif "cookie" in reason.casefold():
        advice = "Your browser did not send this site's cookie: allow cookies for it, then reload the page."
    else:
        advice = "The form was older than your session (you may have signed in or out in another tab)."
    return render(request, "403_csrf.html", {"advice": advice}, status=403)


def sign_in_locked_out(request: HttpRequest, original_response: HttpResponse | None = None,
                       credentials: dict[str, Any] | None = None) -> HttpResponse:
    """django-axes' answer to a sign-in of a locked-out user name and address (AXES_LOCKOUT_CALLABLE):
    429 in the site's layout, saying how long to wait and how an administrator lifts the lock."""
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    minutes = math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    return render(request, "registration/locked_out.html",
                  {"username": username, "failure_limit": settings.AXES_FAILURE_LIMIT, "minutes": minutes},
                  status=429)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: an API client gets the API's error shape ({"detail": ...}, JSON), not an HTML page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "The server failed on this request (its error is logged for the "
                                       "administrator)."}, status=500)
    return defaults.server_error(request)
