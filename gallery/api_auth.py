"""The API's token authentication (its own module: DRF's settings import it while rest_framework.views
loads, so it must not import the views)."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request


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
