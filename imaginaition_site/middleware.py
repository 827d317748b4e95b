"""Request checks every view relies on."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import Resolver404, resolve

NUL_REFUSED = "Query parameters cannot contain NUL characters."
API_UNKNOWN_ENDPOINT = "api-unknown-endpoint"  # the URL name of the API's catch-all 404


class RefuseNulInQueryMiddleware:
    """A 400 for a page's query string holding a NUL character: no page could use one (PostgreSQL
    text cannot hold it), and passed on it fails deep inside a query as a 500. The API validates its
    own parameters (its serializers refuse NUL in its documented error shape)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith("/api/"):
            return self.get_response(request)
        if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
            return HttpResponseBadRequest(NUL_REFUSED, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


class ApiPathWithoutSlashMiddleware:
    """/api/images is /api/images/. Django's APPEND_SLASH answers a path without its "/" with a 301,
    which HTTP clients follow as a GET: an upload POSTed to /api/images came back 200 with the image
    list and stored nothing. An API client's request goes to the endpoint itself, whatever its method."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if path.startswith("/api/") and not path.endswith("/") and not _names_an_endpoint(request, path) \
                and _names_an_endpoint(request, path + "/"):
            request.path_info, request.path = path + "/", request.path + "/"
        return self.get_response(request)


def _names_an_endpoint(request: HttpRequest, path: str) -> bool:
    try:
        return resolve(path, getattr(request, "urlconf", None)).url_name != API_UNKNOWN_ENDPOINT
    except Resolver404:
        return False
