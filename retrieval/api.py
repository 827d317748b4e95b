"""REST endpoints of the retrieval app. Thin: validate, call one service/selector, serialize."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

from django.middleware.csrf import get_token
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import (Direction, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field,
                                   inline_serializer)
from rest_framework import serializers, status
from rest_framework.fields import empty
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import SAFE_METHODS, AllowAny, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.utils import html
from rest_framework.views import APIView

from gallery.api import (
    BAD_REQUEST,
    BODY_FIELDS_REFUSED,
    CALLER_REFUSED,
    ClosedInput,
    GalleryPermission,
    GalleryReadPermission,
    NO_NUL,
    ImageUrlFields,
    SharedScopedRateThrottle,
    TextField,
    UploadField,
    ValidationErrorSerializer,
    body_refused,
    error_response,
    refused_as_field,
    site_url,
)
from gallery.api_parsing import JsonParser
from gallery.access import can_view_gallery
from gallery.imaging import read_upload, upload_name
from gallery.services import shows_anything
from retrieval import status as status_service
from retrieval.preferences import (PreferenceOverrides, preference_defaults, preference_limits, preferences_get,
                                   preferences_update)
from retrieval.search import TEXT_MAX_CHARS, Query, labels_parse, search_for
from retrieval.spaces import Space

if TYPE_CHECKING:
    from drf_spectacular.openapi import AutoSchema


class OptionalBooleanField(serializers.BooleanField):
    """A yes/no that is absent when not given, in form data too: DRF reads a missing form field as
    False (an unticked checkbox), which silently turned "both first" off for multipart searches."""

    default_empty_html = empty


class SpaceField(serializers.ChoiceField):
    """semantic or content: an index (a search's policy, the preferred index of the preferences)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Space.values, **kwargs)


class SpaceFieldSchema(OpenApiSerializerFieldExtension):
    """Every SpaceField refers to one "Space" component (drf-spectacular would name the same choice
    set after each field: PolicyEnum, PreferredIndexEnum)."""

    target_class = SpaceField

    def map_serializer_field(self, auto_schema: AutoSchema, direction: Direction) -> dict[str, Any]:
        component = ResolvedComponent(name="Space", type=ResolvedComponent.SCHEMA, object="Space", schema={
            "type": "string", "enum": list(Space.values), "description": "semantic: by meaning; content: by look"})
        auto_schema.registry.register_on_missing(component)
        return component.ref


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                      "description": "labels to keep: \"cat,dog\", a list [\"cat\", \"dog\"], or the form field "
                                     "repeated; any letter case: keep only images with a mask of one of them"})
class LabelsField(serializers.Field):
    """A label filter as clients send one: comma-separated text, a JSON list, or a repeated form field
    (DRF would keep only a repeated field's last value, dropping the others without a word)."""

    MAX_CHARACTERS = 1000
    takes_repeats = True  # ClosedInput refuses other repeated fields

    def get_value(self, dictionary: Any) -> Any:
        if html.is_html_input(dictionary):
            return dictionary.getlist(self.field_name) or empty
        return dictionary.get(self.field_name, empty)

    def to_internal_value(self, data: Any) -> tuple[str, ...]:
        values = [data] if isinstance(data, str) else data
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise serializers.ValidationError('Give labels as text ("cat,dog") or a list of texts (["cat", "dog"]).')
        if any("\x00" in value for value in values):
            raise serializers.ValidationError("Null characters are not allowed.")
        if sum(map(len, values)) > self.MAX_CHARACTERS:
            raise serializers.ValidationError(f"Give at most {self.MAX_CHARACTERS} characters of labels.")
        return labels_parse(values)

    def to_representation(self, value: tuple[str, ...]) -> str:
        return ",".join(value)


def _preference_field(name: str) -> serializers.IntegerField:
    """An optional whole number within the preference's limits (the SearchPreferences model's)."""
    low, high = preference_limits(name)
    return serializers.IntegerField(required=False, min_value=low, max_value=high)


