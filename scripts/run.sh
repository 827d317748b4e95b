#!/usr/bin/env bash
# Run the service: install, migrate, prepare weights, ensure an admin, start workers and the web
# server on 127.0.0.1:8000. Ctrl-C stops everything this script started, the embedded database too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
PY=.venv/bin/python
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # models load from local files only (see weights/README.md)
HOST="${IMAGINAITION_HOST:-127.0.0.1}"
PORT="${IMAGINAITION_PORT:-8000}"

source scripts/stop.sh
pids=()
STOP_TIMEOUT="${IMAGINAITION_STOP_TIMEOUT:-30}"
force=0
cleanup() {
    trap - EXIT
    trap 'force=1' INT TERM HUP  # a second Ctrl-C: stop at once
    echo ">> stopping (workers finish their current task, for at most ${STOP_TIMEOUT} s; Ctrl-C again to stop now)"
    stop_processes "$STOP_TIMEOUT" "${pids[@]}"
    trap - INT TERM HUP
    # Released, not stopped: another `make run` of this checkout may still be using it.
    if [ -z "${DATABASE_URL:-}" ]; then $PY -m imaginaition_site.embedded_db release --holder $$; fi
}
trap cleanup INT TERM HUP EXIT  # HUP: the terminal closed (the workers, in their own sessions, do not see it)

if [ -z "${DATABASE_URL:-}" ]; then $PY -m imaginaition_site.embedded_db start --holder $$; fi
$PY manage.py migrate --noinput
$PY manage.py fetch_weights || echo ">> fetch_weights failed; continuing with the weights that are present"
$PY manage.py reembed  # after a model change: queue the images the active models have not embedded
$PY manage.py ensure_admin
# Each in its own session (setsid): a terminal's Ctrl-C reaches only this script, which then sends each
# one SIGTERM, once. A cluster that got the terminal's SIGINT and then our SIGTERM ran its stop twice,
# nested, and hung in it.
setsid $PY manage.py qcluster &
pids+=($!)
# The interactive worker: an upload's labels and masks, while its page waits (never behind an import).
Q_CLUSTER_NAME=interactive setsid $PY manage.py qcluster &
pids+=($!)
setsid $PY -m gunicorn imaginaition_site.wsgi:application --bind "$HOST:$PORT" --workers 1 --threads 4 \
    --timeout 300 --graceful-timeout 10 --access-logfile - &
pids+=($!)
echo ">> ImaginAItion is running on http://$HOST:$PORT/  (admin: /admin/, API: /api/)  Ctrl-C stops it."
wait -n "${pids[@]}" || true
