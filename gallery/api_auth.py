"""The API's token authentication (its own module: DRF's settings import it while rest_framework.views
loads, so it must not import the views)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request

from gallery.access import can_view_gallery


class ApiTokenAuthentication(TokenAuthentication):
    """`Authorization: Token <key>`, or `Bearer <key>` as many clients send it. Listed first, a token
    wins over a session cookie the same client holds (a session's writes need a CSRF token), and a
    request with neither is told 401 with `WWW-Authenticate: Token`."""

    KEYWORDS = (b"token", b"bearer")

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        words = get_authorization_header(request).split()
        if not words or words[0].lower() not in self.KEYWORDS:
            return None
        if len(words) != 2:
            raise AuthenticationFailed("Give the header as `Authorization: Token <key>`, one key without spaces.")
        try:
            key = words[1].decode()
        except UnicodeError:
            raise AuthenticationFailed("The token holds characters no token has.") from None
        return self.authenticate_credentials(key)


class SessionAuthentication(authentication.SessionAuthentication):
    """DRF's session authentication, whose CSRF check covers a signed-in user only: a public gallery's
    signed-out visitor keeps preferences in a session too, and the pages' forms need the token for those
    writes. So a write that carries a session cookie needs it as well where signed-out visitors may write
    (a public gallery); a script without cookies has no session to protect, and on a private gallery such a
    write is refused anyway (401)."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        found = super().authenticate(request)
        if (found is None and request.method not in SAFE_METHODS
                and settings.SESSION_COOKIE_NAME in request._request.COOKIES and can_view_gallery(AnonymousUser())):
            self.enforce_csrf(request)
        return found