# Only with a token or session that is not valid: these operations are open to everyone otherwise.
INVALID_CREDENTIALS = error_response("Credentials that are not valid (an unknown token).")
CSRF_MISSING = error_response("A session's write without its CSRF token (signed in, or a public gallery's visitor).")


class ApiRootApi(APIView):
    name = "API root"  # its page's title and first breadcrumb
    permission_classes = [AllowAny]

    @extend_schema(responses={200: inline_serializer("ApiRoot", {
        "images": serializers.URLField(), "search": serializers.URLField(), "preferences": serializers.URLField(),
        "status": serializers.URLField(), "schema": serializers.URLField(), "docs": serializers.URLField()}),
        401: INVALID_CREDENTIALS})
    def get(self, request: Request) -> Response:
        return Response({
            "images": reverse("api-images", request=request),
            "search": reverse("api-search", request=request),
            "preferences": reverse("api-preferences", request=request),
            "status": reverse("api-status", request=request),
            "schema": reverse("api-schema", request=request),
            "docs": site_url(request, "api-docs"),  # a page: its ?format= is not the API's
        })


class IndexHealthSerializer(serializers.Serializer):
    """One FAISS index against the vectors PostgreSQL holds for its model."""

    owner = serializers.CharField(help_text="image or region vectors")
    space = serializers.CharField()
    model_key = serializers.CharField()
    state = serializers.CharField(help_text="ok, building index, index missing, count mismatch or index file "
                                            "missing")
    database_count = serializers.IntegerField()
    index_count = serializers.IntegerField(allow_null=True)
    version = serializers.IntegerField(allow_null=True)


class IntegritySerializer(serializers.Serializer):
    state = serializers.CharField(help_text="ok, or the first problem found")
    missing_files = serializers.ListField(child=serializers.IntegerField(),
                                          help_text="ids of images whose stored file is gone (checked on request)")
    indexes = IndexHealthSerializer(many=True)


class WeightFileSerializer(serializers.Serializer):
    """One weight file of an active model."""

    model_key = serializers.CharField()
    filename = serializers.CharField()
    present = serializers.BooleanField()
    verified = serializers.BooleanField(allow_null=True, help_text="whether it matches the SHA-256 that "
                                        "weights/README.md lists; null: missing, or shipped with no hash to check")


class StatusSerializer(serializers.Serializer):
    """Active model profile, database, image counts by status, queued tasks, index integrity."""

    profile = serializers.CharField()
    models = serializers.DictField(child=serializers.CharField())
    serving = serializers.DictField(child=serializers.CharField(),
                                    help_text="models answering queries (differ from models while a model change re-embeds)")
    device = serializers.CharField(help_text="where this web process runs its models: cpu, cuda or mps")
    torch_threads = serializers.IntegerField(help_text="CPU threads torch uses in this web process")
    precision = serializers.DictField(child=serializers.CharField(),
                                      help_text="per model loaded in this web process: fp32, bf16 or fp16 and why")
    database = serializers.CharField()
    pgvector_version = serializers.CharField(allow_null=True)
    images = serializers.DictField(child=serializers.IntegerField())
    masks_pending = serializers.IntegerField()
    masks_failed = serializers.IntegerField(help_text="images whose segmentation failed (their vectors may be "
                                            "ready): each image's masks_error says why; retry_failed")
    region_vectors = serializers.DictField(child=serializers.IntegerField(),
                                           help_text="region vectors (search by region) per space, active models")
    queued_tasks = serializers.IntegerField()
    integrity = IntegritySerializer()
    weights = WeightFileSerializer(many=True, help_text="the active models' weight files")


