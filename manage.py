#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line
    from django.db import OperationalError, ProgrammingError

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:  # a setting's value (e.g. IMAGINAITION_BATCH_SIZE=abc): say which, in one line
        sys.exit(f"Error: {exc}")
    except OperationalError as exc:  # the database cannot be reached (a wrong DATABASE_URL, a server down)
        where = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "the embedded database (var/pgdata)"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sys.exit(f"Error: cannot use the database of {where}: {reason}")
    except ProgrammingError as exc:
        first_line = str(exc).strip().splitlines()[0]
        if 'extension "vector"' in first_line:  # migrate's CREATE EXTENSION: no right to, or no pgvector on the server
            sys.exit(f"Error: the database lacks the pgvector extension ({first_line}): a superuser runs `CREATE "
                     "EXTENSION vector;` in it once, on a server with pgvector installed (docs/DEPLOYMENT.md)")
        if getattr(exc.__cause__, "sqlstate", None) != "42P01":  # undefined_table: not migrated; others are bugs
            raise
        sys.exit(f"Error: the database has no tables of this service ({first_line}): run "
                 "`python manage.py migrate` first, or check DATABASE_URL / IMAGINAITION_DATABASE_NAME")


if __name__ == "__main__":
    main()
