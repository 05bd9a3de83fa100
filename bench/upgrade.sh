#!/usr/bin/env bash
# bench/upgrade.sh PEER DIR — one upgrade of a running peer, the way that peer
# does it; run by `handover check --upgrade`. Returns when the new version
# serves (or fails after 30 s), so the checker's upgrade duration is the time
# from the trigger until the new version has taken over.
#
# DIR/peer.env (written by compare.sh) holds BIN, PORT, STARTUP_DELAY, NGINX.
set -euo pipefail
peer=$1 dir=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
# shellcheck disable=SC1091
. "$dir/peer.env"
pidf=$dir/server.pid
limit=30

# Timestamps of each step, for reading an upgrade's duration apart.
t0=$EPOCHREALTIME
note() {
    local us=$((${EPOCHREALTIME/./} - ${t0/./}))
    printf '%s %s +%d.%03d ms %s\n' "$EPOCHREALTIME" "$peer" $((us / 1000)) $((us % 1000)) "$*" >>"$dir/upgrade.log"
}
fail() { note "failed: $*"; echo "upgrade $peer: $*" >&2; exit 1; }
trap 'note finished' EXIT
note "start (pid $$)"

case $peer in
    handover | ecdysis)
        # SIGHUP: the server starts its successor itself; done when the PID file
        # names the successor (written when it is ready).
        old=$(read_pid "$pidf")
        alive "$old" || fail "no running server in $pidf"
        kill -HUP "$old"
        note "SIGHUP sent to $old"
        wait_for "$limit" pid_other_than "$pidf" "$old" || fail "no new pid in $pidf after ${limit}s"
        record "$dir" "$(read_pid "$pidf")"
        ;;
    plain)
        # Naive restart: stop, wait for the exit, start again.
        old=$(read_pid "$pidf")
        alive "$old" || fail "no running server in $pidf"
        kill -TERM "$old"
        note "SIGTERM sent to $old"
        wait_for "$limit" not_alive "$old" || fail "pid $old still running after ${limit}s"
        note "$old exited"
        new=$(start_bg "$dir" "$dir/server.log" "$BIN/peer-plain" --listen "127.0.0.1:$PORT" \
            --startup-delay "$STARTUP_DELAY" --pid-file "$pidf")
        wait_for "$limit" pid_is "$pidf" "$new" || fail "pid $new not serving after ${limit}s"
        ;;
    holder)
        # The holder stops its child, then starts a new one on the same socket.
        old=$(read_pid "$pidf")
        holder=$(read_pid "$dir/holder.pid")
        alive "$holder" || fail "no running holder in $dir/holder.pid"
        kill -HUP "$holder"
        note "SIGHUP sent to holder $holder"
        wait_for "$limit" pid_other_than "$pidf" "$old" || fail "no new child pid in $pidf after ${limit}s"
        record "$dir" "$(read_pid "$pidf")"
        ;;
    reuseport)
        # Start the new one on its own SO_REUSEPORT socket, wait until it
        # accepts, then stop the old one (its accept queue goes with its socket).
        old=$(read_pid "$pidf")
        alive "$old" || fail "no running server in $pidf"
        new=$(start_bg "$dir" "$dir/server.log" "$BIN/peer-reuseport" --listen "127.0.0.1:$PORT" \
            --startup-delay "$STARTUP_DELAY" --pid-file "$pidf")
        note "started $new"
        wait_for "$limit" pid_is "$pidf" "$new" || fail "pid $new not serving after ${limit}s"
        note "$new serves"
        kill -TERM "$old"
        ;;
    nginx)
        # nginx's documented binary upgrade: USR2 to the master, wait for the new
        # master (nginx.pid.oldbin + a new nginx.pid), QUIT the old master.
        pidf=$dir/nginx.pid
        old=$(read_pid "$pidf")
        alive "$old" || fail "no running nginx master in $pidf"
        kill -USR2 "$old"
        note "USR2 sent to $old"
        oldbin_named_old() { pid_is "$dir/nginx.pid.oldbin" "$old" && pid_other_than "$pidf" "$old"; }
        wait_for "$limit" oldbin_named_old || fail "no new master after ${limit}s"
        record "$dir" "$(read_pid "$pidf")"
        kill -QUIT "$old"
        ;;
    *) fail "unknown peer" ;;
esac
