"""Refused input: the one exception type every layer raises for a person's mistake, and its HTTP code.

The REST API turns any `Refused` into `{"detail": message}` with `status_code`, or `{field: [message]}`
when it names the request's field at fault, as DRF's validation does (gallery.api's exception handler);
pages show the message. Nothing is written when one is raised.
"""

from __future__ import annotations


class Refused(Exception):
    """Input the product will not take: a message for a person and the HTTP status that says why."""

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None, field: str = "") -> None:
        super().__init__(message)
        self.message, self.field = message, field
        if status_code is not None:
            self.status_code = status_code
