"""REST endpoints for images. Thin: validate input, call a service or selector, serialize."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any, NoReturn, cast

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.cache import caches
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import connection, transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse as django_reverse
from django.utils.connection import ConnectionProxy
from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    Direction,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.exceptions import (ErrorDetail, NotAuthenticated, NotFound, ParseError, PermissionDenied,
                                       ValidationError)
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.reverse import reverse
from rest_framework.utils import html
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView, exception_handler

from gallery import selectors, services
from gallery.access import DELETE_REFUSED, RETRY_REFUSED, can_delete_image, can_retry_image, can_view_gallery
from gallery.errors import Refused
from gallery.imaging import ImageRejected, read_upload, upload_name
from gallery.models import Image, ProcessingStatus
from gallery.storage import STORAGE_ERRORS, storage_failure_noted
from gallery.storage_check import STORAGE_RETRY_AFTER_SECONDS, storage_unreachable_message
from gallery.thumbnails import thumbnail_version

if TYPE_CHECKING:
    from drf_spectacular.openapi import AutoSchema
    from django.core.cache.backends.base import BaseCache

logger = logging.getLogger(__name__)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus the one mapping of refused input: {"detail": message}, or {field: [message]} as a
    validation error says it, with its status (and a failing media storage's 503)."""
    if isinstance(exc, Refused):  # a 503 among them: the media storage failed storing a file
        retry = {"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)} if exc.status_code == 503 else None
        if retry:  # the service's fault, not the caller's: the log says why (Django's line names only the path)
            logger.warning("%s: %s", getattr(context.get("request"), "path", "?"), exc.message)
        body = {exc.field: [exc.message]} if exc.field else {"detail": exc.message}
        return Response(body, status=exc.status_code, headers=retry)
    if isinstance(exc, STORAGE_ERRORS):  # the media storage failed under the view (as the pages' middleware says)
        logger.warning("%s: the media storage failed: %r", getattr(context.get("request"), "path", "?"), exc)
        storage_failure_noted(exc)
        return Response({"detail": storage_unreachable_message(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)})
    # Django's own limits on a body's non-file part, met while DRF parses it: JSON, not its HTML 400.
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": f"The request's data (files aside) is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} "
                                   "bytes; send less."}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, TooManyFieldsSent):
        return Response({"detail": f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} fields."},
                        status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, TooManyFilesSent):
        return Response({"detail": f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES:,} files; "
                                   "send one."}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ParseError) and "max total header size" in str(exc.detail):  # Django's multipart limit
        # Also what a part whose headers are not UTF-8 ends in: Django skips their lines, then reads the file's
        # bytes as the next part's headers (a 9-byte Latin-1 name was told it was too long).
        exc.detail = ErrorDetail("A form part's headers could not be read within 1,024 bytes (Django's limit): the "
                                 "file's name is too long (a few hundred characters; fewer in scripts written with "
                                 "more bytes a character), or not written in UTF-8 (a script sending a name's bytes "
                                 "as they are on disk). Send it under a shorter name, in UTF-8.", code="parse_error")
    if isinstance(exc, NotAuthenticated):  # DRF's words do not say how to authenticate
        exc.detail = ErrorDetail("Sign in, or send `Authorization: Token <key>` (an administrator makes a key "
                                 "with `manage.py drf_create_token USER`).", code=exc.default_code)
    return exception_handler(exc, context)


@contextmanager
def refused_as_field(name: str) -> Iterator[None]:
    """An uploaded file refused for what it holds (empty, damaged, not an image: a 400) is that field's
    fault, said as a missing file is: {name: ["why"]}. One too large stays a 413 {"detail"}, as every body
    over a limit."""
    try:
        yield
    except ImageRejected as exc:
        if exc.status_code == 400 and not exc.field:
            exc.field = name
        raise


_URL_MARKER = "2147483647"  # an id no image has; reverse() is run once per URL name and request


def site_url(request: Request | None, name: str, args: Sequence[object] = ()) -> str:
    """Absolute URL of a page or a file (not an API endpoint), without the ?format= that DRF's reverse carries
    over from the request to its own links: a file asked for as JSON is the same file."""
    path = django_reverse(name, args=args)
    return request.build_absolute_uri(path) if request is not None else path


