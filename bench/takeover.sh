#!/usr/bin/env bash
# bench/takeover.sh — takeover under load (issue 8): `hello --takeover` started
# again from another session every 3 s while `handover check` drives load, in
# keep-alive and in new-connection-per-request mode. Measures
#
#   1. p99 latency in takeover windows vs steady time (run B) and throughput
#      against steady-only runs on the same server before and after (A1, A2);
#      failed requests; that every takeover changed the serving pid; that
#      exactly one hello is left at the end;
#   2. from the servers' logs, per takeover: the new version's ready → the old
#      one no longer accepting (see "Reading the logs" below), under that load
#      and, for comparison, in two series of takeovers with no load at all,
#      with and without --pid-file (--no-idle skips them).
#
# Usage: bench/takeover.sh [--out DIR] [--port 23456] [--modes keepalive,close]
#                          [--no-steady] [--no-idle] [--no-build] [--wait-quiet MINUTES]
#        [--report-only --out DIR] (the report again from a run's files)
#        (for a quick try: [--duration 36s] [--every 3s] [--upgrade-count 10]
#         [--connections 8]; the defaults are the documented run)
#
# --wait-quiet N polls `ps` every 30 s for up to N minutes until no fuzzer,
# `handover check`, `handover-bench` or `cargo test` of anyone else runs, then
# measures anyway (and says so). Every process started is tracked by pid and
# ended by pid (checked against its command line); every wait is bounded:
# about 4½ minutes for both modes and the idle series, plus the build and
# --wait-quiet.
#
# Reading the logs. hello logs with tracing (wall clock, µs) to one file per
# process (DIR/MODE/hello-N.log, generation N). The new process logs
# "ready; took over" only after the old one answered stepped_down, and the old
# one logs "hand-over committed; draining" after it has issued the drain order
# (so "stopped accepting" may come first): neither line is the ready instant.
# What the logs do give, per takeover:
#   R = old "takeover: handing over" + its ready_after: the instant the old
#       process had the new one's `ready` message (ready_after is measured
#       from just after that line to just after `ready` arrived; the line's
#       timestamp is taken a few µs earlier, so R is slightly early);
#   S = old "stopped accepting; draining".
# S − R is an upper bound on (old process received `ready` → stopped
# accepting); it does not include the new process's send and the old
# thread's wake-up before `ready` arrived, which no log line shows, so the
# whole interval is at least S − R less those few µs of R's error. As a
# bound on the whole interval, S − (new "initialising" + --startup-delay):
# the new process calls ready() no earlier than that (the tokio sleep lasts at
# least the delay, and rounds up to the next ms), so it over-states by up to
# ~1 ms plus the spawn of the accept task.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

out="" port=23456 modes=keepalive,close steady=1 idle=1 build=1 wait_quiet=0 report_only=0
duration=36s every=3s count=10 connections=8 startup_delay=300ms
usage() { sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        --no-steady) steady=0; shift ;;
        --no-idle) idle=0; shift ;;
        --no-build) build=0; shift ;;
        --report-only) report_only=1; build=0; shift ;;
        --wait-quiet) wait_quiet=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --every) every=$2; shift 2 ;;
        --upgrade-count) count=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "takeover.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || out=$(mktemp -d /tmp/handover-takeover-bench.XXXXXX)
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$root/target/release
cd "$root"

# The report (Markdown, also into $out/report.md) from the files of a run.
analyse() {
python3 - "$out" "$startup_delay" "${mode_list[@]}" <<'EOF' | tee "$out/report.md"
import datetime, json, os, re, statistics, sys

out, delay, modes = sys.argv[1], sys.argv[2], sys.argv[3:]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
UNIT = {"ns": 1e-3, "µs": 1, "us": 1, "ms": 1e3, "s": 1e6}

def dur_us(text):
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", text)
    return float(m.group(1)) * UNIT[m.group(2)]

def kv(path):
    with open(path) as f:
        return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)

