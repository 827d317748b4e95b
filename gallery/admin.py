"""Django admin for the gallery: images with thumbnails, status and labels; masks; reset jobs.

The retrieval app extends the image admin with what it adds (vectors, "search similar").
"""

from __future__ import annotations

import unicodedata
from typing import Any, ClassVar, Literal, cast

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.options import IS_FACETS_VAR, ShowFacets
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import CASCADE, Exists, Model, OuterRef, Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from rest_framework.authtoken.models import Token

from gallery import selectors, services
from gallery.models import Image, Mask, ResetJob
from gallery.thumbnails import thumbnail_url


ShownSize = Literal[64, 240, 512]  # a class each in static/admin_site.css (no inline style: the CSP)


def _thumbnail(image: Image, size: int, shown_px: ShownSize) -> str:
    url = thumbnail_url(image, size)
    return format_html('<img src="{}" alt="{}" class="shown-{}">', url, image.original_name, shown_px)


class PipelineRowsInline(admin.TabularInline):
    """An image's rows that the pipeline writes (masks, vectors): shown, never added or deleted here ("Add
    another" made an empty row, one showing a DatabaseDefault object)."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class MaskInline(PipelineRowsInline):
    model = Mask
    fields: ClassVar[tuple[str, ...]] = ("label", "class_index", "area_fraction", "segmenter")
    readonly_fields: ClassVar[tuple[str, ...]] = fields
    show_change_link = True


DELETE_LISTED = 100  # images named on a delete's confirmation; the rest are counted


def _cascading_rows(model: type[Model], to_model: str = "") -> dict[type[Model], list[str]]:
    """Each model whose rows a delete of `model`'s rows takes with it (on_delete CASCADE, at any depth),
    with the lookups from it to `model` (a region vector goes with its mask, and with its image)."""
    found: dict[type[Model], list[str]] = {}
    for relation in model._meta.related_objects:
        if relation.on_delete is not CASCADE or relation.related_model is None:
            continue
        related = cast("type[Model]", relation.related_model)
        path = relation.field.name + (f"__{to_model}" if to_model else "")
        found.setdefault(related, []).append(path)
        for deeper, paths in _cascading_rows(related, path).items():
            found.setdefault(deeper, []).extend(paths)
    return found


class LabelFilter(admin.SimpleListFilter):
    """Images with a label: the choices are the gallery's cached label counts (Django's own filter ran a
    DISTINCT over every mask on each page), and a match is an EXISTS (an image once, whatever its masks)."""

    title = "label"
    parameter_name = "masks__label"  # the address Django's filter used: links and bookmarks keep working

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        facets = model_admin.show_facets is ShowFacets.ALWAYS or (
            model_admin.show_facets is ShowFacets.ALLOW and IS_FACETS_VAR in request.GET)
        if facets:  # "Show counts": Django adds each choice's count (among the filtered images) itself
            return [(label, label) for label, _ in selectors.label_counts()]
        return [(label, f"{label} ({count})") for label, count in selectors.label_counts()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> QuerySet[Image]:
        if self.value() is None:
            return queryset
        return queryset.filter(Exists(Mask.objects.filter(image=OuterRef("pk"), label=self.value())))


class NamesSearchedComposed(admin.ModelAdmin):
    """Names are stored composed (services.stored_name): a search for é typed as e + a combining accent
    (macOS's keyboard, a pasted name) finds them too, in every list that searches by an image's name."""

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any],
                           search_term: str) -> tuple[QuerySet[Any], bool]:
        return super().get_search_results(request, queryset, unicodedata.normalize("NFC", search_term))


@admin.register(Image)
class ImageAdmin(NamesSearchedComposed):
    list_display: tuple[str, ...] = ("thumbnail", "id", "original_name", "status", "masks_status", "labels",
                                     "width", "height", "format", "created_at")
    list_display_links = ("thumbnail", "id", "original_name")
    list_filter: ClassVar[tuple[Any, ...]] = ("status", "masks_status", "format", LabelFilter)
    search_fields = ("original_name", "sha256", "masks__label")
    readonly_fields = ("preview", "sha256", "width", "height", "format", "byte_size", "created_at",
                       "added_by", "status", "error", "masks_status", "masks_error", "segmented_by", "stored_file")
    fields = readonly_fields + ("original_name",)
    inlines: ClassVar[tuple[type[admin.options.InlineModelAdmin[Any, Any]], ...]] = (MaskInline,)
    date_hierarchy = "created_at"
    list_per_page = 50
    actions = ("retry_failed",)

    def get_readonly_fields(self, request: HttpRequest, obj: Image | None = None) -> tuple[str, ...]:
        """"Added by" as a link to the account only for those who may view accounts (it led others to a 403)."""
        fields = tuple(super().get_readonly_fields(request, obj))
        users = get_user_model()
        if self.admin_site.is_registered(users) and self.admin_site.get_model_admin(users).has_view_permission(request):
            return fields
        return tuple("added_by_name" if field == "added_by" else field for field in fields)

    def get_fields(self, request: HttpRequest, obj: Image | None = None) -> tuple[str, ...]:
        return (*self.get_readonly_fields(request, obj), "original_name")

    @admin.display(description="Added by")
    def added_by_name(self, obj: Image) -> str:
        return str(obj.added_by) if obj.added_by else "-"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Image]:
        # No .distinct(): where a label filter or search could repeat an image, the changelist already
        # filters by EXISTS; a DISTINCT over every column sorted the whole table for each count.
        return super().get_queryset(request).prefetch_related(
            Prefetch("masks", queryset=Mask.objects.only("image_id", "label", "area_fraction")))

    def save_model(self, request: HttpRequest, obj: Image, form: Any, change: bool) -> None:
        """Only what the form changed (the name): a worker may have set the status, error or masks since the
        form was read, and saving the whole row wrote those values back (an image left 'pending')."""
        typed = obj.original_name
        obj.original_name = services.stored_name(typed)  # as every way in stores a name
        if obj.original_name != unicodedata.normalize("NFC", typed):  # said, not done silently ("…/passwd")
            why = ("nothing of the name typed would show" if not services.shows_anything(typed) else
                   "a name is a file's name, without folders (“/”) or direction controls")
            self.message_user(request, f"The name was saved as “{obj.original_name}”: {why}.", messages.WARNING)
        if change:
            obj.save(update_fields=form.changed_data)
        else:
            super().save_model(request, obj, form, change)

    @admin.display(description="Thumbnail")
    def thumbnail(self, obj: Image) -> str:
        return _thumbnail(obj, 128, 64)

    @admin.display(description="Preview")
    def preview(self, obj: Image) -> str:
        return _thumbnail(obj, 512, 512) if obj.pk else "-"

    @admin.display(description="Labels")
    def labels(self, obj: Image) -> str:
        return ", ".join(m.label for m in obj.masks.all()) or "-"

    @admin.display(description="File")
    def stored_file(self, obj: Image) -> str:
        """A link that serves the file (storage URLs are not routed: files go through access checks)."""
        if not obj.pk:
            return "-"
        return format_html('<a href="{}">{}</a> ({})', reverse("gallery:image-file", args=[obj.pk]),
                           obj.file.name, obj.format)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # images come in decoded and validated: upload page, API, import_folder or reset

    @admin.action(description="Retry the failed processing of the selected images", permissions=["change"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        """What the image page's Retry does, for many: the failed stage(s) queued again (after the cause,
        such as missing weights or a storage outage, was fixed); images that did not fail are left alone."""
        selected = list(queryset.values_list("pk", flat=True))  # before: a "failed" filter no longer matches after
        retried = services.images_retry_failed(ids=selected)
        if not retried:
            self.message_user(request, "None of the selected images had failed: nothing to retry.", messages.WARNING)
            return
        skipped = len(selected) - len(retried)
        self.message_user(request, f"{len(retried)} failed image(s) are back in the queue"
                          + (f"; {skipped} selected image(s) had not failed and are left as they are." if skipped
                             else "."),
                          messages.SUCCESS)

    def get_deleted_objects(self, objs: Any, request: HttpRequest
                            ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """What the confirmation lists: the images (the first DELETE_LISTED, linked) and a count of each
        kind of row that goes with them, counted in the database. Django's own loaded and listed every
        mask and vector: 2,500 images took 12 s and a 2 MB page of 19,000 lines, and left the web process
        1 GB larger. Masks and vectors belong to their image: their admins refuse deleting them one by
        one (a recomputation replaces them), which must not stop deleting the image they go with."""
        chosen = objs if isinstance(objs, QuerySet) else Image.objects.filter(pk__in=[obj.pk for obj in objs])
        total = chosen.count()
        listed: list[Any] = [format_html('{}: <a href="{}">{}</a>', str(Image._meta.verbose_name).capitalize(),
                                         reverse("admin:gallery_image_change", args=[image.pk]), image)
                             for image in chosen.order_by("pk")[:DELETE_LISTED]]
        if total > DELETE_LISTED:
            listed.append(f"… and {total - DELETE_LISTED:,} more images")
        counts = {str(Image._meta.verbose_name_plural): total}
        for model, paths in _cascading_rows(Image).items():
            going = Q()
            for path in paths:
                going |= Q(**{f"{path}__in": chosen.values("pk")})
            counts[str(model._meta.verbose_name_plural)] = model._default_manager.filter(going).count()
        perms_needed = set() if self.has_delete_permission(request) else {str(Image._meta.verbose_name)}
        return listed, counts, perms_needed, []

    def delete_model(self, request: HttpRequest, obj: Image) -> None:
        services.image_delete(image=obj)  # its file, thumbnails and index entries go too

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        for image in queryset:
            services.image_delete(image=image)


@admin.register(Mask)
class MaskAdmin(NamesSearchedComposed):
    list_display = ("id", "image", "label", "class_index", "area_fraction", "segmenter", "created_at")
    list_filter = ("label", "segmenter")
    search_fields = ("label", "image__original_name")
    fields: ClassVar[tuple[str, ...]] = ("picture", "image_link", "label", "class_index", "area_fraction",
                                         "segmenter", "created_at")
    readonly_fields: ClassVar[tuple[str, ...]] = fields
    list_select_related = ("image",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Mask]:
        return super().get_queryset(request).defer("probability_png")  # shown by its URL, never read here

    # Masks (and their region vectors) come from segmentation only: a recomputation replaces them. So
    # a mask's page is for viewing: no Save button that would report a change it never made.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Mask | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Mask | None = None) -> bool:
        return False

    @admin.display(description="Mask")
    def picture(self, obj: Mask) -> str:
        """The picture and, beside it, the mask (white where the label is likely)."""
        mask_url = reverse("gallery:mask-png", args=[obj.image_id, obj.pk])
        return format_html('{} <img src="{}" alt="{} mask" class="shown-240">',
                           _thumbnail(obj.image, 256, 240), mask_url, obj.label)

    @admin.display(description="Image")
    def image_link(self, obj: Mask) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:gallery_image_change", args=[obj.image_id]),
                           obj.image)


@admin.register(ResetJob)
class ResetJobAdmin(admin.ModelAdmin):
    list_display = ("id", "folder", "state", "phase", "imported", "duplicates", "embedded", "created_by", "created_at")
    list_filter = ("state",)
    readonly_fields = [field.name for field in ResetJob._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # started from the reset page, which asks for confirmation

    def has_change_permission(self, request: HttpRequest, obj: ResetJob | None = None) -> bool:
        return False  # a record of what a reset did: shown, never edited (no Save button)

    def has_delete_permission(self, request: HttpRequest, obj: ResetJob | None = None) -> bool:
        # A queued or running job is the reset's own state: deleting it mid-way stopped the reset after
        # the gallery was emptied. Ended jobs (and, in bulk, only those) may go.
        if obj is not None and obj.active:
            return False
        return super().has_delete_permission(request, obj)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> HttpResponse:
        job = self.get_object(request, unquote(object_id))
        if job is not None and job.active and super().has_delete_permission(request):
            self.message_user(request, f"{job} is still in progress: it can be deleted once it has ended.",
                              messages.ERROR)
            return HttpResponseRedirect(reverse("admin:gallery_resetjob_change", args=[job.pk]))
        return super().delete_view(request, object_id, extra_context)

    def get_actions(self, request: HttpRequest) -> Any:
        actions: dict[str, Any] = super().get_actions(request)
        if "delete_selected" in actions:  # under its own name: Django's confirmation page posts that name back
            _, name, description = actions["delete_selected"]
            actions["delete_selected"] = (ResetJobAdmin.delete_ended_only, name, description)
        return actions

    def delete_ended_only(self, request: HttpRequest, queryset: QuerySet[ResetJob]) -> HttpResponse | None:
        """Django's bulk delete, refused at once, with the reason, when a job among them is in progress
        (its confirmation called one a "protected related object")."""
        active = [str(job) for job in queryset if job.active]
        if active:
            self.message_user(request, f"{'; '.join(active)}: still in progress, so nothing was deleted. A job "
                              "can be deleted once it has ended.", messages.ERROR)
            return None  # back to the list
        return delete_selected(self, request, queryset)


# django-q2's "Scheduled tasks" admin runs whatever importable function a staff member types (func
# "os.system") in a worker: more than any permission of ours grants, resetting included; the one
# schedule this service makes (expired sessions, daily) needs no one to edit it. Its queued, successful
# and failed tasks stay listed.
import django_q.admin  # noqa: E402 - registers its models first (it comes after gallery in INSTALLED_APPS)
from django_q.models import Schedule  # noqa: E402

admin.site.unregister(Schedule)
# "Resubmit selected tasks" runs them again (and removes the failed ones): Django offers an action with
# no permissions named to whoever may view the list, and each click doubled the queue.
django_q.admin.resubmit_task.allowed_permissions = ("change", "delete")


# Who may do what is a superuser's to say: with Django's user admin, staff holding "Can change user" set
# the admin's password and signed in as the admin, or ticked "superuser status" on their own account.
PERMISSION_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")


def manages_account(request: HttpRequest, account: Any) -> bool:
    """Staff who are not superusers manage ordinary accounts only: a staff or superuser account (their own
    included) has powers that setting its password, or deleting it, would take over or take away."""
    return bool(request.user.is_superuser or not (account.is_staff or account.is_superuser))


class AccountsAdmin(type(admin.site._registry[get_user_model()])):  # type: ignore[misc]
    """Users as Django's admin has them, but a staff member who is not a superuser changes, or deletes, only
    ordinary accounts, and never what anyone may do (PERMISSION_FIELDS stay as they are: read only).

    And a deletion's summary names an account's API key as that, not as the key itself ("Token: 5289db…"):
    staff who may only delete users read every key there, a superuser's included, before deleting anything.
    The summary also says that the account's images stay."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else (*fields, *PERMISSION_FIELDS)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:  # its password page too
        return super().has_change_permission(request, obj) and (obj is None or manages_account(request, obj))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and (obj is None or manages_account(request, obj))

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[list[Any], dict[str, int], set[str],
                                                                             list[Any]]:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        users = list(objs)
        if beyond := [str(user) for user in users if not manages_account(request, user)]:  # the bulk action
            perms_needed.add(f"staff and superuser accounts ({', '.join(beyond)}: a superuser's to delete)")
        keys = list(Token.objects.filter(user__in=users).values_list("key", flat=True))
        if not request.POST.get("post"):  # the confirmation page, not the deletion itself
            if kept := Image.objects.filter(added_by__in=users).count():
                theirs = reverse("admin:gallery_image_changelist") + "?added_by__id__in=" + ",".join(
                    str(user.pk) for user in users)
                messages.warning(request, format_html(
                    'The {} image{} added by {} stay{} in the gallery, added by nobody: <a href="{}">delete '
                    'them first</a> if they should go too.', kept, pluralize(kept), "this account" if len(users) == 1
                    else "these accounts", pluralize(kept, "s,"), theirs))
        return without_api_keys(deleted, keys), counts, perms_needed, protected


