"""gunicorn's settings for the web role, read from the folder it starts in (the project's: `make run`,
the web command in docs/DEPLOYMENT.md). What each deployment changes stays on the command line."""

# A search page's address holds its text query: up to 500 characters, and a character of most scripts
# takes 9 bytes in an address (3 in UTF-8, each written %XX). The default, 4094 bytes, answered a bare 414
# from about 450 such characters; 8190 is the most gunicorn accepts.
limit_request_line = 8190

# No control socket: its default path is one per user (~/.gunicorn/gunicorn.ctl), so a second web process
# on the host (another checkout's make run, a second role) took it over, and stopping either removed it.
control_socket_disable = True

# Whether a request came over HTTPS is Django's to tell (SECURE_PROXY_SSL_HEADER, set only with
# IMAGINAITION_HTTPS=1, behind a proxy that sets the header). gunicorn's own default trusted a client's
# X-Forwarded-Proto (or -SSL) from 127.0.0.1 whatever that setting: through a proxy on the same host that
# passes headers on, any client made every link say https and a session's writes fail the Origin check.
secure_scheme_headers: dict[str, str] = {}