class StatusApi(APIView):
    """Active model profile, database, image counts by status, queued tasks, index integrity. Read like
    the gallery: on a private one (the default), only signed-in callers see its counts and files."""

    permission_classes = [GalleryPermission]

    @extend_schema(parameters=[
        OpenApiParameter("check_files", str, description="1 (staff only): also check that every stored file "
                         "exists; otherwise ignored"),
        OpenApiParameter("heal", str, description="1 (staff only): rebuild missing or stale indexes in the "
                         "background; otherwise ignored")],
        responses={200: StatusSerializer, **CALLER_REFUSED})
    def get(self, request: Request) -> Response:
        """?check_files=1 (staff) also checks that every stored file exists; ?heal=1 (staff) rebuilds
        missing or stale indexes in the background."""
        staff = request.user.is_staff
        report = status_service.service_status(check_files=staff and request.query_params.get("check_files") == "1")
        if staff and request.query_params.get("heal") == "1" and report.integrity["state"] != "ok":
            status_service.heal_start()
        return Response(StatusSerializer(report.as_dict()).data)


class WorkerCheckStartApi(APIView):
    """Enqueue a ping task; a running worker answers it (see WorkerCheckResultApi)."""

    throttle_classes = [SharedScopedRateThrottle]
    throttle_scope = "worker_check"

    @extend_schema(request=None, responses={202: inline_serializer("WorkerCheck", {"task_id": serializers.CharField()}),
                                            429: error_response("Asked too often (IMAGINAITION_WORKER_CHECK_RATE, "
                                                                "10 a minute by default)."),
                                            **CALLER_REFUSED, **BODY_FIELDS_REFUSED})
    def post(self, request: Request) -> Response:
        body_refused(request)
        task_id = status_service.worker_check_start()
        return Response({"task_id": task_id}, status=status.HTTP_202_ACCEPTED)


class WorkerCheckResultApi(APIView):
    class TaskIdSerializer(serializers.Serializer):
        task_id = serializers.CharField(allow_blank=True, trim_whitespace=False)  # refuses NUL characters

    @extend_schema(parameters=[OpenApiParameter("task_id", str, OpenApiParameter.PATH, pattern=NO_NUL)],
                   responses={200: inline_serializer("WorkerCheckResult", {
        "done": serializers.BooleanField(help_text="false until a worker ran the task (or for an unknown id)"),
        "success": serializers.BooleanField(required=False), "result": serializers.JSONField(required=False),
        "stopped": serializers.DateTimeField(required=False)}),
        400: OpenApiResponse(ValidationErrorSerializer, description="A task id no task can have (with a NUL "
                             "character)."),
        **CALLER_REFUSED})
    def get(self, request: Request, task_id: str) -> Response:
        checked = self.TaskIdSerializer(data={"task_id": task_id})
        checked.is_valid(raise_exception=True)
        result = status_service.worker_check_result(task_id)
        if result is None:
            return Response({"done": False})
        return Response({"done": True, **result})


class SearchQuerySerializer(ClosedInput):
    """Search by a stored image (image_id) or by words (text): exactly one of them. k, intersection,
    policy and split override the caller's preferences for this query."""

    image_id = serializers.IntegerField(required=False, help_text="a stored image that has its vectors")
    mask_id = serializers.IntegerField(required=False, help_text="a stored mask: search with its region")
    text = TextField(required=False, allow_blank=True, max_length=TEXT_MAX_CHARS)
    label = TextField(required=False, max_length=64,  # type: ignore[assignment]  # a field named label
                      help_text="with image: search with the upload's region of this label")
    labels = LabelsField(required=False)
    k = _preference_field("k")
    intersection = OptionalBooleanField(required=False, help_text="images found by both indexes first")
    policy = SpaceField(required=False, help_text="the preferred index")
    split = _preference_field("split")
    include_self = serializers.BooleanField(required=False, default=False,
                                            help_text="a stored image may find itself")

    def validate(self, data: dict[str, object]) -> dict[str, object]:
        if isinstance(data.get("text"), str) and not shows_anything(cast(str, data["text"])):
            data["text"] = ""  # spaces are trimmed already; a lone U+FEFF is as blank
        given = [name for name in ("image_id", "mask_id", "image", "text") if data.get(name) not in (None, "")]
        if not given and "text" in data:
            raise serializers.ValidationError({"text": ["The text is blank: type some words."]})
        if len(given) != 1:
            raise serializers.ValidationError("Give exactly one of image_id, mask_id, image or text.")
        return data


