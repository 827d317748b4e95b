"""`python -m imaginaition_site.check_settings`: the service's settings read, a wrong one named in one line as
manage.py names it, in a fraction of a second. make run asks before it starts anything; a manage.py command
(diffsettings) did the same in 6-11 s here, as Django's start loads every app and the models' libraries."""

from __future__ import annotations

import importlib
import sys

from django.core.exceptions import ImproperlyConfigured


def main() -> int:
    try:
        importlib.import_module("imaginaition_site.settings")  # reading them is the check
    except ImproperlyConfigured as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
