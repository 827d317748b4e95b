"""Settings read from the environment: each stops every command at once with the variable's name when its
value cannot work (settings.py and storage_settings.py read them; neither may import the other's module)."""

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_bool(name: str, default: bool) -> bool:
    """A switch: blank is the default; a word that is neither yes nor no stops every command (any other word
    was read as no: IMAGINAITION_HTTPS=enabled left the cookies insecure without a word)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if text.lower() not in TRUE_WORDS + FALSE_WORDS:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(TRUE_WORDS)} (on) or "
                                   f"{', '.join(FALSE_WORDS)} (off), not {text!r}")
    return text.lower() in TRUE_WORDS


def env_text(name: str, default: str) -> str:
    """A word setting whose value is checked where it is used (a system check lists what it may be): blank is
    the default, as for every other setting (IMAGINAITION_MODEL_PROFILE= from an env file stopped every command)."""
    return os.environ.get(name, "").strip() or default


def env_folder(name: str, default: Path) -> Path:
    """A folder the project writes in: env_path, refused by name when it is a file (a traceback followed)."""
    path = env_path(name, default)
    if path.exists() and not path.is_dir():
        raise ImproperlyConfigured(f"{name} must be a folder (made when missing), not the file {path}")
    return path


def env_path(name: str, default: Path) -> Path:
    """A folder or file setting (a leading ~ is the home folder); blank is the default (it was the working
    folder: a process started elsewhere made a secret key, media and indexes of its own there)."""
    text = os.environ.get(name, "").strip()
    return Path(text).expanduser() if text else default


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
    """A list setting: items separated by `separator`, each stripped of spaces; blank items dropped, and
    a blank setting is the default (DJANGO_ALLOWED_HOSTS= refused every request)."""
    text = os.environ.get(name, "").strip() or default
    return [item.strip() for item in text.split(separator) if item.strip()]


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
