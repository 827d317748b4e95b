#!/usr/bin/env bash
# Run the service: install, prepare weights, migrate, ensure an admin, start workers and the web
# server on 127.0.0.1:8000. Ctrl-C stops everything this script started, the embedded database too.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/settings.sh
HOST="${IMAGINAITION_HOST:-127.0.0.1}"
PORT=$(whole_number_setting IMAGINAITION_PORT 8000 1 65535)
STOP_TIMEOUT=$(whole_number_setting IMAGINAITION_STOP_TIMEOUT 30 0 86400)
if port_answers "$HOST" "$PORT"; then
    echo "Error: something already answers on $HOST:$PORT (another make run?): stop it or set IMAGINAITION_PORT" >&2
    exit 1
fi
scripts/bootstrap.sh
PY=.venv/bin/python
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # models load from local files only (see weights/README.md)

source scripts/stop.sh
pids=()
force=0
stopping=0
cleanup() {
    stopping=1
    trap - EXIT
    trap 'force=1' INT TERM HUP  # a second Ctrl-C: stop at once
    if [ "${#pids[@]}" -gt 0 ]; then  # (a setup step that failed has started none: nothing to wait for)
        echo ">> stopping (workers finish their current task, for at most ${STOP_TIMEOUT} s; Ctrl-C again to stop now)"
        stop_processes "$STOP_TIMEOUT" "${pids[@]}"
    fi
    trap - INT TERM HUP
    # Released, not stopped: another `make run` of this checkout may still be using it.
    if [ -z "${DATABASE_URL:-}" ]; then $PY -m imaginaition_site.embedded_db release --holder $$; fi
}
trap cleanup INT TERM HUP EXIT  # HUP: the terminal closed (the workers, in their own sessions, do not see it)

# The service's settings, each refused in one line, before anything starts: a wrong one was said by
# fetch_weights, then "going on", then again by migrate.
$PY -m imaginaition_site.check_settings
if [ -z "${DATABASE_URL:-}" ]; then $PY -m imaginaition_site.embedded_db start --holder $$; fi
# Weights first: with IMAGINAITION_MODEL_PROFILE=standard and none present, `migrate`'s system checks stop
# (retrieval.E002) before a later fetch_weights could have brought them.
$PY manage.py fetch_weights || echo ">> fetch_weights failed; going on with the weights that are present (the next step stops if the active models lack theirs)"
$PY manage.py migrate --noinput
$PY manage.py reembed  # after a model change: queue the images the active models have not embedded
$PY manage.py ensure_admin
# Each in its own session (setsid): a terminal's Ctrl-C reaches only this script, which then sends each
# one SIGTERM, once. A cluster that got the terminal's SIGINT and then our SIGTERM ran its stop twice,
# nested, and hung in it.
declare -A roles
if [ -z "${DATABASE_URL:-}" ]; then
    # The embedded server is no child of this script (a daemon of its own): a watcher ends when it does
    # (killed, out of memory), and make run stops the rest and fails, as when any other process ends; with
    # nothing watching, pages answered 503 "try again in a moment" for as long as make run ran.
    db_pid=$($PY -m imaginaition_site.embedded_db pid)
    ( while kill -0 "$db_pid" 2>/dev/null; do sleep 2; done ) &
    pids+=($!); roles[$!]="the embedded database (postgres, pid $db_pid)"
fi
setsid $PY manage.py qcluster &
pids+=($!); roles[$!]="the workers (qcluster)"
# The interactive worker: an upload's labels and masks, while its page waits (never behind an import).
Q_CLUSTER_NAME=interactive setsid $PY manage.py qcluster &
pids+=($!); roles[$!]="the interactive worker (qcluster interactive)"
setsid $PY -m gunicorn imaginaition_site.wsgi:application --bind "$HOST:$PORT" --workers 1 --threads 4 \
    --timeout 300 --graceful-timeout 10 --access-logfile - &
web=$!
pids+=("$web"); roles[$web]="the web server (gunicorn)"
# Running once the web server answers; one that cannot start ends, and so does make run, with an error
# status (what a service manager's restart-on-failure goes by), after stopping the workers.
until port_answers "$HOST" "$PORT"; do
    if [ "$stopping" = 1 ]; then exit 0; fi
    if ! kill -0 "$web" 2>/dev/null; then
        echo ">> the web server did not start (its messages are above): stopping" >&2
        exit 1
    fi
    sleep 0.5 || true
done
echo ">> ImaginAItion is running on http://$HOST:$PORT/  (admin: /admin/, API: /api/)  Ctrl-C stops it."
status=0
ended=""
wait -n -p ended "${pids[@]}" || status=$?
# Here a Ctrl-C's stop has run (a stop that was asked for: status 0), or one of the three ended on its own:
# the EXIT trap stops the others, and the status says it failed.
if [ "$stopping" = 1 ]; then exit 0; fi
echo ">> ${roles[${ended:-none}]:-a process of the service} ended (status $status): stopping the others" >&2
[ "$status" != 0 ] || status=1  # the service stopped without being asked: a failure whatever it said
exit "$status"
