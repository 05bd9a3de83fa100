#!/usr/bin/env bash
# bench/servers.sh — `handover run` with real servers, the keep-alive rescue on
# and off: gunicorn, uvicorn, puma, Go net/http, Node http and our Python
# server (the fixtures of crates/cli/tests/run_servers.rs, started the same
# way), each upgraded 10 times under load from `handover check` in keep-alive
# and in new-connection-per-request mode. Prints a Markdown table on stdout
# (progress on stderr); the raw results stay in the work directory.
#
# Usage: bench/servers.sh [--servers gunicorn,uvicorn,puma,go,node,python]
#                         [--modes keepalive,close] [--work DIR]
#                         [--duration 24s] [--every 2s] [--upgrade-count 10]
#                         [--connections 8] [--table-only]
# HANDOVER=/path/to/handover picks the binary (default target/release/handover;
# build it with `cargo build --release -p handover-cli`). Needs gunicorn,
# uvicorn (Python scripts directory is added to PATH), puma, go, node.
#
# Per run (fresh supervisor each time): WORK/SERVER-MODE-{on,off}/ holds
# check.json (`handover check --json`), status.json (`handover status --json`
# after the load: the per-upgrade connection counts), supervisor.log (its
# stderr). Every process is ended by pid (the supervisor, then whatever of its
# descendants is left); every wait is bounded. --table-only prints the table of
# an earlier run's --work directory without running anything.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

servers=gunicorn,uvicorn,puma,go,node,python
table_only=no
modes=keepalive,close
work=""
duration=24s every=2s upgrade_count=10 connections=8
command_line="bench/servers.sh${*:+ $*}"

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --servers) servers=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --every) every=$2; shift 2 ;;
        --upgrade-count) upgrade_count=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --table-only) table_only=yes; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "servers.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

handover=${HANDOVER:-$root/target/release/handover}
if [ ! -x "$handover" ]; then
    echo "servers.sh: $handover is missing: cargo build --release -p handover-cli" >&2
    exit 2
fi
handover=$(cd "$(dirname "$handover")" && pwd)/$(basename "$handover")
fixtures=$root/crates/cli/tests/fixtures
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/handover-servers.XXXXXX")
mkdir -p "$work"
work=$(cd "$work" && pwd)
duration_s=$(($(ms_of "$duration") / 1000))
# The check itself is bounded by --duration; this bounds everything around it.
check_limit=$((duration_s + 60))

log() { echo "servers.sh: $*" >&2; }

# cpu_busy: percentage of CPU time in use over one second (all cores); other
# work on the machine distorts a run, so each run's log line shows it.
cpu_busy() {
    local _c u n s i w q sq st total1 idle1
    read -r _c u n s i w q sq st _ </proc/stat
    total1=$((u + n + s + i + w + q + sq + st)) idle1=$((i + w))
    sleep 1
    read -r _c u n s i w q sq st _ </proc/stat
    local total=$((u + n + s + i + w + q + sq + st - total1)) idle=$((i + w - idle1))
    echo $(((total - idle) * 100 / (total > 0 ? total : 1)))
}

# quiet: waits (up to 60 s) until the machine is mostly idle (≤ 25 % busy)
# before a run; prints the busy share it last saw.
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

# The Go fixture, built as the tests build it (crates/cli/tests/run_support/servers.rs).
go_binary=""
build_go() {
    local cache=${TMPDIR:-/tmp}/handover-test-go
    go_binary=$work/go_server
    [ -x "$go_binary" ] && return 0
    log "building $fixtures/go_server.go"
    (cd "$work" && GOCACHE=$cache/cache GOPATH=$cache/path HOME=$cache/home \
        CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS='' \
        timeout 300 go build -o "$go_binary" "$fixtures/go_server.go")
}

# server_command SERVER: sets ready=(…) and cmd=(…) for `handover run`.
server_command() {
    ready=(--ready http:/)
    case $1 in
        gunicorn) cmd=(gunicorn --workers 2 --chdir "$fixtures" wsgi_app:app) ;;
        uvicorn) cmd=(uvicorn --fd '{fd:web}' --app-dir "$fixtures" asgi_app:app) ;;
        puma) cmd=(puma --threads 16:16 --bind-to-activated-sockets only "$fixtures/puma/config.ru") ;;
        go) build_go; cmd=("$go_binary") ;;
        node) cmd=(node "$fixtures/node_server.js") ;;
        python)
            ready=(--ready notify)
            cmd=(python3 "$fixtures/notify_server.py" --startup-delay 0.3)
            ;;
        *) echo "servers.sh: unknown server '$1'" >&2; exit 2 ;;
    esac
}

