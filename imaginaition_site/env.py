"""Settings read from the environment: each stops every command at once with the variable's name when its
value cannot work (settings.py and storage_settings.py read them; neither may import the other's module)."""

import math
import os
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def env_number(name: str, default: float | None, *, minimum: float, maximum: float | None = None,
               exclusive_minimum: bool = False, whole: bool = True, environ: Mapping[str, str] = os.environ) -> Any:
    """A numeric setting from the environment; a value that is not one, below `minimum` (or equal to it with
    `exclusive_minimum`) or above `maximum`, stops every command at once with the variable's name (not a
    traceback from deep inside a model, a worker or the database). `environ`: another mapping to read."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = None
    if (value is None or not math.isfinite(value)  # NaN and infinities too ("inf" seconds is no setting)
            or value < minimum or (exclusive_minimum and value == minimum)
            or (maximum is not None and value > maximum)):
        kind = "a whole number" if whole else "a number"
        low = f"more than {minimum:g}" if exclusive_minimum else f"at least {minimum:g}"
        high = "" if maximum is None else f" and at most {maximum:g}"
        raise ImproperlyConfigured(f"{name} must be {kind} of {low}{high}, not {text!r}")
    return value


def env_list(name: str, default: str, separator: str = ",") -> list[str]:
    """A list setting: items separated by `separator`, each stripped of spaces; blank items dropped."""
    return [item.strip() for item in os.environ.get(name, default).split(separator) if item.strip()]


def env_rate(name: str, default: str) -> str:
    """A request rate as DRF's throttles read it ("10/minute": a count per second, minute, hour or day)."""
    text = os.environ.get(name, "").strip() or default
    count, _, period = text.partition("/")
    if not (count.isascii() and count.isdigit() and period[:1] in {"s", "m", "h", "d"}):  # "²" is a digit too
        raise ImproperlyConfigured(f"{name} must be a count per period such as 10/minute (s, m, h or d), "
                                   f"not {text!r}")
    return text


def env_choice(name: str, default: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    """A setting that takes one of a few words (the case of `upper` words does not matter)."""
    text = os.environ.get(name, "").strip() or default
    value = text.upper() if upper else text
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {text!r}")
    return value