def log(path):
    """(µs since the epoch, line) per tracing line; the pid of the process."""
    lines, pid = [], None
    with open(path, errors="replace") as f:
        for raw in f:
            line = ANSI.sub("", raw.rstrip("\n"))
            m = re.match(r"listening on \S+ name=\S+ pid=(\d+)", line)
            if m:
                pid = int(m.group(1))
                continue
            m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z\s(.*)$", line)
            if not m:
                continue
            stamp = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc)
            lines.append((round(stamp.timestamp() * 1e6), m.group(2)))
    return lines, pid

def find(lines, text, cond=lambda rest: True):
    """The first line containing text (and cond of what follows it)."""
    for micros, line in lines:
        at = line.find(text)
        if at >= 0 and cond(line[at + len(text):]):
            return micros, line[at + len(text):]
    return None, None

def field(rest, name):
    m = re.search(rf"\b{name}=(\S+)", rest or "")
    return m.group(1) if m else None

def ms(v):
    return "–" if v is None else f"{v:.3f} ms"

def stats_us(values):
    v = sorted(values)
    if not v:
        return "–"
    p90 = v[min(len(v) - 1, int(0.9 * len(v) + 0.999) - 1)]
    return f"{v[0]:.0f} / {statistics.median(v):.0f} / {p90:.0f} / {v[-1]:.0f} µs"

def delay_us(text):
    return dur_us(text)

def read_logs(d):
    logs = {}
    for name in os.listdir(d):
        m = re.fullmatch(r"hello-(\d+)\.log", name)
        if m:
            logs[int(m.group(1))] = log(os.path.join(d, name))
    return logs

def intervals(logs, indices):
    """Per takeover n (old = generation n − 1, new = n): the log intervals."""
    rows, sr, sc, full = [], [], [], []
    for n in indices:
        if n not in logs or n - 1 not in logs:
            continue
        old, new = logs[n - 1][0], logs[n][0]
        new_pid = logs[n][1]
        is_new = lambda rest: field(rest, "peer") == str(new_pid)
        h, h_rest = find(old, "takeover: handing over", is_new)
        c, c_rest = find(old, "hand-over committed; draining", lambda r: field(r, "successor") == str(new_pid))
        s, _ = find(old, "stopped accepting; draining", lambda r: f"upgraded to pid {new_pid}" in r)
        init, _ = find(new, "hello: initialising delay=")
        rdy, _ = find(new, "ready; took over")
        down, _ = find(new, "the old process stepped down")
        took = dur_us(field(c_rest, "ready_after")) if c_rest else None
        r = h + took if h is not None and took is not None else None
        v_sr = s - r if s is not None and r is not None else None
        v_sc = s - c if s is not None and c is not None else None
        v_full = s - (init + delay_us(delay)) if s is not None and init is not None else None
        for lst, v in ((sr, v_sr), (sc, v_sc), (full, v_full)):
            if v is not None:
                lst.append(v)
        rows.append((n, logs[n - 1][1], new_pid, took, v_sr, v_sc, v_full,
                     None if rdy is None or s is None else rdy - s,
                     None if down is None or r is None else down - r))
    return rows, sr, sc, full

def print_rows(rows, logs):
    print("| takeover | old pid → new pid | ready_after | S − R: old has `ready` → stopped accepting "
          "| S − committed line | S − (new initialising + delay) (upper bound, whole interval) "
          "| new \"ready; took over\" − S | new \"stepped down\" − R |")
    print("|---|---|---|---|---|---|---|---|")
    us = lambda v: "–" if v is None else f"{v:.0f} µs"
    for n, op, np_, took, v_sr, v_sc, v_full, rd, dn in rows:
        took_s = "– (no committed line)" if took is None else f"{took / 1000:.3f} ms"
        print(f"| {n} | {op} → {np_} | {took_s} | {us(v_sr)} | {us(v_sc)} | {us(v_full)} | {us(rd)} | {us(dn)} |")
    print()
    odd = [(n, line) for n in sorted(logs) for _, line in logs[n][0]
           if re.match(r"\s*(WARN|ERROR)\b", line)]
    if odd:
        print("Warnings and errors in the logs:\n")
        print("```text")
        for n, line in odd:
            print(f"hello-{n}.log: {line}")
        print("```\n")

