#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:  # a setting's value (e.g. IMAGINAITION_BATCH_SIZE=abc): say which, in one line
        sys.exit(f"Error: {exc}")


if __name__ == "__main__":
    main()
