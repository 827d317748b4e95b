# shellcheck shell=bash
# Stopping what a script started (sourced by run.sh): politely first, then for sure.

# A process and every descendant (a django-q cluster's workers are its grandchildren).
kill_tree() {
    local child
    for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do kill_tree "$child"; done
    kill -KILL "$1" 2>/dev/null || true
}

# stop_processes TIMEOUT PID...: SIGTERM to each; then wait for them, TIMEOUT seconds in all (or until
# the caller's trap sets force=1); whatever is still running then is killed with its descendants.
stop_processes() {
    local timeout=$1 pid
    shift
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done  # first: nothing below may keep it from them
    local deadline=$((SECONDS + timeout))
    for pid in "$@"; do
        # `|| true`: a Ctrl-C also interrupts this sleep, which must not end a `set -e` script here.
        while kill -0 "$pid" 2>/dev/null && [ "${force:-0}" = 0 ] && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.5 || true
        done
        if kill -0 "$pid" 2>/dev/null; then
            # A long task (a reset, a large batch) is left where it was: its images stay pending, and the
            # task is handed out again after the next start (Q_CLUSTER retry), which finishes them.
            echo ">> process $pid still busy: stopped now; its unfinished work is taken up again at the next start"
            kill_tree "$pid"
        fi
        wait "$pid" 2>/dev/null || true
        stop_group "$pid"
    done
}

# What is left of a role's own process group (run.sh starts each with setsid: its group is its first
# process's id) once that process ended: a cluster whose sentinel was killed leaves its workers and
# monitor running, orphaned. SIGTERM, up to 5 s, then SIGKILL.
stop_group() {
    local group=$1 deadline=$((SECONDS + 5))
    kill -0 -- -"$group" 2>/dev/null || return 0
    echo ">> processes left behind by $group: stopping them"
    kill -TERM -- -"$group" 2>/dev/null || true
    while kill -0 -- -"$group" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5 || true; done
    kill -KILL -- -"$group" 2>/dev/null || true
}
