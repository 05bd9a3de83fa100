# shellcheck shell=bash
# bench/lib.sh — helpers shared by compare.sh and upgrade.sh (sourced, bash).
#
# Processes are tracked by pid only: every pid a run starts is appended to
# "$dir/pids", and the run ends them from that list (nginx through its own pid
# files). Nothing here looks processes up by name.

# Milliseconds in a duration such as 500ms, 4s, 1.5s, 2m.
ms_of() {
    local d=$1
    case $d in
        *ms) awk -v v="${d%ms}" 'BEGIN { printf "%d", v }' ;;
        *s)  awk -v v="${d%s}" 'BEGIN { printf "%d", v * 1000 }' ;;
        *m)  awk -v v="${d%m}" 'BEGIN { printf "%d", v * 60000 }' ;;
        *)   echo "bench: cannot read duration '$d' (use 500ms, 4s, 2m)" >&2; return 1 ;;
    esac
}

# True while pid $1 exists and is not a zombie (an orphan's zombie may linger
# when pid 1 does not reap). Builtins only: upgrade commands poll this while
# the machine is saturated by the load, and every fork would blur the timing.
alive() {
    local stat
    [ -n "${1:-}" ] || return 1
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ] && [ "${stat%% *}" != X ]
}

# The pid in file $1, or nothing.
read_pid() {
    local pid=""
    { read -r pid <"$1"; } 2>/dev/null || true
    printf '%s' "${pid//[^0-9]/}"
}

# nap: sleeps 10 ms without starting a process (read times out on a pipe
# nobody writes to).
nap() {
    if [ -z "${_nap_fd:-}" ]; then
        exec {_nap_fd}<> <(:)
    fi
    read -r -t 0.01 -u "$_nap_fd" _ || true
}

# wait_for SECONDS COMMAND...: polls COMMAND every 10 ms; fails after SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        nap
    done
}

# pid_is FILE PID: the file names PID.
pid_is() {
    local pid=""
    { read -r pid <"$1"; } 2>/dev/null || true
    [ -n "$pid" ] && [ "$pid" = "$2" ]
}
# pid_other_than FILE PID: the file names a live process other than PID.
pid_other_than() {
    local pid=""
    { read -r pid <"$1"; } 2>/dev/null || true
    [ -n "$pid" ] && [ "$pid" != "$2" ] && alive "$pid"
}
not_alive() { ! alive "$1"; }

# record DIR PID: remember a pid this run started, for the final clean-up.
record() { if [ -n "${2:-}" ]; then echo "$2" >>"$1/pids"; fi; }

# start_bg DIR LOG PROGRAM ARGS...: starts a server in the background, detached
# from our stdout (a command-output pipe must not stay open), records it and
# prints its pid.
start_bg() {
    local dir=$1 log=$2
    shift 2
    "$@" >>"$log" 2>&1 </dev/null &
    local pid=$!
    record "$dir" "$pid"
    echo "$pid"
}
