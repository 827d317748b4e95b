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

pids=()
STOP_TIMEOUT="${IMAGINAITION_STOP_TIMEOUT:-30}"
force=0
kill_tree() {  # a process and every descendant (a cluster's workers are its grandchildren)
    local child
    for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do kill_tree "$child"; done
    kill -KILL "$1" 2>/dev/null || true
}
cleanup() {
    trap - EXIT
    trap 'force=1' INT TERM  # a second Ctrl-C: stop at once
    echo ">> stopping (workers finish their current task, for at most ${STOP_TIMEOUT} s; Ctrl-C again to stop now)"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    local deadline=$((SECONDS + STOP_TIMEOUT)) pid
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ "$force" = 0 ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5 || true; done
        if kill -0 "$pid" 2>/dev/null; then
            # A long task (a reset, a large batch) is left where it was: its images stay pending, and the
            # task is handed out again after the next start (Q_CLUSTER retry), which finishes them.
            echo ">> process $pid still busy: stopped now; its unfinished work is taken up again at the next start"
            kill_tree "$pid"
        fi
        wait "$pid" 2>/dev/null || true
    done
    trap - INT TERM
    if [ -z "${DATABASE_URL:-}" ]; then $PY -m imaginaition_site.embedded_db stop; fi
}
trap cleanup INT TERM EXIT

if [ -z "${DATABASE_URL:-}" ]; then $PY -m imaginaition_site.embedded_db start --holder $$; fi
$PY manage.py migrate --noinput
$PY manage.py fetch_weights || echo ">> fetch_weights failed; continuing with the weights that are present"
$PY manage.py reembed  # after a model change: queue the images the active models have not embedded
$PY manage.py ensure_admin
$PY manage.py qcluster &
pids+=($!)
# The interactive worker: an upload's labels and masks, while its page waits (never behind an import).
Q_CLUSTER_NAME=interactive $PY manage.py qcluster &
pids+=($!)
$PY -m gunicorn imaginaition_site.wsgi:application --bind "$HOST:$PORT" --workers 1 --threads 4 \
    --timeout 300 --graceful-timeout 10 --access-logfile - &
pids+=($!)
echo ">> ImaginAItion is running on http://$HOST:$PORT/  (admin: /admin/, API: /api/)  Ctrl-C stops it."
wait -n "${pids[@]}" || true
