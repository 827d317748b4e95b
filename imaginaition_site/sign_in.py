"""Sign-in throttling (django-axes, settings AXES_*): how a locked-out sign-in is answered, and the user
name it is counted under."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

USERNAME_MAX = 150  # Django's user name limit: no account has a longer one


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
