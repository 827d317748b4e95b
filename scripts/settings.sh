# shellcheck shell=bash
# The settings make run reads itself (sourced by run.sh), refused in one line as manage.py refuses the
# others, before anything starts: IMAGINAITION_STOP_TIMEOUT=30s once ended the stop's arithmetic before
# any process was asked to stop (web and workers ran on), and IMAGINAITION_PORT=abc said "running".

# whole_number_setting NAME DEFAULT MIN MAX: the variable's value as a plain decimal (blank: DEFAULT).
whole_number_setting() {
    local name=$1 default=$2 low=$3 high=$4 text
    text="${!name:-}"
    text="${text//[[:space:]]/}"
    [ -n "$text" ] || text=$default
    # At most 9 digits before any arithmetic (bash wraps larger ones); 10#: "08" is eight, not octal.
    if [[ ! "$text" =~ ^[0-9]{1,9}$ ]] || ((10#$text < low || 10#$text > high)); then
        echo "Error: $name must be a whole number of at least $low and at most $high, not '${!name}'" >&2
        return 1
    fi
    echo $((10#$text))
}

# port_answers HOST PORT: whether something accepts connections there (0.0.0.0 and :: are this host).
port_answers() {
    local host=$1
    case "$host" in 0.0.0.0 | "::" | "[::]") host=127.0.0.1 ;; esac
    (exec 3<>"/dev/tcp/$host/$2") 2>/dev/null
}