machine = kv(os.path.join(out, "machine.txt"))
print("### Machine\n")
print(f"- CPUs (`nproc`): {machine['nproc']}")
print(f"- CPU model (`/proc/cpuinfo`): {machine['model']}")
print(f"- kernel (`uname -r`): {machine['kernel']}")
print(f"- build profile: release (`cargo build --release`, rustc {machine['rustc']})")
print(f"- load average at start / end: {machine['load_start']} / {machine.get('load_end', '?')}")
notes = os.path.join(out, "notes.txt")
if os.path.exists(notes):
    print(f"- note: {open(notes).read().strip()}")
print()

all_intervals = {"sr": [], "sc": [], "full": []}
for mode in modes:
    d = os.path.join(out, mode)
    runs = {}
    for name in ("a1", "b", "a2"):
        p = os.path.join(d, f"{name}.json")
        if os.path.exists(p) and os.path.getsize(p):
            runs[name] = json.load(open(p))
            cpu = os.path.join(d, f"{name}.cpu.json")
            runs[name]["_cpu"] = json.load(open(cpu)) if os.path.exists(cpu) else None
    b = runs["b"]
    title = {"keepalive": "Keep-alive connections", "close": "A new connection per request"}[mode]
    print(f"#### {title} (`--mode {mode}`)\n")
    print("| requests started | count | failed | p50 | p99 | p99.9 | max |")
    print("|---|---|---|---|---|---|---|")
    def row(label, lat, failed):
        print(f"| {label} | {lat['count']} | {failed} | {ms(lat['p50'])} | {ms(lat['p99'])} "
              f"| {ms(lat['p999'])} | {ms(lat['max'])} |")
    if "a1" in runs:
        row("run A1, steady (no takeover)", runs["a1"]["latency_ms"]["steady"], runs["a1"]["failed"])
    if "a2" in runs:
        row("run A2, steady (no takeover)", runs["a2"]["latency_ms"]["steady"], runs["a2"]["failed"])
    row("run B, steady time", b["latency_ms"]["steady"], b["failed_steady"])
    row("run B, takeover windows", b["latency_ms"]["upgrade"], b["failed_upgrade"])
    print()
    capped = [n.upper() for n in ("a1", "b", "a2") if n in runs and runs[n].get("request_cap_reached")]
    if capped:
        print(f"**--max-requests was reached in {', '.join(capped)}: the load stopped early.**\n")
    elapsed = b["elapsed_s"]
    share = lambda r: ("?" if not r.get("_cpu") else f"{100 * r['_cpu']['others_share']:.0f} %")
    print(f"Windows covered {b['upgrade_window_s']:.1f} s of {elapsed:.1f} s of run B "
          f"({100 * b['upgrade_window_s'] / elapsed:.0f} %). Other processes used "
          + ", ".join(f"{share(runs[n])} ({n.upper()})" for n in ("a1", "b", "a2") if n in runs)
          + " of the CPU time.\n")

    # Takeovers: pids and the log intervals.
    logs = read_logs(d)
    ups = b["upgrades"]
    ok = sum(1 for u in ups if u["ok"])
    new_pids = [int(re.search(r"pid (\d+)", u["new_answered_by"] or "pid 0").group(1)) for u in ups]
    changed = all(p and p == (logs.get(u["index"], ([], None))[1]) for p, u in zip(new_pids, ups))
    distinct = len(set([logs[0][1]] + new_pids)) == len(ups) + 1
    rows, sr, sc, full = intervals(logs, [u["index"] for u in ups])
    all_intervals["sr"] += sr
    all_intervals["sc"] += sc
    all_intervals["full"] += full
    a = [runs[n]["throughput_rps"]["overall"] for n in ("a1", "a2") if n in runs]
    p99s, p99u = b["latency_ms"]["steady"]["p99"], b["latency_ms"]["upgrade"]["p99"]
    ratio = p99u / p99s
    failed = sum(r["failed"] for r in runs.values() if isinstance(r, dict) and "failed" in r)
    total = sum(r["requests"] for r in runs.values() if isinstance(r, dict) and "requests" in r)
    left = kv(os.path.join(d, "leftover.txt"))
    print("| figure | value | target | verdict |")
    print("|---|---|---|---|")
    print(f"| p99 in takeover windows / p99 steady time (run B) | {p99u:.3f} / {p99s:.3f} ms = "
          f"{ratio:.2f}× | ≤ 1.1× | {'met' if ratio <= 1.1 else 'missed'} |")
    print(f"| p50 in takeover windows / p50 steady time (run B) | "
          f"{b['latency_ms']['upgrade']['p50']:.3f} / {b['latency_ms']['steady']['p50']:.3f} ms | | |")
    tp = b["throughput_rps"]
    print(f"| throughput in windows / steady time (run B) | {tp['upgrade']:.0f} / {tp['steady']:.0f} req/s "
          f"= {100 * tp['upgrade'] / tp['steady']:.1f} % | | |")
    if a:
        mean = sum(a) / len(a)
        print(f"| throughput B / mean(A1, A2) | {tp['overall']:.0f} / {mean:.0f} req/s = "
              f"{100 * tp['overall'] / mean:.1f} % | ≥ 95 % (issue 2's) | "
              f"{'met' if tp['overall'] >= 0.95 * mean else 'missed'} |")
    if len(a) == 2:
        print(f"| noise floor: throughput A2 / A1 | {a[1]:.0f} / {a[0]:.0f} req/s = "
              f"{100 * a[1] / a[0]:.1f} % | | |")
    print(f"| failed requests ({' + '.join(n.upper() for n in ('a1', 'b', 'a2') if n in runs)}) | "
          f"{failed} of {total} | 0 | {'met' if failed == 0 else 'missed'} |")
    print(f"| takeovers that succeeded (command ok, new pid answered) | {ok} of {len(ups)}; "
          f"every one a new pid: {'yes' if changed and distinct else 'NO'} | all | "
          f"{'met' if ok == len(ups) and changed and distinct else 'missed'} |")
    print(f"| hellos left after the run | {len(left.get('left', '').split())} "
          f"(pid {left.get('left', '')}, PID file {left.get('pid_file')}); "
          f"stopped by {left.get('stopped_by')}; left after that: "
          f"{len(left.get('remaining_after_stop', '').split())} | 1, then 0 | "
          f"{'met' if left.get('left') == left.get('pid_file') and not left.get('remaining_after_stop') else 'missed'} |")
    print()
    print("Successful responses by pid, run B (`answered_by_pid`): "
          + ", ".join(f"{k} ({v})" for k, v in b["answered_by_pid"].items()) + ".\n")
    print_rows(rows, logs)
    print(f"S − R min / median / p90 / max over {len(sr)}: {stats_us(sr)}; "
          f"S − (initialising + delay): {stats_us(full)}.\n")

