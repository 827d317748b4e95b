"""Sign-in throttling (django-axes, settings AXES_*): how a locked-out sign-in is answered, the user name it
is counted under, and the password-change pages, whose old-password check counts like a sign-in; the sign-in
page, which never sends a user on to the sign-in or sign-out address."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from axes.helpers import get_client_ip_address
from axes.utils import reset as axes_reset
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import authenticate
from django.contrib.auth.forms import PasswordChangeForm
from django.contrib.auth.views import LoginView, PasswordChangeView
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.urls import reverse

from gallery.accounts import api_token_end
from gallery.forms import FirstErrorFocused

USERNAME_MAX = 150  # Django's user name limit: no account has a longer one


class SignInView(LoginView):
    """Django's sign-in page, where a ?next= back to the sign-in or sign-out address leads to the default
    page instead: signed in, ?next=/accounts/login/ was a 500 (Django's redirect-loop check), and after
    opening the sign-out address (a form's action, POST only) signing in led back to its 405 page."""

    redirect_authenticated_user = True

    def get_redirect_url(self, request: HttpRequest | None = None) -> str:
        url = str(super().get_redirect_url())
        return "" if urlsplit(url).path in (reverse("login"), reverse("logout")) else url


def throttled_username(request: HttpRequest, credentials: dict[str, Any] | None = None) -> str:
    """AXES_USERNAME_CALLABLE: the name a sign-in is counted under, cut to USERNAME_MAX characters.
    Django's sign-in forms do not check the length before authenticating, and axes stored a
    300-character name in its 255-character column: a 500 instead of "did not match"."""
    name = (credentials or {}).get("username")
    if name is None:
        name = request.POST.get("username", "")
    return str(name)[:USERNAME_MAX]


def sign_in_locked_out(request: HttpRequest, original_response: HttpResponse | None = None,
                       credentials: dict[str, Any] | None = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: 429 in the site's layout, saying how long to wait (also as Retry-After)
    and how an administrator lifts the lock."""
    seconds = settings.AXES_COOLOFF_TIME.total_seconds()
    minutes = math.ceil(seconds / 60)
    response = render(request, "registration/locked_out.html",
                      {"username": throttled_username(request, credentials),
                       "failure_limit": settings.AXES_FAILURE_LIMIT, "minutes": minutes}, status=429)
    response["Retry-After"] = str(math.ceil(seconds))
    return response


class PasswordChangeCountedForm(FirstErrorFocused, PasswordChangeForm):
    """Django's form checks the old password with check_password, which axes never sees: a stolen
    session could guess it without end. Here it is checked by authenticate(), so a wrong one is a
    failed sign-in of this user from this address, and the lock refuses the change like a sign-in."""

    required_css_class = "required"  # as admin's form: its template marks the fields

    def __init__(self, user: Any, *args: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
        self.request = request
        super().__init__(user, *args, **kwargs)

    def clean_old_password(self) -> str:
        old_password: str = self.cleaned_data["old_password"]
        username = self.user.get_username()
        if authenticate(self.request, username=username, password=old_password) is None:
            raise ValidationError(self.error_messages["password_incorrect"], code="password_incorrect")
        # The right password clears the count, as a sign-in does (axes resets it on a sign-in only).
        if self.request is not None:
            axes_reset(ip=get_client_ip_address(self.request), username=throttled_username(
                self.request, {"username": username}))
        return old_password


class PasswordChangeCountedView(PasswordChangeView):
    form_class = PasswordChangeCountedForm

    def get_form_kwargs(self) -> dict[str, Any]:
        return {**super().get_form_kwargs(), "request": self.request}

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        # The same password typed again ends the API key too: someone re-saving a leaked password expects every
        # way in with it to close, as its other sessions do (the save alone keeps the key: Django re-hashes).
        api_token_end(user=form.user)
        return response


def _admin_password_change(request: HttpRequest) -> HttpResponseBase:
    """Admin's own password-change page (AdminSite.password_change) with the counted form."""
    request.current_app = admin.site.name
    return PasswordChangeCountedView.as_view(success_url=reverse("admin:password_change_done"),
                                             extra_context=admin.site.each_context(request))(request)


admin_password_change = admin.site.admin_view(_admin_password_change)
