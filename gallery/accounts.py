"""The first administrator account: created once, never with a default password."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model


@dataclass(frozen=True)
class AdminAccount:
    username: str
    created: bool
    generated_password: str | None  # set only when we generated it: shown to the operator once


def admin_ensure(*, username: str, password: str | None, email: str = "") -> AdminAccount:
    """Create a superuser if no superuser exists yet. Without a password, a random one is generated."""
    User = get_user_model()
    if User.objects.filter(is_superuser=True).exists():
        return AdminAccount(username=username, created=False, generated_password=None)
    generated = None if password else secrets.token_urlsafe(12)
    User.objects.create_superuser(username=username, email=email, password=password or generated)
    return AdminAccount(username=username, created=True, generated_password=generated)
