"""Who may see the gallery. Reads are private by default (IMAGINAITION_PUBLIC_GALLERY=1 opens them)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import PermissionsMixin
from django.http import Http404

from gallery.models import Image
from gallery.services import User


def can_view_gallery(user: User | None) -> bool:
    return bool(settings.IMAGINAITION_PUBLIC_GALLERY or (user and user.is_authenticated))


def access_image(*, user: User | None, image_id: int) -> Image:
    """The image if `user` may see it; 404 otherwise (never reveal what exists to outsiders)."""
    if not can_view_gallery(user):
        raise Http404("No such image")
    image = Image.objects.filter(pk=image_id).first()
    if image is None:
        raise Http404(f"There is no image {image_id}.")
    return image


DELETE_REFUSED = "Only whoever added this image, or a user allowed to delete images, may delete it."
RETRY_REFUSED = "Only whoever added this image, or a user allowed to change images, may retry it."


def _added_it_or_may(user: User | None, image: Image, permission: str) -> bool:
    if not (user and user.is_authenticated):
        return False
    if image.added_by_id == user.pk:
        return True
    return isinstance(user, PermissionsMixin) and user.has_perm(permission)


def can_delete_image(user: User | None, image: Image) -> bool:
    """Whoever added the image, or a user with the model's delete permission (what Django admin asks for)."""
    return _added_it_or_may(user, image, "gallery.delete_image")


def can_retry_image(user: User | None, image: Image) -> bool:
    """Whoever added the image, or a user with the model's change permission: retrying queues work
    again (each retry costs the workers a full pass), so it is not every signed-in user's to repeat."""
    return _added_it_or_may(user, image, "gallery.change_image")
