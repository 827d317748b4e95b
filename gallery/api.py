"""REST endpoints for images. Thin: validate input, call a service or selector, serialize."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from gallery import services
from gallery.access import can_view_gallery
from gallery.imaging import ImageRejected
from gallery.models import Image


class GalleryPermission(BasePermission):
    """Reads follow IMAGINAITION_PUBLIC_GALLERY (private by default); writes need a signed-in user."""

    message = "Sign in to use the gallery."

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return can_view_gallery(request.user)
        return bool(request.user and request.user.is_authenticated)


class MaskSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    label = serializers.CharField()
    class_index = serializers.IntegerField()
    area_fraction = serializers.FloatField()
    segmenter = serializers.CharField()
    mask_url = serializers.SerializerMethodField()

    def get_mask_url(self, mask) -> str:
        return reverse("gallery:mask-png", args=[mask.image_id, mask.pk], request=self.context.get("request"))


class ImageOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    original_name = serializers.CharField()
    sha256 = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    format = serializers.CharField()
    byte_size = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    status = serializers.CharField()
    error = serializers.CharField()
    masks_status = serializers.CharField()
    masks_error = serializers.CharField()
    file_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    def get_file_url(self, image) -> str:
        return reverse("gallery:image-file", args=[image.pk], request=self.context.get("request"))

    def get_thumbnail_url(self, image) -> str:
        return reverse("gallery:image-thumbnail", args=[image.pk], request=self.context.get("request"))


class ImageDetailOutputSerializer(ImageOutputSerializer):
    masks = MaskSerializer(many=True)
    embedded_by = serializers.SerializerMethodField()

    def get_embedded_by(self, image) -> list[dict]:
        return [{"space": e.space, "model_key": e.model_key} for e in image.embeddings.all()]


class ImageListCreateApi(APIView):
    permission_classes = [GalleryPermission]
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(allow_empty_file=True)  # image_add explains why empty is refused

    @extend_schema(responses=ImageOutputSerializer(many=True))
    def get(self, request):
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(Image.objects.order_by("-created_at", "-id"), request, view=self)
        return paginator.get_paginated_response(
            ImageOutputSerializer(page, many=True, context={"request": request}).data)

    @extend_schema(request={"multipart/form-data": InputSerializer},
                   responses={201: ImageOutputSerializer, 200: ImageOutputSerializer,
                              400: inline_serializer("ImageError", {"detail": serializers.CharField()}),
                              413: inline_serializer("ImageTooLarge", {"detail": serializers.CharField()})})
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        limit = settings.IMAGINAITION_MAX_UPLOAD_BYTES
        if upload.size > limit:
            return Response({"detail": f"The file is {upload.size:,} bytes; the limit is {limit:,} bytes."},
                            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        try:
            result = services.image_add(data=upload.read(), original_name=upload.name, user=request.user)
        except ImageRejected as exc:
            code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE if exc.too_large else status.HTTP_400_BAD_REQUEST
            return Response({"detail": exc.message}, status=code)
        body = ImageOutputSerializer(result.image, context={"request": request}).data
        body["duplicate"] = not result.created
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class ImageDetailApi(APIView):
    permission_classes = [GalleryPermission]

    def _get(self, image_id: int) -> Image:
        image = Image.objects.prefetch_related("masks", "embeddings").filter(pk=image_id).first()
        if image is None:
            raise NotFound("No such image.")
        return image

    @extend_schema(responses=ImageDetailOutputSerializer)
    def get(self, request, image_id: int):
        return Response(ImageDetailOutputSerializer(self._get(image_id), context={"request": request}).data)

    @extend_schema(responses={204: None})
    def delete(self, request, image_id: int):
        services.image_delete(image=self._get(image_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ImageRetryApi(APIView):
    permission_classes = [GalleryPermission]

    @extend_schema(request=None, responses=ImageOutputSerializer)
    def post(self, request, image_id: int):
        image = Image.objects.filter(pk=image_id).first()
        if image is None:
            raise NotFound("No such image.")
        image = services.image_retry(image=image)
        return Response(ImageOutputSerializer(image, context={"request": request}).data)