# descendants PID: every descendant of PID, one per line.
descendants() {
    local child
    for child in $(cat /proc/"$1"/task/*/children 2>/dev/null || true); do
        echo "$child"
        descendants "$child"
    done
}

# stop_supervisor DIR PID: SIGTERM (it stops its children and exits), 20 s at
# most; then SIGKILL it and any descendant still alive, by pid.
supervisor_pid=""
stop_supervisor() {
    local dir=$1 pid=$2 left p
    [ -n "$pid" ] || return 0
    descendants "$pid" >"$dir/descendants" || true
    if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    wait_for 20 not_alive "$pid" || { log "supervisor $pid still running after 20 s: killing it"; kill -KILL "$pid" 2>/dev/null || true; }
    wait "$pid" 2>/dev/null || true
    while read -r p; do
        left=$p
        if alive "$left"; then
            wait_for 5 not_alive "$left" || { log "pid $left left behind: killing it"; kill -KILL "$left" 2>/dev/null || true; }
        fi
    done <"$dir/descendants"
    supervisor_pid=""
}
current_dir=""
cleanup() { if [ -n "$supervisor_pid" ]; then stop_supervisor "$current_dir" "$supervisor_pid"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

status_json() { timeout 10 "$handover" status --pid-file "$1/handover.pid" --json 2>/dev/null; }
has_current() {
    status_json "$1" | python3 -c 'import json, sys; sys.exit(0 if isinstance(json.load(sys.stdin).get("current"), dict) else 1)' 2>/dev/null
}

# run_one SERVER MODE on|off: one supervisor, one load run.
run_one() {
    local server=$1 mode=$2 rescue=$3 dir addr rc
    dir=$work/$server-$mode-$rescue
    rm -rf "$dir"
    mkdir -p "$dir"
    server_command "$server"
    local options=(--listen web=127.0.0.1:0 --pid-file "$dir/handover.pid" "${ready[@]}")
    [ "$rescue" = off ] && options+=(--no-rescue)
    quiet >"$dir/busy"
    log "$server / $mode / rescue $rescue (CPU busy before: $(cat "$dir/busy") %)"
    current_dir=$dir
    (cd "$dir" && exec "$handover" run "${options[@]}" -- "${cmd[@]}") \
        >"$dir/stdout" 2>"$dir/supervisor.log" </dev/null &
    supervisor_pid=$!
    if ! wait_for 60 has_current "$dir"; then
        log "$server did not start; last lines of its log:"
        tail -n 20 "$dir/supervisor.log" >&2
        stop_supervisor "$dir" "$supervisor_pid"
        echo '{"error": "did not start"}' >"$dir/check.json"
        return 0
    fi
    addr=$(status_json "$dir" | python3 -c 'import json, sys; print(json.load(sys.stdin)["sockets"][0]["address"])')
    rc=0
    timeout -k 5 "$check_limit" "$handover" check --json --no-progress \
        --target "http://$addr/" \
        --upgrade "$handover upgrade --pid-file $dir/handover.pid" \
        --every "$every" --upgrade-count "$upgrade_count" --duration "$duration" \
        --connections "$connections" --mode "$mode" >"$dir/check.json" 2>"$dir/check.err" || rc=$?
    echo "$rc" >"$dir/check.rc"
    status_json "$dir" >"$dir/status.json" || true
    stop_supervisor "$dir" "$supervisor_pid"
    python3 - "$dir" <<'PY' >&2
import json, sys
d = sys.argv[1]
try:
    r = json.load(open(d + "/check.json"))
    print(f"  {r['failed']} failed of {r['requests']}; upgrades ok "
          f"{sum(u['ok'] for u in r['upgrades'])}/{len(r['upgrades'])}")
except Exception as e:
    print(f"  no result: {e}")
PY
}

IFS=, read -r -a server_list <<<"$servers"
IFS=, read -r -a mode_list <<<"$modes"
started=$(date -u '+%Y-%m-%d %H:%M UTC')
[ "$table_only" = yes ] && started="(earlier: $work)"
for server in "${server_list[@]}"; do
    [ "$table_only" = yes ] && break
    for mode in "${mode_list[@]}"; do
        for rescue in on off; do
            run_one "$server" "$mode" "$rescue"
        done
    done
done

machine="$(nproc) × $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), Linux $(uname -r)"
python3 - "$work" "$servers" "$modes" "$command_line" "$machine" "$started" <<'PY'
import json, os, sys

work, servers, modes, command_line, machine, started = sys.argv[1:]
names = {
    "gunicorn": "gunicorn `--workers 2`",
    "uvicorn": "uvicorn `--fd {fd:web}`",
    "puma": "puma `--threads 16:16`",
    "go": "Go net/http",
    "node": "Node http",
    "python": "ours (Python, sd_notify)",
}


def load(server, mode, rescue):
    d = os.path.join(work, f"{server}-{mode}-{rescue}")
    try:
        check = json.load(open(os.path.join(d, "check.json")))
    except Exception:
        check = {"error": "no result"}
    try:
        status = json.load(open(os.path.join(d, "status.json")))
    except Exception:
        status = {}
    return d, check, status


def kinds(check):
    parts = []
    for kind, n in check.get("failures", {}).items():
        if not n:
            continue
        if kind == "bad_status":
            codes = ", ".join(f"{c}" for c in check.get("bad_statuses", {}))
            parts.append(f"{n} bad status ({codes})" if codes else f"{n} bad status")
        else:
            parts.append(f"{n} {kind}")
    return ", ".join(parts)


def busy_of(server, mode, rescue):
    try:
        return int(open(os.path.join(work, f"{server}-{mode}-{rescue}", "busy")).read())
    except Exception:
        return None


def cell(check, busy=None):
    if "requests" not in check:
        return check.get("error", "no result")
    failed = check["failed"]
    text = f"**{failed}**" if failed else "0"
    text += f" / {check['requests']:,}"
    if failed:
        text += f" ({kinds(check)})"
    if busy is not None and busy > 25:
        text += " †"
    return text


def upgrades_ok(check):
    ups = check.get("upgrades", [])
    return f"{sum(1 for u in ups if u.get('ok'))}/{len(ups)}"


def counts(status):
    total = {"rescued": 0, "released": 0, "lost": 0, "not_held": 0}
    for upgrade in status.get("upgrades", []):
        for k in total:
            total[k] += (upgrade.get("connections") or {}).get(k, 0)
    return total


busy = []
for server in servers.split(","):
    for mode in modes.split(","):
        for rescue in ("on", "off"):
            try:
                busy.append(int(open(os.path.join(work, f"{server}-{mode}-{rescue}", "busy")).read()))
            except Exception:
                pass
print(f"- Command: `{command_line}`")
print(f"- Machine: {machine}; started {started}")
if busy:
    print(f"- CPU busy in the second before each run: {min(busy)}–{max(busy)} %")
print()
print("| server | mode | rescue on: failed / requests | rescue off: failed / requests "
      "| upgrades ok (on / off) | rescued / released / lost (rescue on) |")
print("|---|---|---|---|---|---|")
notes = []
for server in servers.split(","):
    for mode in modes.split(","):
        d_on, on, st_on = load(server, mode, "on")
        _, off, _ = load(server, mode, "off")
        c = counts(st_on)
        held = f"{c['rescued']} / {c['released']} / {c['lost']}"
        if c["not_held"]:
            held += f" ({c['not_held']} not held)"
        on_cell = cell(on, busy_of(server, mode, "on"))
        off_cell = cell(off, busy_of(server, mode, "off"))
        print(f"| {names.get(server, server)} | {mode} | {on_cell} | {off_cell} "
              f"| {upgrades_ok(on)} / {upgrades_ok(off)} | {held} |")
        if on.get("failed"):
            notes.append((server, mode, d_on, on))
if any(b is not None and b > 25 for b in busy):
    print()
    print("† other work kept the machine more than 25 % busy just before this run "
          "(request counts are lower; failure counts are what the run is for).")
if notes:
    print()
    print("Failures with the rescue on (first failures as `handover check` lists them):")
    print()
    for server, mode, d, check in notes:
        print(f"- {server} / {mode} ({d}):")
        for line in check.get("first_failures", [])[:10]:
            print(f"  - {line}")
PY
log "results in $work"
