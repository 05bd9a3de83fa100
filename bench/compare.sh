#!/usr/bin/env bash
# bench/compare.sh — the same load and the same upgrades against handover and
# the other ways of upgrading a server, in one run:
#
#   (a) handover   hello on the handover library (SIGHUP)
#   (b) plain      naive restart: stop the server, start it again
#   (c) holder     a parent holds the socket, restarts its child sequentially
#                  (systemfd / catflap style; the child is hello)
#   (d) reuseport  the new process binds its own SO_REUSEPORT socket, then the
#                  old one closes its socket
#   (e) nginx      Debian's nginx, binary upgrade (USR2, new master, QUIT old)
#   (f) ecdysis    a server on cloudflare's ecdysis crate (SIGHUP)
#
# each in keep-alive and new-connection-per-request mode, with the same start-up
# delay, driven by `handover check`. Writes the table into the marked section of
# docs/BENCHMARKS.md and the plots into docs/bench/.
#
# Usage: bench/compare.sh [--duration 20s] [--every 4s] [--connections 16]
#                         [--startup-delay 1s]
# Also: --peers handover,plain,holder,reuseport,nginx,ecdysis (a subset),
#       --modes keepalive,close, --doc FILE (default docs/BENCHMARKS.md; the
#       plots go to bench/ beside it). HANDOVER=/path/to/handover picks the
#       load driver (default target/release/handover).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

duration=20s every=4s connections=16 startup_delay=1s
peers=handover,plain,holder,reuseport,nginx,ecdysis
modes=keepalive,close
doc=docs/BENCHMARKS.md
command_line="bench/compare.sh${*:+ $*}"

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --duration) duration=$2; shift 2 ;;
        --every) every=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --startup-delay) startup_delay=$2; shift 2 ;;
        --peers) peers=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --doc) doc=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

duration_ms=$(ms_of "$duration")
every_ms=$(ms_of "$every")
ms_of "$startup_delay" >/dev/null
# Upgrades at every, 2·every, …, leaving a whole interval after the last one.
upgrade_count=$((duration_ms / every_ms - 1))
if [ "$upgrade_count" -lt 1 ]; then
    echo "compare.sh: --duration must be at least twice --every" >&2
    exit 2
fi
# Every request is kept in memory by the checker: allow 300 000 per second of
# the run (far above what two cores serve), so the cap never ends a run early.
max_requests=$((duration_ms * 300 + 1000000))
# Every load run is bounded: the checker's own duration, plus room for the
# last upgrade and the drain, then timeout(1).
check_limit=$((duration_ms / 1000 + 90))

log() { printf '\033[1m[compare]\033[0m %s\n' "$*" >&2; }

# ---------------------------------------------------------------- build
bin=$root/target/release
# The load driver; HANDOVER=/path/to/handover uses another build of it.
handover=${HANDOVER:-$bin/handover}
cd "$root"
log "building (release): hello, handover-cli, handover-peers"
skipped=()
if ! cargo build --release -p hello -p handover-cli -p handover-peers; then
    log "full build failed; building without the ecdysis peer"
    cargo build --release -p hello -p handover-cli
    if cargo build --release -p handover-peers --no-default-features; then
        skipped+=("ecdysis=the ecdysis crate could not be built (see the cargo output above)")
    else
        log "handover-peers does not build: only handover and nginx can run"
        skipped+=("plain=handover-peers does not build" "holder=handover-peers does not build"
            "reuseport=handover-peers does not build" "ecdysis=handover-peers does not build")
    fi
fi
if ! "$handover" check --help >/dev/null 2>&1; then
    echo "compare.sh: '$handover check' is not usable; it is the load driver, cannot go on" >&2
    exit 1
fi

# ---------------------------------------------------------------- nginx
nginx_bin=$(command -v nginx || true)
[ -n "$nginx_bin" ] || { [ -x /usr/sbin/nginx ] && nginx_bin=/usr/sbin/nginx; } || true
if [[ ",$peers," == *,nginx,* ]] && [ -z "$nginx_bin" ]; then
    log "nginx missing: apt-get install -y nginx"
    if { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx; } >&2; then
        nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
    else
        skipped+=("nginx=nginx is not installed and apt-get install nginx failed")
    fi