class SearchUploadQuerySerializer(SearchQuerySerializer):
    """Search by a stored image (image_id), an uploaded picture (image, not stored) or words (text):
    exactly one of them. k, intersection, policy and split override the caller's preferences for
    this query."""

    image = UploadField(required=False, allow_empty_file=True)


class MatchedRegionSerializer(serializers.Serializer):
    """The image's region that matched a region query (outline it with the mask's overlay)."""

    mask_id = serializers.IntegerField(source="pk")
    label = serializers.CharField()  # type: ignore[assignment]  # a field named label


class SearchHitSerializer(ImageUrlFields):
    """One similar image: which index found it (both, semantic, content) and its similarity in each."""

    image_source = "image"
    image_id = serializers.IntegerField(source="image.pk")
    original_name = serializers.CharField(source="image.original_name")
    retrieved_by = serializers.ChoiceField(choices=["both", "semantic", "content"])
    semantic_similarity = serializers.FloatField(allow_null=True)
    content_similarity = serializers.FloatField(allow_null=True)
    region = MatchedRegionSerializer(allow_null=True, help_text="region searches: the region that matched")
    image_url = serializers.SerializerMethodField(method_name="get_file_url")
    file_url = None  # type: ignore[assignment]  # called image_url here


class SearchCountsSerializer(serializers.Serializer):
    both = serializers.IntegerField()
    semantic = serializers.IntegerField()
    content = serializers.IntegerField()


class SearchPreferencesSerializer(serializers.Serializer):
    """The preferences this query ran with: the saved ones with this request's overrides; a text query has
    no content part, so it runs on the semantic index alone (intersection_first false, preferred_index
    semantic, split 100), whatever was asked."""

    k = serializers.IntegerField()
    intersection_first = serializers.BooleanField()
    preferred_index = SpaceField()
    split = serializers.IntegerField()


class SearchResultSerializer(serializers.Serializer):
    """The similar images in the policy's order, and how the query was answered."""

    results = SearchHitSerializer(many=True)
    counts = SearchCountsSerializer()
    engine = serializers.CharField(help_text="faiss, pgvector, or both joined by + when they shared the query")
    engines = serializers.DictField(child=serializers.CharField(), help_text="the engine that answered each space")
    models = serializers.DictField(child=serializers.CharField())
    elapsed_ms = serializers.FloatField()
    preferences = SearchPreferencesSerializer()


class SearchApi(APIView):
    """Find similar images by a stored image, an uploaded image or text, with the merge policy."""

    permission_classes = [GalleryReadPermission]  # private by default: no credentials get 401
    parser_classes = [MultiPartParser, FormParser, JsonParser]

    @extend_schema(request={"multipart/form-data": SearchUploadQuerySerializer,
                            "application/json": SearchQuerySerializer,
                            "application/x-www-form-urlencoded": SearchQuerySerializer},
                   responses={200: SearchResultSerializer,
                              400: OpenApiResponse(BAD_REQUEST, description="Not exactly one of image_id, mask_id, "
                                                   "image or text; an image without vectors yet; blank "
                                                   "words; an upload that is not an image we accept; a label the "
                                                   "upload does not have; a region too small; an unknown filter label."),
                              404: error_response("No such image (image_id) or mask (mask_id)."),
                              **CALLER_REFUSED,
                              409: error_response("image with label: the gallery was reset while the upload "
                                                  "was segmented; send it again."),
                              413: error_response("An upload over the upload limit, or with too many pixels."),
                              415: error_response("A body that is not JSON, a form or multipart/form-data."),
                              503: error_response("image with label: no interactive worker segmented the upload "
                                                  "in time (IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT)."),
                              500: error_response("image with label: the segmenter failed on the upload.")})
    def post(self, request: Request) -> Response:
        # POST /api/search/?k=1 searched with the saved k, the address's fields unread and unsaid.
        if in_address := sorted(set(request.query_params) - {"format"}):
            raise serializers.ValidationError({name: ["A search's fields go in the body (JSON, a form or multipart), "
                                                      "not in the address, where they would be ignored."]
                                               for name in in_address})
        serializer = SearchUploadQuerySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = data.get("image")
        labels = data.get("labels", ())
        query = Query(image_id=data.get("image_id"), mask_id=data.get("mask_id"), text=data.get("text") or None,
                      upload=read_upload(upload) if upload is not None else None,
                      upload_name=upload_name(upload) if upload is not None else "upload",
                      include_self=data["include_self"],
                      label=data.get("label") or None, labels=labels)
        wanted = {"k": data.get("k"), "intersection_first": data.get("intersection"),
                  "preferred_index": data.get("policy"), "split": data.get("split")}
        overrides = PreferenceOverrides(**{name: value for name, value in wanted.items() if value is not None})  # type: ignore[typeddict-item]
        with refused_as_field("image"):
            response = search_for(user=request.user, session=request.session, query=query, overrides=overrides)
        return Response({
            "results": SearchHitSerializer(response.hits, many=True, context={"request": request}).data,
            "counts": response.counts, "engine": response.engine, "engines": response.engines,
            "models": response.models, "elapsed_ms": round(response.elapsed_ms, 2),
            "preferences": asdict(response.preferences),
        })