idle_rows = {}
for name, label in (("idle-pid-file", "no load, `--pid-file`"), ("idle-no-pid-file", "no load, no PID file")):
    d = os.path.join(out, name)
    if not os.path.isdir(d):
        continue
    logs = read_logs(d)
    rows, sr, sc, full = intervals(logs, range(1, max(logs) + 1))
    idle_rows[name] = (label, sr)
    left = kv(os.path.join(d, "leftover.txt"))
    print(f"#### Takeovers with {label}\n")
    print(f"{len(logs)} generations started one after another (each once the previous one had "
          f"exited); left at the end: {len(left.get('left', '').split())} (pid {left.get('left', '')}, "
          f"the last: {left.get('last')}); left after stopping it: "
          f"{len(left.get('remaining_after_stop', '').split())}.\n")
    print_rows(rows, logs)
    print(f"S − R min / median / p90 / max over {len(sr)}: {stats_us(sr)}.\n")

print("#### Ready → no longer accepting, both modes\n")
print("| interval (min / median / p90 / max) | value | target | verdict |")
print("|---|---|---|---|")
sr, full, sc = all_intervals["sr"], all_intervals["full"], all_intervals["sc"]
print(f"| S − R: old process has `ready` → stopped accepting ({len(sr)} takeovers) | {stats_us(sr)} | "
      f"< 1 ms (median) | {'met' if sr and statistics.median(sr) < 1000 else 'missed'} "
      f"(the whole interval is this plus the delivery of `ready`) |")
