"""REST endpoints of the retrieval app. Thin: validate, call one service/selector, serialize."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from retrieval import status as status_service


class ApiRootApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(responses=inline_serializer("ApiRoot", {"images": serializers.URLField(), "status": serializers.URLField(),
                                                            "schema": serializers.URLField(),
                                                            "docs": serializers.URLField()}))
    def get(self, request):
        return Response({
            "images": reverse("api-images", request=request),
            "status": reverse("api-status", request=request),
            "schema": reverse("api-schema", request=request),
            "docs": reverse("api-docs", request=request),
        })


class StatusApi(APIView):
    """Active model profile, database, counts of images by status, queued background tasks."""

    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer):
        profile = serializers.CharField()
        models = serializers.DictField(child=serializers.CharField())
        database = serializers.CharField()
        pgvector_version = serializers.CharField(allow_null=True)
        images = serializers.DictField(child=serializers.IntegerField())
        masks_pending = serializers.IntegerField()
        queued_tasks = serializers.IntegerField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request):
        return Response(self.OutputSerializer(status_service.service_status().as_dict()).data)


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
