"""The first administrator account: created once, never with a default password."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError

from gallery.errors import Refused


@dataclass(frozen=True)
class AdminAccount:
    username: str
    created: bool
    generated_password: str | None  # set only when we generated it: shown to the operator once


def admin_ensure(*, username: str, password: str | None, email: str = "") -> AdminAccount:
    """Create a superuser if no superuser exists yet. Without a password, a random one is generated.
    Refused when the name or the given password fails the checks every other account passes
    (AUTH_PASSWORD_VALIDATORS): the administrator is the account most worth guessing."""
    User = get_user_model()
    if User.objects.filter(is_superuser=True).exists():
        return AdminAccount(username=username, created=False, generated_password=None)
    try:
        User.username_validator(username)  # what admin's and createsuperuser's forms check
        if password:
            validate_password(password, user=User(**{User.USERNAME_FIELD: username, "email": email}))
    except ValidationError as exc:
        raise Refused(" ".join(exc.messages)) from exc
    generated = None if password else secrets.token_urlsafe(12)
    User.objects.create_superuser(username=username, email=email, password=password or generated)
    return AdminAccount(username=username, created=True, generated_password=generated)