def image_url(request: Request | None, name: str, image_id: int) -> str:
    """Absolute URL of `name` (e.g. "gallery:image-file") for one image. Search responses list 50+
    images: resolving each URL from scratch cost more than the search itself, so the reversed URL
    is cached on the request as a template."""
    cache = request.__dict__.setdefault("_image_url_templates", {}) if request is not None else {}
    template = cache.get(name)
    if template is None:
        url = (reverse(name, args=[_URL_MARKER], request=request) if name.startswith("api-")
               else site_url(request, name, [_URL_MARKER]))
        template = cache[name] = tuple(url.rsplit(_URL_MARKER, 1))
    return f"{template[0]}{image_id}{template[1]}"


THROTTLE_LOCK = 0x7468726F74746C65  # pg_advisory_xact_lock key ("throttle"): one count updated at a time


class SharedScopedRateThrottle(ScopedRateThrottle):
    """DRF's scoped throttle counted in the shared cache (a database table), so a rate holds for the whole
    service, not once per web process and host. DRF reads the count, then writes it back: requests sent at
    once all read the same count (27 of 30 passed a limit of 10), so each reads and writes it under a lock."""

    cache = cast("BaseCache", ConnectionProxy(caches, settings.SHARED_CACHE))  # each thread's own connection

    def allow_request(self, request: Request, view: APIView) -> bool:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [THROTTLE_LOCK])
            return super().allow_request(request, view)


class ErrorSerializer(serializers.Serializer):
    """A refused request: what was wrong, for a person (refused input, unknown image, no permission)."""

    detail = serializers.CharField()


class ValidationErrorSerializer(serializers.Serializer):
    """Input that failed validation: each refused field's name (`non_field_errors` for the input as a
    whole) with its messages."""