fi
nginx_version=""
if [ -n "$nginx_bin" ] && [ -x "$nginx_bin" ]; then
    nginx_version=$("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //')
fi

is_skipped() {
    local s
    for s in "${skipped[@]+"${skipped[@]}"}"; do
        [ "${s%%=*}" = "$1" ] && return 0
    done
    return 1
}

# ---------------------------------------------------------------- runs
work=$(mktemp -d "${TMPDIR:-/tmp}/handover-compare.XXXXXX")
results=$work/results
case $doc in /*) ;; *) doc=$root/$doc ;; esac
docdir=$(dirname "$doc")
mkdir -p "$results" "$docdir/bench"
log "work directory: $work"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

serves() { curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; }

# start_peer PEER DIR PORT: starts the peer and waits until it serves.
start_peer() {
    local peer=$1 dir=$2 port=$3 pid
    local listen=127.0.0.1:$port
    case $peer in
        handover)
            start_bg "$dir" "$dir/server.log" "$bin/hello" --listen "$listen" \
                --startup-delay "$startup_delay" --pid-file "$dir/server.pid" >/dev/null
            ;;
        plain | reuseport)
            start_bg "$dir" "$dir/server.log" "$bin/peer-$peer" --listen "$listen" \
                --startup-delay "$startup_delay" --pid-file "$dir/server.pid" >/dev/null
            ;;
        ecdysis)
            # Started from its directory: ecdysis re-executes argv[0] in the cwd.
            (cd "$dir" && start_bg "$dir" "$dir/server.log" "$bin/peer-ecdysis" --listen "$listen" \
                --startup-delay "$startup_delay" --pid-file "$dir/server.pid" >/dev/null)
            ;;
        holder)
            pid=$(start_bg "$dir" "$dir/server.log" "$bin/peer-holder" --listen "$listen" \
                --pid-file "$dir/holder.pid" -- \
                "$bin/hello" --listen "$listen" --startup-delay "$startup_delay" \
                --pid-file "$dir/server.pid")
            echo "$pid" >"$dir/holder.pid.started"
            ;;
        nginx)
            mkdir -p "$dir/tmp"
            cat >"$dir/nginx.conf" <<CONF
# Written by bench/compare.sh. No start-up delay to simulate: nginx starts in
# milliseconds.
worker_processes 1;
daemon on;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    # Like the other servers: no cap on requests per keep-alive connection.
    keepalive_requests 1000000;
    server {
        listen $listen backlog=1024;
        location / {
            default_type text/plain;
            add_header x-pid \$pid always;
            return 200 "hello from pid=\$pid\n";
        }
    }
}
CONF
            "$nginx_bin" -p "$dir" -c "$dir/nginx.conf" >>"$dir/server.log" 2>&1 </dev/null
            wait_for 10 test -s "$dir/nginx.pid" || return 1
            record "$dir" "$(read_pid "$dir/nginx.pid")"
            ;;
    esac
    wait_for 30 test -s "$dir/server.pid" -o -s "$dir/nginx.pid" || return 1
    record "$dir" "$(read_pid "$dir/server.pid")"
    wait_for 30 serves "$port"
}

# cpu_busy: percentage of CPU time in use over one second (all cores).
cpu_busy() {
    local _c u n s i w q sq st total1 idle1
    read -r _c u n s i w q sq st _ </proc/stat
    total1=$((u + n + s + i + w + q + sq + st)) idle1=$((i + w))
    sleep 1
    read -r _c u n s i w q sq st _ </proc/stat
    local total=$((u + n + s + i + w + q + sq + st - total1)) idle=$((i + w - idle1))
    echo $(((total - idle) * 100 / (total > 0 ? total : 1)))
}

# quiet: waits (up to 60 s) until the machine is mostly idle before a run, as
# other work on the machine (a build) would distort it; prints the busy share.
quiet() {
    local busy tries=0
    busy=$(cpu_busy)
    while [ "$busy" -gt 25 ] && [ $tries -lt 60 ]; do
        [ $tries -eq 0 ] && log "machine busy (${busy} % CPU): waiting for it to calm down"
        busy=$(cpu_busy)
        tries=$((tries + 1))
    done
    [ "$busy" -gt 25 ] && log "still ${busy} % CPU busy before this run: its numbers are disturbed"
    echo "$busy"
}

# children PID: the pids of its direct children (nginx workers).
children() { cat /proc/"$1"/task/*/children 2>/dev/null || true; }

