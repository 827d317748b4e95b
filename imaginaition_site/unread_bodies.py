"""A refused request's connection is closed, and the answer says so.

gunicorn reads (and drops) at most 64 KiB of a body the application left unread, to find where the next
request on a kept-alive connection starts, and past that closes the connection, after answering with
"Connection: keep-alive". A client that believed it (a script's requests.Session after a 401 on an
upload, a refused file too large) failed on its next request with a connection error. An application
cannot send hop-by-hop headers through WSGI; gunicorn's own Response.force_close() makes it answer
"Connection: close" and close. Under another server (Django's runserver reads unread bodies itself) the
start_response has no force_close and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]
WsgiApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _has_body(environ: dict[str, Any]) -> bool:
    length = environ.get("CONTENT_LENGTH") or "0"
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    return chunked or (length.isdigit() and int(length) > 0)


def close_after_refused_bodies(application: WsgiApplication) -> WsgiApplication:
    """Answers of 400 and above to a request with a body close the connection (whether or not the body was
    read: a refused request's body mostly is not, and one more connection costs a client little)."""
    def wrapped(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
            if force_close is not None and status[:3] >= "400" and _has_body(environ):
                force_close()
            return start_response(status, headers, *exc_info)
        return application(environ, start)
    return wrapped