def without_api_keys(summary: list[Any], keys: list[str]) -> list[Any]:
    """A deletion summary (nested lists of texts) with each API key replaced by words."""
    hidden: list[Any] = []
    for item in summary:
        if isinstance(item, list):
            hidden.append(without_api_keys(item, keys))
            continue
        for key in keys:
            if key in item:  # safe HTML stays safe: the words have no markup
                item = mark_safe(item.replace(key, "(the account's API key)")) if isinstance(item, SafeString) \
                    else item.replace(key, "(the account's API key)")
        hidden.append(item)
    return hidden


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), AccountsAdmin)


class GroupsAdmin(type(admin.site._registry[Group])):  # type: ignore[misc]
    """A group's permissions are given to its members: staff who could edit a group of their own gave
    themselves any permission. Others may still view them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)


admin.site.unregister(Group)
admin.site.register(Group, GroupsAdmin)


# A token acts as its user, a superuser's included: with DRF's admin, staff holding only "Can view Token"
# read every key, and "Can add Token" made one for anyone; either was every account's power. Only
# superusers manage tokens (others get theirs from an administrator, or `manage.py drf_create_token`).
import rest_framework.authtoken.admin  # noqa: E402 - registered before gallery's (INSTALLED_APPS order)
from rest_framework.authtoken.models import TokenProxy  # noqa: E402

admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class SuperusersTokenAdmin(rest_framework.authtoken.admin.TokenAdmin):
    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)
