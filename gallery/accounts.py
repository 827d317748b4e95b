"""Accounts: the first administrator (created once, never with a default password), API tokens
that end with the password they were made under, and sessions that end."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.hashers import check_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from rest_framework.authtoken.models import Token

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


def tokens_end_with_a_new_password(sender: type[AbstractBaseUser], instance: AbstractBaseUser, raw: bool = False,
                                   update_fields: frozenset[str] | None = None, **kwargs: Any) -> None:
    """pre_save of the user model: a new password deletes the account's API token, as it ends the account's
    other sessions (someone changing a leaked password expects every way in with it to close). The same
    password saved again (Django re-hashes it when its hasher's cost rises) keeps the token."""
    if raw or instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    stored = sender._default_manager.filter(pk=instance.pk).values_list("password", flat=True).first()
    if stored is None or stored == instance.password:
        return
    new_raw = getattr(instance, "_password", None)  # set by set_password until the save
    if new_raw is not None and check_password(new_raw, stored):
        return
    api_token_end(user=instance)


def api_token_end(*, user: AbstractBaseUser) -> None:
    """Delete the account's API token (a password change on a page ends it, even to the same password)."""
    Token.objects.filter(user_id=user.pk).delete()


def sessions_clear_expired() -> None:
    """Remove the sessions past their expiry (what `clearsessions` does). Django never removes them
    itself: each sign-in, and each visitor's preferences or upload, left a row for ever. The main
    workers run it daily (a django-q2 schedule, made by gallery's migration 0009), with the next."""
    import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
    sign_in_logs_expire()


def sign_in_logs_expire() -> int:
    """Remove django-axes' records of sign-ins (user name, address, browser) older than
    IMAGINAITION_SIGN_IN_LOG_DAYS: kept for ever otherwise, as `axes_reset_logs` is never run by itself."""
    return AxesProxyHandler.reset_logs(age_days=settings.IMAGINAITION_SIGN_IN_LOG_DAYS)
