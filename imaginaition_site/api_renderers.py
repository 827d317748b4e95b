"""The API's pages a browser opens: /api/docs/ (Swagger UI) and DRF's browsable API (an endpoint opened
in a browser). Their stock templates write a bare <html> (no page language for a screen reader, WCAG
3.1.1) outside any block, so the language is added to what they render rather than by copying them.
(DRF imports this module while it defines APIView, through its settings: no view is imported at the top.)"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.urls import Resolver404, resolve
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer, BrowsableAPIRenderer, TemplateHTMLRenderer
from rest_framework.utils import formatting

from imaginaition_site.middleware import API_UNKNOWN_ENDPOINT

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView

PAGE_LANGUAGE = "en"


def with_page_language(page: Any) -> Any:
    """The rendered page with <html lang=…> (bytes or text, as the renderer gave it)."""
    if isinstance(page, bytes):
        return page.replace(b"<html>", f'<html lang="{PAGE_LANGUAGE}">'.encode(), 1)
    return page.replace("<html>", f'<html lang="{PAGE_LANGUAGE}">', 1)


def api_view_name(view: APIView) -> str:
    """A view's name in the browsable API and OPTIONS answers (DRF's VIEW_NAME_FUNCTION): its `name`, or
    its class's without the "Api" ending (ImageRetryApi: "Image Retry"), not "Image Retry Api"."""
    name = getattr(view, "name", None)
    if name is not None:
        return str(name)
    return formatting.camelcase_to_spaces(formatting.remove_trailing_string(type(view).__name__, "Api"))


def _names_no_endpoint(url: str) -> bool:
    try:
        match = resolve(urlsplit(url).path)
    except Resolver404:
        return True
    return match.url_name == API_UNKNOWN_ENDPOINT  # the catch-all's JSON 404 (gallery.api.NoSuchEndpointApi)


class SiteBrowsableApiRenderer(BrowsableAPIRenderer):
    """DRF's browsable API with the page language, and breadcrumbs without the catch-all's 404: DRF makes
    one of each prefix that resolves, and /api/search (no final "/") resolves to NoSuchEndpointApi
    although the site's middleware serves it as /api/search/."""

    def get_breadcrumbs(self, request: Request) -> list[tuple[str, str]]:
        return [(name, url) for name, url in super().get_breadcrumbs(request) if not _names_no_endpoint(url)]

    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: Mapping[str, Any] | None = None) -> Any:
        return with_page_language(super().render(data, accepted_media_type, renderer_context))


class PageLanguageTemplateRenderer(TemplateHTMLRenderer):
    def render(self, data: Any, accepted_media_type: str | None = None,
               renderer_context: Mapping[str, Any] | None = None) -> Any:
        return with_page_language(super().render(data, accepted_media_type, renderer_context))


class FormatNotOffered(NotAcceptable):
    """A ?format= that no renderer of the view writes (its message names those that do)."""


class SiteContentNegotiation(DefaultContentNegotiation):
    """A `?format=` no renderer of the view writes is a 406 that names the ones it does, not DRF's bare
    404 "Not found.", which a client reads as "no such image"; an Accept header, a 406 that names them
    too (DRF's says only that it "could not satisfy" it)."""

    def select_renderer(self, request: Request, renderers: Iterable[BaseRenderer],
                        format_suffix: str | None = None) -> tuple[BaseRenderer, str]:
        """An Accept header none of them writes: a 406 naming the media types they do, as for ?format=."""
        renderers = list(renderers)  # read twice
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except FormatNotOffered:
            raise
        except NotAcceptable as exc:
            offered = ", ".join(dict.fromkeys(str(renderer.media_type) for renderer in renderers))
            raise NotAcceptable(f"Nothing here is written as {request.headers.get('Accept', '')!r}: "
                                f"Accept may be {offered}.") from exc

    def filter_renderers(self, renderers: Iterable[BaseRenderer], format: str) -> list[BaseRenderer]:  # noqa: A002
        matching = [renderer for renderer in renderers if renderer.format == format]
        if not matching:
            offered = ", ".join(sorted({str(renderer.format) for renderer in renderers}))
            raise FormatNotOffered(f"No format {format!r} here: ?format= may be {offered}.")
        return matching