print(f"| S − (new initialising + delay): whole interval, over-stated | {stats_us(full)} | < 1 ms | "
      f"{'met' if full and max(full) < 1000 else 'not shown'} (upper bound) |")
print(f"| S − old \"hand-over committed\" line (logged after the drain order) | {stats_us(sc)} | | |")
for label, v in idle_rows.values():
    print(f"| S − R, {label} ({len(v)} takeovers) | {stats_us(v)} | < 1 ms (median) | "
          f"{'met' if v and statistics.median(v) < 1000 else 'missed'} |")
EOF
}

IFS=, read -r -a mode_list <<<"$modes"
if [ "$report_only" = 1 ]; then
    analyse
    exit
fi

if [ "$build" = 1 ]; then
    cargo build --release -p hello -p handover-cli
fi

# Other load on the machine: fuzzers, other checks or benchmarks, cargo test
# (not counting what this run started: their command lines name $out).
others_busy() {
    ps -eo pid=,args= | grep -E 'fuzz|libfuzzer|handover check|handover-bench|cargo test' \
        | grep -v -e "$out" -e grep -e 'bench/takeover.sh' || true
}
if [ "$wait_quiet" -gt 0 ]; then
    deadline=$((SECONDS + wait_quiet * 60))
    while busy=$(others_busy) && [ -n "$busy" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "takeover.sh: other load still running after ${wait_quiet} min; measuring anyway:" >&2
            echo "$busy" >&2
            echo "measured with other load running (waited ${wait_quiet} min)" >>"$out/notes.txt"
            break
        fi
        echo "takeover.sh: waiting for other load to end ($(echo "$busy" | wc -l) processes)" >&2
        sleep 30
    done
fi
others_busy >"$out/others-at-start.txt"

# --- clean-up: every pid this run started, by pid --------------------------
ours() { # ours DIR PID: pid is a hello of this run (its command line names DIR)
    local cmdline=""
    alive "$2" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$1/t.sock"* ]]
}
sampler=""
cleanup() {
    local dir pid
    if [ -n "$sampler" ] && alive "$sampler"; then kill -TERM "$sampler" 2>/dev/null || true; fi
    for dir in "$out"/*/; do
        dir=${dir%/}
        [ -f "$dir/pids" ] || continue
        while read -r pid; do
            if ours "$dir" "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        done <"$dir/pids"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU time of other processes during a run, by sampling /proc every second:
# every process whose command line does not name $out and whose environment
# lacks TAKEOVER_BENCH_RUN=$out (nor the sampler itself); the first sample is
# the baseline. Writes JSON to $1 on SIGTERM.
export TAKEOVER_BENCH_RUN=$out
start_sampler() {
    python3 - "$1" "$out" <<'EOF' &
import json, os, signal, sys, time
dest, marker = sys.argv[1], sys.argv[2]
me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
tag = f"TAKEOVER_BENCH_RUN={marker}".encode()
def snapshot():
    seen = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            env = b""
        fields = stat.rsplit(")", 1)[1].split()
        mine = marker in cmd or tag in env.split(b"\0")
        seen[int(name)] = (int(fields[11]) + int(fields[12]), mine,
                           cmd[:80] or stat.split("(", 1)[1].rsplit(")", 1)[0])
    return seen
base, last, used = snapshot(), {}, {}
start = time.monotonic()
def finish(*_):
    others = {p: t for p, t in used.items() if not last[p][1]}
    top = sorted(others, key=others.get, reverse=True)[:5]
    elapsed = time.monotonic() - start
    with open(dest, "w") as f:
        json.dump({"elapsed_s": elapsed, "cpus": os.cpu_count(),
                   "others_cpu_s": sum(others.values()) / tick,
                   "others_share": sum(others.values()) / tick / elapsed / os.cpu_count(),
                   "top_others": [[last[p][2], used[p] / tick] for p in top if used[p]]}, f)
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
while True:
    time.sleep(1)
    now = snapshot()
    for pid, (ticks, mine, cmd) in now.items():
        used[pid] = ticks - base[pid][0] if pid in base else ticks
        # Once ours, always ours: an exited hello's zombie has no command line.
        mine = mine or (pid in last and last[pid][1]) or (pid in base and base[pid][1])
        last[pid] = (ticks, mine, cmd if pid not in last or cmd else last[pid][2])
EOF
    sampler=$!
}
stop_sampler() {
    kill -TERM "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampler=""
}

# check DIR NAME ARGS...: one `handover check --json` run, bounded.
limit=$(($(ms_of "$duration") / 1000 + 90))
# Keep-alive runs here make ~110 000 requests a second, past check's default
# cap of 3 M in 36 s; every request is kept in memory, ~200 bytes each.
max_requests=20000000
check() {
    local dir=$1 name=$2
    shift 2
    start_sampler "$dir/$name.cpu.json"
    local rc=0
    timeout -k 10 "$limit" "$bin/handover" check --json --no-progress --max-requests "$max_requests" \
        --target "http://127.0.0.1:$port/" --connections "$connections" "$@" \
        >"$dir/$name.json" 2>"$dir/$name.err" || rc=$?
    stop_sampler
    echo "$rc" >"$dir/$name.rc"
}

hello_args() { # the same command for the first process and every takeover
    echo "$bin/hello --listen 127.0.0.1:$port --takeover $1/t.sock --pid-file $1/hello.pid --startup-delay $startup_delay"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

{
    echo "nproc=$(nproc)"
    echo "model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "kernel=$(uname -r)"
    echo "rustc=$(rustc --version | awk '{print $2}')"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "started=$(date -u +%FT%TZ)"
} >"$out/machine.txt"

for mode in "${mode_list[@]}"; do
    dir=$out/$mode
    mkdir -p "$dir"
    : >"$dir/pids"
    port_free || { echo "takeover.sh: port $port is in use" >&2; exit 1; }
    # shellcheck disable=SC2046
    RUST_LOG=info setsid $(hello_args "$dir") >>"$dir/hello-0.log" 2>&1 </dev/null &
    first=$!
    echo "$first" >>"$dir/pids"
    wait_for 10 pid_is "$dir/hello.pid" "$first" || { echo "takeover.sh: hello did not start" >&2; exit 1; }
    echo "takeover.sh: $mode: hello pid $first; A1 B A2" >&2

    upgrade="RUST_LOG=info setsid $(hello_args "$dir") >>$dir/hello-\$HANDOVER_CHECK_UPGRADE.log 2>&1 </dev/null & echo \$! >>$dir/pids"
    echo "$upgrade" >"$dir/upgrade-command.txt"
    if [ "$steady" = 1 ]; then check "$dir" a1 --duration "$duration" --mode "$mode"; fi
    check "$dir" b --upgrade "$upgrade" --every "$every" --upgrade-count "$count" \
        --duration "$duration" --mode "$mode"
    if [ "$steady" = 1 ]; then check "$dir" a2 --duration "$duration" --mode "$mode"; fi

    # Every old generation drains and exits (drain timeout 30 s); exactly one
    # hello, the one in the PID file, must be left.
    last=$(read_pid "$dir/hello.pid")
    others_gone() {
        local pid
        while read -r pid; do
            if [ "$pid" != "$last" ] && ours "$dir" "$pid"; then return 1; fi
        done <"$dir/pids"
    }
    wait_for 35 others_gone || true
    left=()
    while read -r pid; do
        if ours "$dir" "$pid"; then left+=("$pid"); fi
    done <"$dir/pids"
    {
        echo "started=$(wc -l <"$dir/pids")"
        echo "pid_file=$last"
        echo "left=${left[*]:-}"
    } >"$dir/leftover.txt"
    # Stop the last one: SIGTERM, wait, SIGKILL if needed.
    how=none
    if [ -n "$last" ] && ours "$dir" "$last"; then
        kill -TERM "$last"
        how=SIGTERM
        wait_for 35 not_alive "$last" || { kill -KILL "$last" 2>/dev/null || true; how=SIGKILL; }
    fi
    echo "stopped_by=$how" >>"$dir/leftover.txt"
    remain=()
    while read -r pid; do
        if ours "$dir" "$pid"; then remain+=("$pid"); kill -KILL "$pid" 2>/dev/null || true; fi
    done <"$dir/pids"
    echo "remaining_after_stop=${remain[*]:-}" >>"$dir/leftover.txt"
done
# The same takeovers with no HTTP load, with and without a PID file: the
# interval when nothing else wants the CPU, and what the PID file adds.
log_has() { grep -qE "$2" "$1" 2>/dev/null; }
idle_series() { # idle_series NAME [HELLO ARGS...]
    local name=$1 dir=$out/$1 n pid prev="" left=() remain=()
    shift
    mkdir -p "$dir"
    : >"$dir/pids"
    port_free || { echo "takeover.sh: port $port is in use" >&2; exit 1; }
    echo "takeover.sh: $name: $((count + 1)) generations, no load" >&2
    for n in $(seq 0 "$count"); do
        RUST_LOG=info setsid "$bin/hello" --listen "127.0.0.1:$port" --takeover "$dir/t.sock" \
            --startup-delay "$startup_delay" "$@" >>"$dir/hello-$n.log" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >>"$dir/pids"
        wait_for 10 log_has "$dir/hello-$n.log" ' ready($|;)' \
            || { echo "takeover.sh: $name: generation $n not ready" >&2; exit 1; }
        if [ -n "$prev" ]; then wait_for 35 not_alive "$prev" || true; fi
        prev=$pid
        sleep 0.5
    done
    while read -r pid; do
        if ours "$dir" "$pid"; then left+=("$pid"); fi
    done <"$dir/pids"
    printf 'started=%s\nlast=%s\nleft=%s\n' "$((count + 1))" "$prev" "${left[*]:-}" >"$dir/leftover.txt"
    if ours "$dir" "$prev"; then
        kill -TERM "$prev"
        wait_for 35 not_alive "$prev" || kill -KILL "$prev" 2>/dev/null || true
    fi
    while read -r pid; do
        if ours "$dir" "$pid"; then remain+=("$pid"); kill -KILL "$pid" 2>/dev/null || true; fi
    done <"$dir/pids"
    echo "remaining_after_stop=${remain[*]:-}" >>"$dir/leftover.txt"
}
if [ "$idle" = 1 ]; then
    idle_series idle-pid-file --pid-file "$out/idle-pid-file/hello.pid"
    idle_series idle-no-pid-file
fi
echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"

analyse
