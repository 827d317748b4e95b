"""Request checks every view relies on."""

from __future__ import annotations

import logging
from collections.abc import Callable

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.urls import Resolver404, resolve, reverse
from django.utils.cache import patch_cache_control

from gallery.storage import STORAGE_ERRORS, storage_failure_noted
from gallery.storage_check import STORAGE_RETRY_AFTER_SECONDS, storage_unreachable_message

logger = logging.getLogger(__name__)
NUL_REFUSED = "Query parameters cannot contain NUL characters."
API_UNKNOWN_ENDPOINT = "api-unknown-endpoint"  # the URL name of the API's catch-all 404
INLINE_STYLES = "'unsafe-inline'"


class HeadWithoutBodyMiddleware:
    """A HEAD is answered as its GET with no body (views take HEAD wherever they take GET): Django sends
    the body, and gunicorn drops it with a warning in the log for each request (a monitor's probe a
    minute). The GET's length stays in Content-Length; a file's stream is closed unread."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if request.method != "HEAD":
            return response
        if response.streaming:
            response.streaming_content = iter(())  # type: ignore[attr-defined]  # closed with the response
        elif isinstance(response, HttpResponse):
            response.headers.setdefault("Content-Length", str(len(response.content)))
            response.content = b""
        return response


class CrossOriginResourcePolicyMiddleware:
    """`Cross-Origin-Resource-Policy: same-origin` on every response: no other site may load the service's
    files into its own page, as a script or picture element does without CORS. /api/docs/?script carries the
    caller's CSRF token (drf-spectacular's Swagger UI start-up script), and pictures are private by default."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        response.headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        return response


class PrivateCacheMiddleware:
    """`Cache-Control: private` on what a signed-in user (session or token) gets, where the view said nothing
    of caching: pages and API answers hold that user's images and search texts, which no shared cache (a
    proxy) may keep and hand to someone else."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if "Cache-Control" in response.headers or response.status_code >= 500:
            return response  # a server error holds nothing of the user's, and asking who they are may fail again
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            patch_cache_control(response, private=True)
        return response


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's policy (settings.CONTENT_SECURITY_POLICY: scripts and styles only from the site's
    files) on every response that has none of its own; under /api/ styles may also be inline, since the
    pages there come from DRF's and Swagger UI's templates, which use inline styles (no inline script)."""

    def get_policy_parts(self, request: HttpRequest, response: HttpResponseBase,
                         report_only: bool = False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if request.path_info.startswith("/api/") and not report_only:
            parts.update = {**(parts.update or {}), "style-src": [INLINE_STYLES]}
        return parts


class PageRefusalsMiddleware:
    """The pages' own refusals, in the site's layout (the API answers in its own error shape):
    - a 400 for a query string holding a NUL character: no page could use one (PostgreSQL text cannot
      hold it), and passed on it fails deep inside a query as a 500. The API's serializers refuse it;
    - a 405 page where Django answers an empty one: a GET of an address only a form's button sends to
      (a bookmarked sign-out, an action's address typed in), which browsers show as their own error.
    And, for pages and the API alike, the one place where the media storage failing under a view (a
    stopped or hung S3 endpoint, an unmounted folder) becomes a 503 that names it, not a bare 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith("/api/"):
            return self.get_response(request)
        if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
            return page_refused(request, 400, title="Address not understood", message=NUL_REFUSED,
                                advice="Check the address: it holds a character no page can use.")
        response = self.get_response(request)
        if response.status_code == 405 and not response.content:
            refused = page_refused(request, 405, title="Not a page to open", message=(
                "This address is what a button on a page sends (a form), not a page to open."),
                advice="Go back to the page that holds the button (an image's page, the search page) and "
                       "use the button there.")
            refused["Allow"] = response.get("Allow", "")
            return refused
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, STORAGE_ERRORS):
            return None  # Django's own handling (a 500 and its log)
        logger.warning("%s %s: the media storage failed: %r", request.method, request.path, exception)
        storage_failure_noted(exception)
        return storage_unavailable(request, exception)


def storage_unavailable(request: HttpRequest, exception: BaseException) -> HttpResponse:
    """A page's 503 (every /api/ view is DRF's: gallery.api.api_exception_handler answers those in JSON)."""
    response = page_refused(request, 503, title="Media storage unavailable", message=storage_unreachable_message(
        exception), advice="Nothing is wrong with what you asked: try again in a while, and tell an "
                           "administrator if it lasts.")
    response["Retry-After"] = str(STORAGE_RETRY_AFTER_SECONDS)
    return response


def page_refused(request: HttpRequest, status: int, *, title: str, message: str, advice: str = "") -> HttpResponse:
    """A refusal page in the site's layout. Also rendered before the session and user are read
    (a body over the limit): the layout then shows the signed-out navigation."""
    return render(request, "refused.html", {"title": title, "message": message, "advice": advice}, status=status)


class ApiPathWithoutSlashMiddleware:
    """/api/images is /api/images/ (and /api is /api/). Django's APPEND_SLASH answers a path without its "/" with a 301,
    which HTTP clients follow as a GET: an upload POSTed to /api/images came back 200 with the image
    list and stored nothing. An API client's request goes to the endpoint itself, whatever its method."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        under_api = path == "/api" or path.startswith("/api/")
        if under_api and not path.endswith("/") and not _names_an_endpoint(request, path) \
                and _names_an_endpoint(request, path + "/"):
            request.path_info, request.path = path + "/", request.path + "/"
        return self.get_response(request)