class PreferencesUpdateSerializer(ClosedInput):
    """The preferences to change; the others keep their values (PUT and PATCH both update in part)."""

    mask_threshold = _preference_field("mask_threshold")
    k = _preference_field("k")
    intersection_first = OptionalBooleanField(required=False)
    preferred_index = SpaceField(required=False)
    split = _preference_field("split")


class PreferencesSerializer(serializers.Serializer):
    """The caller's search preferences (per user; per session for anonymous visitors)."""

    mask_threshold = serializers.IntegerField(
        help_text="percent: the pages outline a mask's pixels above it. The API's mask_url is the soft mask "
                  "itself (0-255 a pixel: cut it where you like); region vectors use the default cut, "
                  f"{preference_defaults()['mask_threshold']}, whatever a user chose, so stored and asked "
                  "regions compare alike")
    k = serializers.IntegerField(help_text="how many similar images a search returns")
    intersection_first = serializers.BooleanField(help_text="images found by both indexes first")
    preferred_index = SpaceField()
    split = serializers.IntegerField(help_text="percent of the remaining places for the preferred index")


class PreferencesPermission(BasePermission):
    """Anyone reads them (the defaults, signed out); an anonymous visitor changes them only where the gallery
    is public: on a private one they serve no search, and each change stored a session row for nothing."""

    message = GalleryPermission.message

    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.method in SAFE_METHODS or can_view_gallery(request.user)


class PreferencesApi(APIView):
    """The caller's search preferences (per user; per session for anonymous visitors of a public gallery)."""

    permission_classes = [PreferencesPermission]

    # Anyone reads them: drf-spectacular tells that only of its own permission classes. (`auth` takes the
    # operation's security entries, which its annotation calls strings.)
    @extend_schema(responses={200: PreferencesSerializer, 401: INVALID_CREDENTIALS},
                   auth=[{"tokenAuth": []}, {"cookieAuth": []}, {}])  # type: ignore[list-item]
    def get(self, request: Request) -> Response:
        return Response(preferences_get(user=request.user, session=request.session))

    @extend_schema(request=PreferencesUpdateSerializer,
                   responses={200: PreferencesSerializer,
                              400: OpenApiResponse(BAD_REQUEST, description="A value out of its limits or of "
                                                   "the wrong type, named by its field; or a body that cannot be "
                                                   "parsed."),
                              401: INVALID_CREDENTIALS, 403: CSRF_MISSING,
                              415: error_response("A body that is not JSON or a form.")})
    def put(self, request: Request) -> Response:
        serializer = PreferencesUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        if not request.user.is_authenticated:
            # A visitor's first write starts their session, and every later one needs its CSRF token: the cookie
            # comes with it (a script without cookies had to fetch a page to get one).
            get_token(request._request)
        return Response(preferences_update(user=request.user, session=request.session,
                                           values=serializer.validated_data))

    patch = put