# stop_peer DIR: ends everything the run started, by pid.
stop_peer() {
    local dir=$1 pid pids=() all=()
    if [ -f "$dir/nginx.conf" ]; then
        # nginx through its own pid files: QUIT the master(s), workers follow.
        for f in "$dir/nginx.pid" "$dir/nginx.pid.oldbin"; do
            pid=$(read_pid "$f")
            if alive "$pid"; then
                pids+=("$pid")
                # shellcheck disable=SC2207
                all+=($(children "$pid"))
                kill -QUIT "$pid" 2>/dev/null || true
            fi
        done
    fi
    # The holder stops its own child; everything else is told one by one.
    local each=yes
    [ -f "$dir/nginx.conf" ] && each=no
    pid=$(read_pid "$dir/holder.pid.started")
    if [ -n "$pid" ]; then
        each=no
        if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    fi
    if [ -f "$dir/pids" ]; then
        while read -r pid; do
            alive "$pid" || continue
            all+=("$pid")
            if [ $each = yes ]; then kill -TERM "$pid" 2>/dev/null || true; fi
        done < <(sort -un "$dir/pids")
    fi
    all+=("${pids[@]+"${pids[@]}"}")
    local deadline=$((SECONDS + 15)) left
    while :; do
        left=()
        for pid in "${all[@]+"${all[@]}"}"; do
            alive "$pid" && left+=("$pid")
        done
        [ ${#left[@]} -eq 0 ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "still running after 15 s, killing: ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            return 0
        fi
        sleep 0.05
    done
}

current_dir=""
cleanup() {
    if [ -n "$current_dir" ]; then
        stop_peer "$current_dir" || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_one PEER MODE: one run, fresh server on a fresh port; writes
# results/PEER-MODE.json; sets busy_before and busy_after (CPU busy right after the run: a
# build that started during the run is most likely still going).
run_one() {
    local peer=$1 mode=$2 dir port status plot
    dir=$work/$peer-$mode
    rm -rf "$dir"
    mkdir -p "$dir"
    current_dir=$dir
    port=$(free_port)
    cat >"$dir/peer.env" <<ENV
BIN='$bin'
PORT='$port'
STARTUP_DELAY='$startup_delay'
ENV
    busy=$(quiet)
    busy_before=$busy
    log "$peer / $mode on 127.0.0.1:$port (CPU busy before: $busy %)"
    busy_after=0
    if ! start_peer "$peer" "$dir" "$port"; then
        log "$peer did not start serving; see $dir/server.log — skipping this run"
        tail -n 20 "$dir/server.log" >&2 || true
        stop_peer "$dir"
        current_dir=""
        printf '{"peer": "%s", "mode": "%s", "error": "did not start"}\n' "$peer" "$mode" \
            >"$results/$peer-$mode.json"
        return 0
    fi
    plot=bench/compare-$peer-$mode.svg
    set +e
    timeout --kill-after=10 "$check_limit" "$handover" check \
        --target "http://127.0.0.1:$port/" \
        --upgrade "bash '$here/upgrade.sh' $peer '$dir'" \
        --every "$every" --duration "$duration" --upgrade-count "$upgrade_count" \
        --connections "$connections" --mode "$mode" --max-requests "$max_requests" \
        --no-progress --json --plot "$docdir/$plot" >"$dir/check.json" 2>"$dir/check.err"
    status=$?
    set -e
    stop_peer "$dir"
    current_dir=""
    busy_after=$(cpu_busy)
    python3 - "$dir" "$results/$peer-$mode.json" "$peer" "$mode" "$status" "$plot" \
        "$busy" "$busy_after" <<'PY'
import json, os, sys
src, dst, peer, mode, status, plot, busy, after = sys.argv[1:]
entry = {"peer": peer, "mode": mode, "exit_status": int(status), "plot": plot,
         "cpu_busy_before_percent": int(busy), "cpu_busy_after_percent": int(after)}
try:
    with open(os.path.join(src, "upgrade.log")) as f:
        entry["upgrade_log"] = f.read().splitlines()
except OSError:
    pass
try:
    with open(os.path.join(src, "check.json")) as f:
        entry["check"] = json.load(f)
except (OSError, ValueError) as e:
    entry["error"] = f"no JSON from handover check (exit status {status}): {e}"
with open(dst, "w") as f:
    json.dump(entry, f, indent=1)
PY
    if [ "$status" -gt 1 ]; then
        log "handover check exited with status $status for $peer/$mode:"
        tail -n 20 "$dir/check.err" >&2 || true
    fi
    python3 - "$results/$peer-$mode.json" <<'PY' >&2 || true
import json, sys
e = json.load(open(sys.argv[1]))
c = e.get("check") or {}
print(f"           requests {c.get('requests')} failed {c.get('failed')} "
      f"{ {k: v for k, v in (c.get('failures') or {}).items() if v} } verdict {c.get('verdict')}"
      f"{' REQUEST CAP REACHED' if c.get('request_cap_reached') else ''}")
PY
}

IFS=, read -r -a peer_list <<<"$peers"
IFS=, read -r -a mode_list <<<"$modes"
for peer in "${peer_list[@]}"; do
    case $peer in
        handover | plain | holder | reuseport | nginx | ecdysis) ;;
        *) echo "compare.sh: unknown peer '$peer'" >&2; exit 2 ;;
    esac
done
# Runs disturbed by other work on the machine are repeated, at most 3 in all
# (so the whole stays bounded in time).
retries_left=3
for peer in "${peer_list[@]}"; do
    if is_skipped "$peer"; then
        for s in "${skipped[@]}"; do
            [ "${s%%=*}" = "$peer" ] && log "SKIPPING $peer: ${s#*=}"
        done
        continue
    fi
    for mode in "${mode_list[@]}"; do
        run_one "$peer" "$mode"
        if { [ "$busy_after" -gt 25 ] || [ "$busy_before" -gt 25 ]; } && [ $retries_left -gt 0 ]; then
            retries_left=$((retries_left - 1))
            log "CPU ${busy_before} % / ${busy_after} % busy before / after the run: other work disturbed it; repeating it"
            run_one "$peer" "$mode"
        fi
    done
done

# ---------------------------------------------------------------- table
COMMAND_LINE=$command_line DURATION=$duration EVERY=$every CONNECTIONS=$connections \
STARTUP_DELAY=$startup_delay UPGRADE_COUNT=$upgrade_count PEERS=$peers MODES=$modes \
NGINX_VERSION=$nginx_version RUSTC_VERSION=$(rustc --version 2>/dev/null || true) \
RUN_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') \
python3 - "$results/meta.json" "${skipped[@]+"${skipped[@]}"}" <<'PY'
import json, os, sys
env = os.environ
meta = {
    "command": env["COMMAND_LINE"],
    "duration": env["DURATION"], "every": env["EVERY"],
    "connections": int(env["CONNECTIONS"]), "startup_delay": env["STARTUP_DELAY"],
    "upgrade_count": int(env["UPGRADE_COUNT"]),
    "peers": env["PEERS"].split(","), "modes": env["MODES"].split(","),
    "nginx_version": env["NGINX_VERSION"], "rustc": env["RUSTC_VERSION"],
    "date": env["RUN_DATE"],
    "skipped": dict(s.split("=", 1) for s in sys.argv[2:]),
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=1)
PY
python3 "$here/table.py" --results "$results" --doc "$doc"
log "done: $doc (section between the comparison markers), plots in $docdir/bench/, raw results in $results"