def _names_an_endpoint(request: HttpRequest, path: str) -> bool:
    try:
        return resolve(path, getattr(request, "urlconf", None)).url_name != API_UNKNOWN_ENDPOINT
    except Resolver404:
        return False


def request_body_limit() -> int:
    """The largest request body served: one file at the upload limit plus the form's other fields."""
    return settings.IMAGINAITION_MAX_UPLOAD_BYTES + settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def body_too_large(request: HttpRequest, length: int) -> HttpResponse:
    message = (f"The request is {length:,} bytes; the limit is {request_body_limit():,} "
               f"(a file of at most {settings.IMAGINAITION_MAX_UPLOAD_BYTES:,} bytes and the form's fields).")
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": message}, status=413)
    if request.path_info == reverse("pages:images-add"):  # several files sent together, without the page's script
        return page_refused(request, 413, title="Too much at once", message=message,
                            advice="Send fewer files at a time from the Gallery page (with scripts on, the page "
                                   "sends them one by one and this limit is per file).")
    return page_refused(request, 413, title="File too large", message=message,
                        advice="Choose a smaller file (or shrink this one) and load it again from the search page.")


class RequestBodyLimitMiddleware:
    """A 413 before anything reads a body over the limit. The CSRF check reads a POST's whole form
    (files spooled to disk) before any view can look at a file's size, so without this anyone could
    make the server write a body of any size to its temporary folder, signed in or not. A body
    without a length (chunked) is refused with 411 (and cut by UploadLimitHandler should a server pass one on)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not request.META.get("CONTENT_LENGTH"):
            return length_required(request)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > request_body_limit():
            return body_too_large(request, length)
        return self.get_response(request)


def length_required(request: HttpRequest) -> HttpResponse:
    """A body sent in chunks, without its length: Django reads a WSGI body only up to its Content-Length, so it
    found none, and an upload was told "No file was submitted"."""
    message = ("The request's body was sent in chunks without a Content-Length, and this server reads only a "
               "body of a stated length: send it with its length (curl -F and browsers do).")
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": message}, status=411)
    return page_refused(request, 411, title="Length required", message=message)


class UploadLimitHandler(FileUploadHandler):
    """Stops reading a multipart body once its files pass the limit (a body sent without a length);
    the view then finds no file and says so."""

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.received = 0  # bytes of this request's files so far (one handler object per request)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > request_body_limit():
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None
