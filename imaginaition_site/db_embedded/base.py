"""Django database backend: PostgreSQL, on the embedded server started on first connection.

Only selected when ``DATABASE_URL`` is unset. Starting lazily (not at settings import) means a
command that never touches the database (``manage.py help``, ``check``) never starts a server.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base

from imaginaition_site import embedded_db


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        server = embedded_db.ensure_running()
        params.update(host=server.host, port=server.port, user=server.user)
        return params
