#!/usr/bin/env bash
# Run the whole test suite against the real database: installs what tests need, starts the
# embedded PostgreSQL (unless DATABASE_URL is set), runs pytest, stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
scripts/install_browser.sh
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# Type check first: fails fast, and needs only importable settings (no database).
echo ">> mypy"
$PY -m mypy gallery retrieval imaginaition_site

# Released, not stopped: a `make run` of this checkout may be using the same server (the tests use
# their own database on it); the server stops here unless such a process still holds it.
shared_with=""
cleanup() {
    trap - INT TERM EXIT
    if [ -z "${DATABASE_URL:-}" ]; then
        shared_with=$($PY -m imaginaition_site.embedded_db release --holder $$ | grep "left running" || true)
    fi
}
trap cleanup INT TERM EXIT
if [ -z "${DATABASE_URL:-}" ]; then $PY -m imaginaition_site.embedded_db start --holder $$; fi

status=0
$PY -m pytest "$@" || status=$?
cleanup
# Nothing the suite started may outlive it: no PostgreSQL on our data folder or on a multi-host test's
# (tests/test_multihost.py: a mkdtemp "imaginaition-mh-pg-*"), no qcluster, no gunicorn of that test.
# Only the tests pass --no-control-socket: a developer's `make run` gunicorn never matches.
leftover_patterns=(
    "$(pwd)/.venv/.*/bin/postgres -D [^ ]*/imaginaition-mh-pg-[^/ ]*/pgdata"
    "$(pwd)/.venv/bin/python manage.py qcluster"
    "$(pwd)/.venv/bin/python -m gunicorn imaginaition_site\.wsgi:application .*--no-control-socket"
)
if [ -n "$shared_with" ]; then
    echo ">> $shared_with (not the tests'), so it was not stopped"
else
    leftover_patterns+=("postgres.*$(pwd)/var/pgdata")
fi
leftover=$(IFS='|'; pgrep -af "${leftover_patterns[*]}" || true)
if [ -n "$leftover" ]; then
    echo "!! processes left running after the tests:"; echo "$leftover"; status=1
fi
exit $status
