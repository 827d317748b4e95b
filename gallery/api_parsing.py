"""The API's JSON parser (its own module: DRF's settings import it while rest_framework.views loads, so it
must not import the views)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class JsonParser(JSONParser):
    """DRF's, with a body nested deeper than Python's parser goes ("[" 100,000 times, a few hundred KB) refused
    like any malformed JSON: it raised RecursionError, a 500 whose traceback any signed-in user could write
    into the log."""

    def parse(self, stream: IO[Any], media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the data is nested too deeply.") from None
