"""Django admin for the gallery: images with thumbnails, status, labels and models; masks; embeddings."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from gallery.models import Embedding, Image, Mask
from gallery.models_reset import ResetJob


def _thumbnail(image: Image, size: int, shown_px: int) -> str:
    url = reverse("gallery:image-thumbnail-size", args=[image.pk, size])
    return format_html('<img src="{}" alt="{}" style="max-height:{}px;max-width:{}px">', url,
                       image.original_name, shown_px, shown_px)


class MaskInline(admin.TabularInline):
    model = Mask
    extra = 0
    fields = ("label", "class_index", "area_fraction", "segmenter")
    readonly_fields = fields
    can_delete = False
    show_change_link = True


class EmbeddingInline(admin.TabularInline):
    model = Embedding
    extra = 0
    fields = ("space", "model_key", "created_at")
    readonly_fields = fields
    can_delete = False


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ("thumbnail", "id", "original_name", "status", "masks_status", "labels", "models",
                    "width", "height", "format", "created_at")
    list_display_links = ("thumbnail", "id", "original_name")
    list_filter = ("status", "masks_status", "format", "masks__label", "embeddings__model_key")
    search_fields = ("original_name", "sha256", "masks__label")
    readonly_fields = ("preview", "sha256", "width", "height", "format", "byte_size", "created_at",
                       "added_by", "status", "error", "masks_status", "masks_error", "file")
    fields = readonly_fields + ("original_name",)
    inlines = (MaskInline, EmbeddingInline)
    date_hierarchy = "created_at"
    list_per_page = 50
    change_form_template = "admin/gallery/image/change_form.html"

    def get_urls(self):
        similar = path("<int:image_id>/similar/", self.admin_site.admin_view(self.similar_view),
                       name="gallery_image_similar")
        return [similar, *super().get_urls()]

    def similar_view(self, request, image_id: int):
        """"Search similar" from an image's admin page: the same search service as the API and pages."""
        from retrieval import search as search_service
        from retrieval.preferences import policy_preferences, preferences_get

        image = get_object_or_404(Image, pk=image_id)
        try:
            query = search_service.vectors_for_image_id(image_id=image.pk, models=None)
            response = search_service.search(
                query=query, preferences=policy_preferences(preferences_get(user=request.user, session=request.session)))
        except search_service.QueryError as exc:
            messages.error(request, str(exc))
            return redirect("admin:gallery_image_change", image.pk)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "original": image,
                   "title": f"Images similar to {image.original_name}", "response": response}
        return TemplateResponse(request, "admin/gallery/image/similar.html", context)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related(
            Prefetch("masks", queryset=Mask.objects.only("image_id", "label", "area_fraction")),
            Prefetch("embeddings", queryset=Embedding.objects.only("image_id", "space", "model_key")),
        ).distinct()

    @admin.display(description="Thumbnail")
    def thumbnail(self, obj: Image) -> str:
        return _thumbnail(obj, 128, 64)

    @admin.display(description="Preview")
    def preview(self, obj: Image) -> str:
        return _thumbnail(obj, 512, 512) if obj.pk else "-"

    @admin.display(description="Labels")
    def labels(self, obj: Image) -> str:
        return ", ".join(m.label for m in obj.masks.all()) or "-"

    @admin.display(description="Embedded by")
    def models(self, obj: Image) -> str:
        return format_html_join(", ", "{}:{}", ((e.space, e.model_key) for e in obj.embeddings.all())) or "-"


@admin.register(Mask)
class MaskAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "label", "class_index", "area_fraction", "segmenter", "created_at")
    list_filter = ("label", "segmenter")
    search_fields = ("label", "image__original_name")
    readonly_fields = ("image", "label", "class_index", "area_fraction", "segmenter", "created_at")
    exclude = ("probability_png",)
    list_select_related = ("image",)


@admin.register(Embedding)
class EmbeddingAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "space", "model_key", "dimension", "created_at")
    list_filter = ("space", "model_key")
    search_fields = ("image__original_name", "model_key")
    readonly_fields = ("image", "space", "model_key", "dimension", "created_at")
    exclude = ("vector",)
    list_select_related = ("image",)

    @admin.display(description="Dimension")
    def dimension(self, obj: Embedding) -> int:
        return len(obj.vector)


@admin.register(ResetJob)
class ResetJobAdmin(admin.ModelAdmin):
    list_display = ("id", "folder", "state", "phase", "imported", "duplicates", "embedded", "created_by", "created_at")
    list_filter = ("state",)
    readonly_fields = [field.name for field in ResetJob._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False  # started from the reset page, which asks for confirmation