class ValidationErrorSchema(OpenApiSerializerExtension):
    """The shape DRF gives a ValidationError: field names are the input's, so they are not fixed."""

    target_class = ValidationErrorSerializer

    def map_serializer(self, auto_schema: AutoSchema, direction: Direction) -> dict[str, Any]:
        return {"type": "object", "description": inspect.cleandoc(ValidationErrorSerializer.__doc__ or ""),
                "additionalProperties": {"type": "array", "items": {"type": "string"}}}


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """The schema's token scheme says both keywords ApiTokenAuthentication takes (drf-spectacular's own
    describes DRF's one prefix, "Token")."""

    target_class = "gallery.api_auth.ApiTokenAuthentication"
    name = "tokenAuth"
    priority = 1  # over drf-spectacular's extension for TokenAuthentication and its subclasses

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Authorization: Token <key>` (or `Bearer <key>`). An administrator makes a key "
                               "with `manage.py drf_create_token USER`."}


class SessionCookieScheme(SessionScheme):
    """drf-spectacular's session cookie scheme, for api_auth.SessionAuthentication (its own names DRF's class only)."""

    target_class = "gallery.api_auth.SessionAuthentication"


def error_response(description: str) -> OpenApiResponse:
    """A documented refusal with the shared {"detail": message} body."""
    return OpenApiResponse(ErrorSerializer, description=description)


# 400 where a serializer validates and a service may refuse: either of the two shapes.
BAD_REQUEST = PolymorphicProxySerializer(component_name="BadRequest",
                                         serializers=[ErrorSerializer, ValidationErrorSerializer],
                                         resource_type_field_name=None, many=False)
UNAUTHORIZED = error_response("No credentials where the gallery is private or the operation writes, or credentials "
                              "that are not valid (an unknown token); WWW-Authenticate names the scheme.")
FORBIDDEN = error_response("Signed in but not allowed (e.g. deleting or retrying another user's image), or a "
                           "session's write without its CSRF token.")
CALLER_REFUSED = {401: UNAUTHORIZED, 403: FORBIDDEN}  # an operation's answers to a caller it does not serve
NOT_FOUND = error_response("No such image.")


NO_NUL = r"^[^\x00]*$"  # DRF refuses text with a NUL character (PostgreSQL cannot store one)


# Not blank: with allow_blank, drf-spectacular adds the blank string as a schema of its own (oneOf).
@extend_schema_field({"type": "string", "pattern": r"^[^\x00]+$"})
class TextField(serializers.CharField):
    """Text, as DRF takes it: without NUL characters (the schema says so)."""


@extend_schema_field({"type": "string", "format": "binary"})
class UploadField(serializers.FileField):
    """A file part of a multipart/form-data body: one (DRF would keep the last of several, dropping
    the others without a word)."""

    default_error_messages = {
        "several": "Send one file in this field ({count} were sent): one picture per request.",
        # A part whose headers are not UTF-8 (curl sending a Latin-1 file name as it is on disk), or whose file
        # name is empty, "." or ".." (nothing left once its folders are taken off), is skipped by Django's
        # parser: "No file was submitted." of a file that was sent.
        "required": "No file was submitted: send it as a file part of a multipart/form-data body, its headers "
                    "(the file name) in UTF-8 and its file name a name (not empty, \".\" or \"..\"); a part "
                    "without either cannot be read."}
    takes_repeats = True  # says so itself, in a picture's words (ClosedInput)

    def get_value(self, dictionary: Any) -> Any:
        if html.is_html_input(dictionary) and len(files := dictionary.getlist(self.field_name)) > 1:
            return files
        return super().get_value(dictionary)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, list):
            self.fail("several", count=len(data))
        return super().to_internal_value(data)


class ClosedInput(serializers.Serializer):
    """A request body that names only its fields: an unknown one (a typo such as "lables") is refused
    with the fields listed, rather than ignored while the request seems to have worked. The schema says
    so too (request_bodies_closed)."""

    IGNORED = frozenset({"csrfmiddlewaretoken"})  # an HTML form's, where a page posts one
    ALSO_ACCEPTED: tuple[str, ...] = ()  # read by the view, not the serializer (a page number)

    def to_internal_value(self, data: Any) -> Any:
        accepted = self.IGNORED | set(self.ALSO_ACCEPTED)
        unknown = sorted(set(data) - set(self.fields) - accepted) if isinstance(data, Mapping) else []
        if unknown:
            known = ", ".join([*self.fields, *self.ALSO_ACCEPTED])
            raise serializers.ValidationError({name: [f"Unknown field; the fields are: {known}."] for name in unknown})
        if html.is_html_input(data):  # a form or query string may repeat a field: DRF keeps the last value
            single = [name for name, field in self.fields.items() if not getattr(field, "takes_repeats", False)]
            repeated = {name: len(data.getlist(name)) for name in [*single, *self.ALSO_ACCEPTED]
                        if len(data.getlist(name)) > 1}
            if repeated:
                raise serializers.ValidationError({name: [f"Send this field once ({count} values were sent)."]
                                                   for name, count in repeated.items()})
        return super().to_internal_value(data)


NO_BODY_FIELDS = "This operation takes no fields; send none."


def body_refused(request: Request) -> None:
    """For an operation that takes no body (a delete, a retry): a field sent ({"dry_run": true} to a DELETE) is
    refused as ClosedInput refuses an unknown one, not ignored while the request worked (the image deleted);
    a body of a type no parser reads is a 415 (DRF's, on reading it)."""
    data = request.data
    fields = sorted(set(data) - ClosedInput.IGNORED) if isinstance(data, Mapping) else ["non_field_errors"]
    if fields:
        raise serializers.ValidationError({name: [NO_BODY_FIELDS] for name in fields})


BODY_FIELDS_REFUSED = {
    400: OpenApiResponse(ValidationErrorSerializer, description="A field in the body: the operation takes none."),
    415: error_response("A body of a type no parser reads (JSON, a form or multipart)."),
}


def request_bodies_closed(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: every component a request body refers to allows no other
    properties (additionalProperties: false), as ClosedInput refuses them; every write documents the
    refusals of a body's length (BODY_REFUSALS) and every operation the 406 of a format it does not write
    and the 400 of too many fields, where it says none of its own."""
    components = result.get("components", {}).get("schemas", {})
    by_method = [(method, operation) for path in result.get("paths", {}).values()
                 for method, operation in path.items() if isinstance(operation, dict)]  # not "parameters"
    for method, operation in by_method:
        for media in operation.get("requestBody", {}).get("content", {}).values():
            name = media.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
            if name in components:
                components[name]["additionalProperties"] = False
        refusals = (*BODY_REFUSALS.items(), NOT_ACCEPTABLE, TOO_MANY_FIELDS) if method in WRITES \
            else (NOT_ACCEPTABLE, TOO_MANY_FIELDS)
        for code, description in refusals:
            operation["responses"].setdefault(code, {
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                "description": description})
    return result


# What the site answers any write before its view reads the body (the site's request limits), and any
# request for a format the API does not write.
WRITES = {"post", "put", "patch", "delete"}
NOT_ACCEPTABLE = ("406", "A ?format= or an Accept header asking for something other than JSON (or the "
                  "browsable page): the message names what may be asked for.")
TOO_MANY_FIELDS = ("400", f"A query string (or form) of more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} fields, "
                   "Django's limit.")
BODY_REFUSALS = {
    "411": "A body sent in chunks, without a Content-Length: the site needs the length to check it first.",
    "413": "A body over the request limits: the whole request over one file at the upload limit and the "
           "form's fields, or its data (files aside) over DATA_UPLOAD_MAX_MEMORY_SIZE bytes.",
}


class ImageUrlFields(serializers.Serializer):
    """file_url and thumbnail_url of the image at `image_source` (a dotted attribute, "" = the object)."""

    image_source = ""
    file_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    def _image(self, obj: Any) -> Image:
        for attribute in filter(None, self.image_source.split(".")):
            obj = getattr(obj, attribute)
        return cast(Image, obj)

    @extend_schema_field(OpenApiTypes.URI)
    def get_file_url(self, obj: Any) -> str:
        return image_url(self.context.get("request"), "gallery:image-file", self._image(obj).pk)

    @extend_schema_field(OpenApiTypes.URI)
    def get_thumbnail_url(self, obj: Any) -> str:
        image = self._image(obj)  # versioned as the pages' (a reused id is another URL)
        return image_url(self.context.get("request"), "gallery:image-thumbnail", image.pk) + thumbnail_version(image)


class GalleryPermission(BasePermission):
    """Reads follow IMAGINAITION_PUBLIC_GALLERY (private by default); writes need a signed-in user."""

    message = "Sign in to use the gallery."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in SAFE_METHODS:
            return can_view_gallery(request.user)
        return bool(request.user and request.user.is_authenticated)

    @staticmethod
    def anonymous_allowed(method: str) -> bool:
        """For the schema (GallerySchema): whether a request without credentials may use `method`."""
        return method.upper() in SAFE_METHODS and can_view_gallery(AnonymousUser())


class GalleryReadPermission(BasePermission):
    """A read sent as a POST (a search): the gallery's read rule whatever the method."""

    message = GalleryPermission.message

    def has_permission(self, request: Request, view: APIView) -> bool:
        return can_view_gallery(request.user)

    @staticmethod
    def anonymous_allowed(method: str) -> bool:
        return can_view_gallery(AnonymousUser())


class MaskSerializer(serializers.Serializer):
    """One label's soft mask of an image; mask_url serves it as an 8-bit greyscale PNG at the size of the
    picture the models saw (longest side at most 1024 px), each pixel the label's probability × 255
    (the pages outline the pixels above the user's mask threshold)."""

    id = serializers.IntegerField()
    label = serializers.CharField()  # type: ignore[assignment]  # the field's name, not Field.label
    class_index = serializers.IntegerField()
    area_fraction = serializers.FloatField()
    segmenter = serializers.CharField()
    mask_url = serializers.SerializerMethodField()

    @extend_schema_field(OpenApiTypes.URI)
    def get_mask_url(self, mask: Any) -> str:
        return site_url(self.context.get("request"), "gallery:mask-png", [mask.image_id, mask.pk])


class ImageOutputSerializer(ImageUrlFields):
    """A stored image, its processing state (status: vectors; masks_status: masks) and its URLs."""

    id = serializers.IntegerField()
    original_name = serializers.CharField()
    sha256 = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    format = serializers.CharField()
    byte_size = serializers.IntegerField()
    created_at = serializers.DateTimeField(default_timezone=dt_timezone.utc)  # UTC ("Z") whatever TIME_ZONE
    status = serializers.ChoiceField(
        choices=ProcessingStatus.choices,
        help_text="its search vectors: pending (queued or being computed), ready (searchable), failed (`error` "
                  "says why; POST .../retry/ queues it again). Poll GET /api/images/<id>/ until neither status is "
                  "pending")
    error = serializers.CharField()
    masks_status = serializers.ChoiceField(choices=ProcessingStatus.choices,
                                           help_text="its labels and masks, as `status` (why a failure: `masks_error`)")
    masks_error = serializers.CharField()


class EmbeddedBySerializer(serializers.Serializer):
    space = serializers.CharField()
    model_key = serializers.CharField()


class ImageDetailOutputSerializer(ImageOutputSerializer):
    """A stored image with its masks and the models that computed its vectors."""

    masks = MaskSerializer(many=True)
    embedded_by = serializers.SerializerMethodField()

    @extend_schema_field(EmbeddedBySerializer(many=True))
    def get_embedded_by(self, image: Image) -> list[dict[str, str]]:
        return [{"space": e.space, "model_key": e.model_key} for e in image.embeddings.all()]


class ImageAddedOutputSerializer(ImageOutputSerializer):
    """The image an upload added, or the stored one with the same bytes (duplicate: true)."""

    duplicate = serializers.SerializerMethodField()

    def get_duplicate(self, image: Image) -> bool:
        return bool(self.context.get("duplicate", False))


class RepeatableTextField(TextField):
    """Text that a query string may repeat (?label=cat&label=dog): the values joined with commas, as
    if sent as "cat,dog" (DRF would keep only the last, dropping the others without a word)."""

    takes_repeats = True  # ClosedInput refuses other repeated fields

    def get_value(self, dictionary: Any) -> Any:
        if html.is_html_input(dictionary) and (values := dictionary.getlist(self.field_name)):
            return ",".join(values)
        return super().get_value(dictionary)


class ImageListQuerySerializer(ClosedInput):
    """The list's query: a parameter it does not read (?labels=, ?status=) is refused, not ignored while
    the whole gallery comes back as if filtered."""

    ALSO_ACCEPTED = ("page", "page_size", "format")  # the paginator's; DRF's format override

    label = RepeatableTextField(  # type: ignore[assignment]  # the field's name, not Field.label
        required=False, allow_blank=True, max_length=1000,
        help_text="only images with a mask of this label (or of one of these: cat,dog, or the parameter "
                  "repeated), in any letter case; a label no mask has is refused, naming the known ones")

    upto = serializers.IntegerField(
        required=False, min_value=1,
        help_text="only images with an id up to this one. The next and previous links carry the newest id of "
                  "the list when its first page was asked for, so images added while a client pages do not "
                  "shift the pages (it would see some twice)")
    before = serializers.IntegerField(
        required=False, min_value=1,
        help_text="the page of images just older than this id (the next links carry the last id of their "
                  "page, so images deleted while a client pages do not shift the pages: it would miss some)")
    after = serializers.IntegerField(
        required=False, min_value=0,
        help_text="the page of images just newer than this id (what the previous links carry)")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        given = [name for name in ("page", "before", "after") if name in self.initial_data]
        if len(given) > 1:
            raise serializers.ValidationError({given[1]: [f"Give one of page, before and after, not {given[0]} "
                                                          f"and {given[1]}: each says which page to send."]})
        return attrs

    def validate_label(self, value: str) -> str:
        wanted = selectors.label_names(value)
        if unknown := selectors.labels_unknown_message(wanted, selectors.labels_as_stored(wanted)):
            raise serializers.ValidationError(unknown)
        return value


class ImageUploadSerializer(ClosedInput):
    file = UploadField(allow_empty_file=True)  # image_add explains why empty is refused


@extend_schema(exclude=True)  # not an operation of the API
class NoSuchImageApi(APIView):
    """Any other path under images/ (an id that is not a whole number): the same JSON 404 as an
    unknown id, rather than the site's HTML page."""

    permission_classes = [GalleryPermission]
    metadata_class = None  # OPTIONS too

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotFound("No such image.")


class ImagePagination(PageNumberPagination):
    """Pages of PAGE_SIZE images, newest first; ?page_size= asks for another size, up to max_page_size.
    A page is asked for by number (?page=) or by the id it follows (?before=, ?after=: `before_id`,
    `after_id`, read by the view). The next and previous links name the page by the ids at its edge, so
    images deleted while a client pages do not shift the pages (it missed images, and a link could point past
    the last page: a 404), and carry `upto` (pinned_upto), the list's newest id when it was first asked for, so
    images added meanwhile do not either."""

    page_size_query_param = "page_size"
    max_page_size = 500
    pinned_upto: int | None = None
    before_id: int | None = None
    after_id: int | None = None

    def paginate_queryset(self, queryset: QuerySet[Image], request: Request,  # type: ignore[override]
                          view: Any = None) -> list[Image]:
        self.request, self.queryset = request, queryset
        if self.before_id is None and self.after_id is None:
            rows = list(super().paginate_queryset(queryset, request, view) or [])
            self.total = self.page.paginator.count if self.page else 0
        else:
            size = self.get_page_size(request) or self.page_size
            if self.before_id is not None:
                rows = list(queryset.filter(pk__lt=self.before_id)[:size])
            else:  # the images just newer: the oldest of them first, then turned newest first
                rows = list(queryset.filter(pk__gt=self.after_id).reverse()[:size])[::-1]
            self.total = queryset.count()
        self.rows = rows
        return rows

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"count": self.total, "next": self.get_next_link(), "previous": self.get_previous_link(),
                         "results": data})

    def get_next_link(self) -> str | None:
        edge = self.rows[-1].pk if self.rows else self.after_id + 1 if self.after_id is not None else None
        if edge is None or not self.queryset.filter(pk__lt=edge).exists():
            return None
        return self._link("before", edge)

    def get_previous_link(self) -> str | None:
        edge = self.rows[0].pk if self.rows else self.before_id - 1 if self.before_id is not None else None
        if edge is None or not self.queryset.filter(pk__gt=edge).exists():
            return None
        return self._link("after", edge)

    def _link(self, name: str, edge: int) -> str:
        url = cast(Request, self.request).build_absolute_uri()
        for other in (self.page_query_param, "before", "after"):
            url = remove_query_param(url, other)
        url = replace_query_param(url, name, edge)
        return replace_query_param(url, "upto", self.pinned_upto) if self.pinned_upto else url

    def get_page_size(self, request: Request) -> int | None:
        # DRF answers an unusable ?page_size= (0, -5, "abc") with its default without a word: a client
        # asking for that is told so. Above the maximum it is capped (the next link goes on from there).
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None or raw == "":
            return self.page_size
        try:
            # isdecimal, not isdigit: "²" is a digit that int() refuses
            value = int(raw) if raw.isdecimal() else 0
        except ValueError:  # more digits than int() reads: far above the maximum
            value = self.max_page_size
        if value < 1:
            raise ValidationError({self.page_size_query_param: [
                f"Give a whole number of images per page, at least 1 (at most {self.max_page_size} are "
                f"sent); {raw[:20]!r} is not."]})
        return min(value, self.max_page_size)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:  # what get_page_size takes
                parameter["schema"]["minimum"] = 1
                parameter["description"] = f"Images per page (at least 1; above {self.max_page_size}, that many)."
        return parameters


class NoSuchEndpointApi(APIView):
    """Any path under /api/ that names no endpoint: a JSON 404 that points at the list, rather than the
    site's HTML page (imaginaition_site.middleware serves an endpoint's path without its final "/")."""

    authentication_classes = []
    permission_classes = []
    metadata_class = None  # OPTIONS too

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotFound(f"There is no API endpoint at {request.path}; GET /api/ lists them.")

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[Any, str]:
        """No endpoint, whatever format was asked for: its 404, not a 406 about formats."""
        return super().perform_content_negotiation(request, force=True)


class ImageListCreateApi(APIView):
    name = "Images"  # the browsable page's title (listing and adding)
    permission_classes = [GalleryPermission]
    parser_classes = [MultiPartParser]  # a file comes only so; any other body is a 415, as the schema says
    pagination_class = ImagePagination  # the envelope: count, next, previous, results

    @extend_schema(parameters=[ImageListQuerySerializer],
                   responses={200: ImageOutputSerializer(many=True),
                              400: OpenApiResponse(ValidationErrorSerializer, description="A label no mask has "
                                                   "(named with the known ones), labels over 1,000 characters, "
                                                   "a parameter the list does not read, or a page_size that is "
                                                   "not a whole number of at least 1."),
                              **CALLER_REFUSED,
                              404: error_response("A page number that is not a page of the list.")})
    def get(self, request: Request) -> Response:
        query = ImageListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        paginator = self.pagination_class()
        upto = query.validated_data.get("upto")
        images = selectors.image_list(label=query.validated_data.get("label", ""), upto=upto)
        paginator.pinned_upto = upto or selectors.newest_id(images)
        paginator.before_id, paginator.after_id = query.validated_data.get("before"), query.validated_data.get("after")
        page = paginator.paginate_queryset(images, request, view=self)
        return paginator.get_paginated_response(
            ImageOutputSerializer(page, many=True, context={"request": request}).data)

    @extend_schema(request={"multipart/form-data": ImageUploadSerializer},
                   parameters=[OpenApiParameter("Location", OpenApiTypes.URI, OpenApiParameter.HEADER, response=[201],
                                                description="The added image's address in the API.")],
                   responses={201: OpenApiResponse(ImageAddedOutputSerializer, description="Added."),
                              200: OpenApiResponse(ImageAddedOutputSerializer,
                                                   description="Already stored (the same bytes): that image."),
                              400: OpenApiResponse(BAD_REQUEST, description="No file, or a file that is not an "
                                                   "image we accept (damaged, truncated, another format)."),
                              **CALLER_REFUSED,
                              413: error_response("A file over the upload limit, or an image with too many pixels."),
                              415: error_response("A body that is not multipart/form-data."),
                              503: error_response("The file could not be stored (the media storage failed); "
                                                  "nothing was kept: try again once it is fixed.")})
    def post(self, request: Request) -> Response:
        serializer = ImageUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        with refused_as_field("file"):
            result = services.image_add(data=read_upload(upload), original_name=upload_name(upload), user=request.user)
        body = ImageAddedOutputSerializer(result.image,
                                          context={"request": request, "duplicate": not result.created}).data
        if not result.created:
            return Response(body, status=status.HTTP_200_OK)
        return Response(body, status=status.HTTP_201_CREATED,
                        headers={"Location": image_url(request, "api-image", result.image.pk)})


class ImageDetailApi(APIView):
    permission_classes = [GalleryPermission]

    def _get(self, image_id: int) -> Image:
        image = selectors.image_detail(image_id=image_id)
        if image is None:
            raise NotFound("No such image.")
        return image

    @extend_schema(responses={200: ImageDetailOutputSerializer, **CALLER_REFUSED, 404: NOT_FOUND})
    def get(self, request: Request, image_id: int) -> Response:
        return Response(ImageDetailOutputSerializer(self._get(image_id), context={"request": request}).data)

    @extend_schema(responses={204: OpenApiResponse(description="Deleted, with its masks, vectors and files."),
                              **CALLER_REFUSED, 404: NOT_FOUND, **BODY_FIELDS_REFUSED})
    def delete(self, request: Request, image_id: int) -> Response:
        body_refused(request)
        image = self._get(image_id)
        if not can_delete_image(request.user, image):
            raise PermissionDenied(DELETE_REFUSED)
        if not services.image_delete(image=image):
            raise NotFound("No such image (deleted meanwhile, by another request).")
        return Response(status=status.HTTP_204_NO_CONTENT)


class ImageRetryApi(APIView):
    permission_classes = [GalleryPermission]

    @extend_schema(request=None,
                   responses={200: OpenApiResponse(ImageOutputSerializer, description="Failed work (vectors, "
                                                   "masks or both) queued again; otherwise the image unchanged."),
                              **CALLER_REFUSED, 404: NOT_FOUND, **BODY_FIELDS_REFUSED})
    def post(self, request: Request, image_id: int) -> Response:
        body_refused(request)
        image = Image.objects.filter(pk=image_id).first()
        if image is None:
            raise NotFound("No such image.")
        if not can_retry_image(request.user, image):
            raise PermissionDenied(RETRY_REFUSED)
        image = services.image_retry(image=image)
        return Response(ImageOutputSerializer(image, context={"request": request}).data)
