"""Request checks every view relies on."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

NUL_REFUSED = "Query parameters cannot contain NUL characters."


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
