"""Site-wide views that are no app's: the pages a refused form (CSRF) and a server error show."""

from __future__ import annotations

import sys

from django.conf import settings
from django.core.exceptions import DisallowedHost, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.views import defaults

from gallery.database_outage import connection_lost
from imaginaition_site.middleware import page_refused


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


DATABASE_RETRY_AFTER_SECONDS = 15
DATABASE_UNAVAILABLE = "The service cannot reach its database just now; try again in a moment."


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: an API client gets the API's error shape ({"detail": ...}, JSON), not an HTML page;
    and a request that failed because the database is down (stopped, restarting, out of reach) is a 503
    saying so, the health probe (/api/status/) included (a statement timeout, with the database up,
    stays a 500)."""
    if connection_lost(sys.exc_info()[1]):  # called while Django handles the exception
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse({"detail": DATABASE_UNAVAILABLE}, status=503)
        else:  # rendered without the request: its session and user are in the database
            response = HttpResponse(loader.get_template("503_database.html").render(), status=503)
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "The server failed on this request (its error is logged for the "
                                       "administrator)."}, status=500)
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400 (a request Django refuses before any view: a host name not allowed, a malformed
    body): under /api/, the API's error shape with the reason, not an empty HTML page."""
    if request.path.startswith("/api/"):
        if isinstance(exception, DisallowedHost):
            detail = ("This service does not answer to the host name the request was sent to (its administrator "
                      "lists the names in DJANGO_ALLOWED_HOSTS).")
        else:
            detail = "The request was refused as malformed."
        return JsonResponse({"detail": detail}, status=400)
    if isinstance(exception, TooManyFilesSent):  # the gallery's Add images, sent whole without its script
        return page_refused(request, 400, title="Too many files at once",
                            message=f"The form sent more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files; the "
                                    "service takes at most that many in one request.",
                            advice="Send fewer at a time (with scripts on, the Gallery page sends them one by one).")
    return defaults.bad_request(request, exception)
