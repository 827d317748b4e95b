"""REST endpoints for images. Thin: validate input, call a service or selector, serialize."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView, exception_handler

from gallery import selectors, services
from gallery.access import can_view_gallery
from gallery.errors import Refused
from gallery.imaging import read_upload
from gallery.models import Image


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus the one mapping of refused input: {"detail": message} with its status."""
    if isinstance(exc, Refused):
        return Response({"detail": exc.message}, status=exc.status_code)
    return exception_handler(exc, context)


_URL_MARKER = "2147483647"  # an id no image has; reverse() is run once per URL name and request


def image_url(request: Request | None, name: str, image_id: int) -> str:
    """Absolute URL of `name` (e.g. "gallery:image-file") for one image. Search responses list 50+
    images: resolving each URL from scratch cost more than the search itself, so the reversed URL
    is cached on the request as a template."""
    cache = request.__dict__.setdefault("_image_url_templates", {}) if request is not None else {}
    template = cache.get(name)
    if template is None:
        template = cache[name] = tuple(reverse(name, args=[_URL_MARKER], request=request).rsplit(_URL_MARKER, 1))
    return f"{template[0]}{image_id}{template[1]}"


class ImageUrlFields(serializers.Serializer):
    """file_url and thumbnail_url of the image at `image_source` (a dotted attribute, "" = the object)."""

    image_source = ""
    file_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    def _image_id(self, obj: Any) -> int:
        for attribute in filter(None, self.image_source.split(".")):
            obj = getattr(obj, attribute)
        return obj.pk

    def get_file_url(self, obj: Any) -> str:
        return image_url(self.context.get("request"), "gallery:image-file", self._image_id(obj))

    def get_thumbnail_url(self, obj: Any) -> str:
        return image_url(self.context.get("request"), "gallery:image-thumbnail", self._image_id(obj))


class GalleryPermission(BasePermission):
    """Reads follow IMAGINAITION_PUBLIC_GALLERY (private by default); writes need a signed-in user."""

    message = "Sign in to use the gallery."

    def has_permission(self, request: Request, view: APIView) -> bool:
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

    def get_mask_url(self, mask: Any) -> str:
        return reverse("gallery:mask-png", args=[mask.image_id, mask.pk], request=self.context.get("request"))


class ImageOutputSerializer(ImageUrlFields):
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


class ImageDetailOutputSerializer(ImageOutputSerializer):
    masks = MaskSerializer(many=True)
    embedded_by = serializers.SerializerMethodField()

    def get_embedded_by(self, image: Image) -> list[dict[str, str]]:
        return [{"space": e.space, "model_key": e.model_key} for e in image.embeddings.all()]


class ImageListCreateApi(APIView):
    permission_classes = [GalleryPermission]
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(allow_empty_file=True)  # image_add explains why empty is refused

    @extend_schema(parameters=[OpenApiParameter("label", str, description="only images with a mask of this label"),
                               OpenApiParameter("page", int, description="page number")],
                   responses=ImageOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        paginator = PageNumberPagination()
        images = selectors.image_list(label=request.query_params.get("label", "").strip())
        page = paginator.paginate_queryset(images, request, view=self)
        return paginator.get_paginated_response(
            ImageOutputSerializer(page, many=True, context={"request": request}).data)

    @extend_schema(request={"multipart/form-data": InputSerializer},
                   responses={201: ImageOutputSerializer, 200: ImageOutputSerializer,
                              400: inline_serializer("ImageError", {"detail": serializers.CharField()}),
                              413: inline_serializer("ImageTooLarge", {"detail": serializers.CharField()})})
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        result = services.image_add(data=read_upload(upload), original_name=upload.name, user=request.user)
        body = ImageOutputSerializer(result.image, context={"request": request}).data
        body["duplicate"] = not result.created
        return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class ImageDetailApi(APIView):
    permission_classes = [GalleryPermission]

    def _get(self, image_id: int) -> Image:
        image = selectors.image_detail(image_id=image_id)
        if image is None:
            raise NotFound("No such image.")
        return image

    @extend_schema(responses=ImageDetailOutputSerializer)
    def get(self, request: Request, image_id: int) -> Response:
        return Response(ImageDetailOutputSerializer(self._get(image_id), context={"request": request}).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, image_id: int) -> Response:
        services.image_delete(image=self._get(image_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ImageRetryApi(APIView):
    permission_classes = [GalleryPermission]

    @extend_schema(request=None, responses=ImageOutputSerializer)
    def post(self, request: Request, image_id: int) -> Response:
        image = Image.objects.filter(pk=image_id).first()
        if image is None:
            raise NotFound("No such image.")
        image = services.image_retry(image=image)
        return Response(ImageOutputSerializer(image, context={"request": request}).data)
