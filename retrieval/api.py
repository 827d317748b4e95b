"""REST endpoints of the retrieval app. Thin: validate, call one service/selector, serialize."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from gallery.api import ImageUrlFields
from gallery.imaging import read_upload
from retrieval import status as status_service
from retrieval.preferences import PreferenceOverrides, preference_limits, preferences_get, preferences_update
from retrieval.search import Query, search_for
from retrieval.spaces import Space


def _preference_field(name: str) -> serializers.IntegerField:
    """An optional whole number within the preference's limits (the SearchPreferences model's)."""
    low, high = preference_limits(name)
    return serializers.IntegerField(required=False, min_value=low, max_value=high)


class ApiRootApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=inline_serializer("ApiRoot", {"images": serializers.URLField(), "search": serializers.URLField(),
                                                            "preferences": serializers.URLField(),
                                                            "status": serializers.URLField(),
                                                            "schema": serializers.URLField(),
                                                            "docs": serializers.URLField()}))
    def get(self, request):
        return Response({
            "images": reverse("api-images", request=request),
            "search": reverse("api-search", request=request),
            "preferences": reverse("api-preferences", request=request),
            "status": reverse("api-status", request=request),
            "schema": reverse("api-schema", request=request),
            "docs": reverse("api-docs", request=request),
        })


class StatusApi(APIView):
    """Active model profile, database, image counts by status, queued tasks, index integrity."""

    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer):
        profile = serializers.CharField()
        models = serializers.DictField(child=serializers.CharField())
        database = serializers.CharField()
        pgvector_version = serializers.CharField(allow_null=True)
        images = serializers.DictField(child=serializers.IntegerField())
        masks_pending = serializers.IntegerField()
        queued_tasks = serializers.IntegerField()
        integrity = serializers.DictField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request):
        """?check_files=1 (staff) also checks that every stored file exists; ?heal=1 (staff) rebuilds
        missing or stale indexes in the background."""
        staff = request.user.is_staff
        report = status_service.service_status(check_files=staff and request.query_params.get("check_files") == "1")
        if staff and request.query_params.get("heal") == "1" and report.integrity["state"] != "ok":
            status_service.heal_start()
        return Response(self.OutputSerializer(report.as_dict()).data)


class WorkerCheckStartApi(APIView):
    """Enqueue a ping task; a running worker answers it (see WorkerCheckResultApi)."""

    @extend_schema(request=None, responses={202: inline_serializer("WorkerCheck", {"task_id": serializers.CharField()})})
    def post(self, request):
        task_id = status_service.worker_check_start()
        return Response({"task_id": task_id}, status=status.HTTP_202_ACCEPTED)


class WorkerCheckResultApi(APIView):
    @extend_schema(responses=inline_serializer("WorkerCheckResult", {
        "done": serializers.BooleanField(), "success": serializers.BooleanField(required=False),
        "result": serializers.JSONField(required=False)}))
    def get(self, request, task_id: str):
        result = status_service.worker_check_result(task_id)
        if result is None:
            return Response({"done": False})
        return Response({"done": True, **result})


class SearchApi(APIView):
    """Find similar images by a stored image, an uploaded image or text, with the merge policy."""

    permission_classes = [AllowAny]  # search_for checks gallery visibility (private by default)
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    class InputSerializer(serializers.Serializer):
        image_id = serializers.IntegerField(required=False)
        image = serializers.FileField(required=False, allow_empty_file=True)
        text = serializers.CharField(required=False, allow_blank=True, max_length=500)
        k = _preference_field("k")
        intersection = serializers.BooleanField(required=False)
        policy = serializers.ChoiceField(choices=Space.values, required=False)
        split = _preference_field("split")
        include_self = serializers.BooleanField(required=False, default=False)

        def validate(self, data):
            given = [name for name in ("image_id", "image", "text") if data.get(name) not in (None, "")]
            if len(given) != 1:
                raise serializers.ValidationError("Give exactly one of image_id, image or text.")
            return data

    class HitSerializer(ImageUrlFields):
        image_source = "image"
        image_id = serializers.IntegerField(source="image.pk")
        original_name = serializers.CharField(source="image.original_name")
        retrieved_by = serializers.CharField()
        semantic_similarity = serializers.FloatField(allow_null=True)
        content_similarity = serializers.FloatField(allow_null=True)
        image_url = serializers.SerializerMethodField(method_name="get_file_url")
        file_url = None  # called image_url here

    class OutputSerializer(serializers.Serializer):
        results = serializers.ListField()
        counts = serializers.DictField(child=serializers.IntegerField())
        engine = serializers.CharField()
        models = serializers.DictField(child=serializers.CharField())
        elapsed_ms = serializers.FloatField()
        preferences = serializers.DictField()

    @extend_schema(request={"multipart/form-data": InputSerializer, "application/json": InputSerializer},
                   responses=OutputSerializer)
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = data.get("image")
        query = Query(image_id=data.get("image_id"), text=data.get("text") or None,
                      upload=read_upload(upload) if upload is not None else None,
                      upload_name=upload.name if upload is not None else "upload", include_self=data["include_self"])
        wanted = {"k": data.get("k"), "intersection_first": data.get("intersection"),
                  "preferred_index": data.get("policy"), "split": data.get("split")}
        overrides = PreferenceOverrides(**{name: value for name, value in wanted.items() if value is not None})  # type: ignore[typeddict-item]
        response = search_for(user=request.user, session=request.session, query=query, overrides=overrides)
        return Response({
            "results": self.HitSerializer(response.hits, many=True, context={"request": request}).data,
            "counts": response.counts, "engine": response.engine, "engines": response.engines,
            "models": response.models, "elapsed_ms": round(response.elapsed_ms, 2),
            "preferences": asdict(response.preferences),
        })


class PreferencesApi(APIView):
    """The caller's search preferences (per user; per session for anonymous visitors)."""

    permission_classes = [AllowAny]

    class PreferencesSerializer(serializers.Serializer):
        mask_threshold = _preference_field("mask_threshold")
        k = _preference_field("k")
        intersection_first = serializers.BooleanField(required=False)
        preferred_index = serializers.ChoiceField(choices=Space.values, required=False)
        split = _preference_field("split")

    @extend_schema(responses=PreferencesSerializer)
    def get(self, request):
        return Response(preferences_get(user=request.user, session=request.session))

    @extend_schema(request=PreferencesSerializer, responses=PreferencesSerializer)
    def put(self, request):
        serializer = self.PreferencesSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(preferences_update(user=request.user, session=request.session,
                                           values=serializer.validated_data))

    patch = put
