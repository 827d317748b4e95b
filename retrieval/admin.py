"""Django admin of the retrieval app: vectors, search preferences, and what it adds to the gallery's
image admin (the vectors each image has, and "search similar" with the same service as the pages)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F, Func, IntegerField, Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from gallery.admin import ImageAdmin, MaskAdmin, MaskInline, NamesSearchedComposed, PipelineRowsInline
from gallery.errors import Refused
from gallery.models import Image, Mask
from retrieval.models import Embedding, RegionEmbedding, SearchPreferences
from retrieval.preferences import preferences_get
from retrieval.search import Query, id_parse, search_for


class EmbeddingInline(PipelineRowsInline):
    model = Embedding
    fields = ("space", "model_key", "created_at")
    readonly_fields = fields


class RegionColumns:
    """A mask's region columns, for the image page's mask rows and for a mask's own page: the models
    that embedded the region, and "search similar region" where it has vectors."""

    @admin.display(description="Region vectors")
    def region_models(self, obj: Mask) -> str:
        return format_html_join(", ", "{}:{}", ((e.space, e.model_key) for e in obj.embeddings.all())) or \
            "none (too small to search with)"

    @admin.display(description="")
    def search_region(self, obj: Mask) -> str:
        if not obj.pk or not obj.embeddings.all():
            return "-"
        url = reverse("admin:gallery_image_similar", args=[obj.image_id]) + f"?mask={obj.pk}"
        return format_html('<a href="{}">Search similar region</a>', url)


class MaskWithRegionVectorsInline(RegionColumns, MaskInline):
    """An image's masks, with their region columns."""

    fields = (*MaskInline.fields, "region_models", "search_region")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Mask]:
        return super().get_queryset(request).prefetch_related(
            Prefetch("embeddings", queryset=RegionEmbedding.objects.only("mask_id", "space", "model_key")))


class MaskWithRegionVectorsAdmin(RegionColumns, MaskAdmin):
    """A mask's page, with its region columns."""

    fields = (*MaskAdmin.fields, "region_models", "search_region")
    readonly_fields = fields


class ImageWithVectorsAdmin(ImageAdmin):
    """The gallery's image admin, plus each image's vectors and "search similar" (by the image, or
    by one of its regions)."""

    list_display = (*ImageAdmin.list_display[:-4], "models", *ImageAdmin.list_display[-4:])
    list_filter = (*ImageAdmin.list_filter, "embeddings__model_key")
    inlines = (*(MaskWithRegionVectorsInline if inline is MaskInline else inline for inline in ImageAdmin.inlines),
               EmbeddingInline)
    change_form_template = "admin/retrieval/image_change_form.html"

    def get_urls(self) -> list[URLPattern]:
        similar = path("<int:image_id>/similar/", self.admin_site.admin_view(self.similar_view),
                       name="gallery_image_similar")
        return [similar, *super().get_urls()]

    def similar_view(self, request: HttpRequest, image_id: int) -> HttpResponse:
        """"Search similar" from an image's admin page (?mask= for one of its regions): the same search
        service as the API and pages. Like the image's own admin page, it needs the view permission; by a
        region, as the region's page, the masks' view permission too."""
        mask_id = request.GET.get("mask", "")
        if not self.has_view_permission(request) or (
                mask_id and not self.admin_site.get_model_admin(Mask).has_view_permission(request)):
            raise PermissionDenied
        image = get_object_or_404(Image, pk=image_id)
        mask = get_object_or_404(Mask, pk=id_parse(mask_id) or 0, image=image) if mask_id else None
        query = Query(mask_id=mask.pk) if mask is not None else Query(image_id=image.pk)
        try:
            response = search_for(user=request.user, session=request.session, query=query)
        except Refused as exc:
            messages.error(request, exc.message)
            return redirect("admin:gallery_image_change", image.pk)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "original": image,
                   "title": f"Images similar to {response.about}", "response": response,
                   # the matched regions outlined at the user's threshold (admin pages get no site context)
                   "mask_threshold": preferences_get(user=request.user, session=request.session)["mask_threshold"]}
        return TemplateResponse(request, "admin/retrieval/similar.html", context)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Image]:
        return super().get_queryset(request).prefetch_related(
            Prefetch("embeddings", queryset=Embedding.objects.only("image_id", "space", "model_key")))

    @admin.display(description="Embedded by")
    def models(self, obj: Image) -> str:
        return format_html_join(", ", "{}:{}", ((e.space, e.model_key) for e in obj.embeddings.all())) or "-"


admin.site.unregister(Image)
admin.site.register(Image, ImageWithVectorsAdmin)
admin.site.unregister(Mask)
admin.site.register(Mask, MaskWithRegionVectorsAdmin)


@admin.register(Embedding)
class EmbeddingAdmin(NamesSearchedComposed):
    list_display = ("id", "image", "space", "model_key", "dimension", "created_at")
    list_filter = ("space", "model_key")
    search_fields = ("image__original_name", "model_key")
    readonly_fields = ("image", "space", "model_key", "dimension", "created_at")
    exclude = ("vector",)
    list_select_related = ("image",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Embedding]:
        # The dimension counted by pgvector: a page of rows without their vectors (4 KB each in content).
        return super().get_queryset(request).defer("vector").annotate(
            dimensions=Func(F("vector"), function="vector_dims", output_field=IntegerField()))

    @admin.display(description="Dimension")
    def dimension(self, obj: Embedding) -> int:
        return int(getattr(obj, "dimensions"))

    # Vectors come from the pipeline only (`reembed` replaces them); the indexes follow these rows.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Embedding | None = None) -> bool:
        return False  # every field is read-only: no Save button that "changes" nothing

    def has_delete_permission(self, request: HttpRequest, obj: Embedding | None = None) -> bool:
        return False


@admin.register(SearchPreferences)
class SearchPreferencesAdmin(admin.ModelAdmin):
    list_display = ("user", "k", "intersection_first", "preferred_index", "split", "mask_threshold")
    search_fields = ("user__username",)
