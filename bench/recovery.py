#!/usr/bin/env python3
"""Crash recovery of `handover run`, timed (issue 10).

For each round: start `handover run` with a Python notify server, SIGKILL the
supervisor (its child keeps serving), start `handover run` again with the same
arguments, and read from its log when it started its own child. The time
from the new start to that spawn is the supervisor's own cost of recovering
(state file, pidfd_getfd, adopting the sockets); the child's start-up after
it is the server's. Also timed: the same start without anything to recover.

    python3 bench/recovery.py [ROUNDS]   (default 20; release build needed:
                                          cargo build --release -p handover-cli)

Processes are tracked by pid and ended by pid.
"""

import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANDOVER = os.path.join(ROOT, "target", "release", "handover")
SERVER = os.path.join(ROOT, "crates", "cli", "tests", "fixtures", "notify_server.py")


def status(pid_file):
    out = subprocess.run(
        [HANDOVER, "status", "--json", "--pid-file", pid_file],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except ValueError:
        return None


def start(pid_file, log):
    return subprocess.Popen(
        [HANDOVER, "run", "--listen", "web=127.0.0.1:0", "--pid-file", pid_file,
         "--ready", "notify", "--", sys.executable, SERVER],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
        env=dict(os.environ, NO_COLOR="1"),
    )


def wait_current(pid_file, supervisor_pid, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        s = status(pid_file)
        if s and s.get("supervisor_pid") == supervisor_pid and s.get("current"):
            return s["current"]["pid"]
        time.sleep(0.005)
    raise SystemExit(f"no current child within {deadline}s")


def log_time(log, needle):
    """The timestamp (ns since the epoch) of the first log line with needle."""
    with open(log) as f:
        for line in f:
            if needle in line:
                stamp = line.split()[0].rstrip("Z")
                when = datetime.datetime.fromisoformat(stamp).replace(
                    tzinfo=datetime.timezone.utc
                )
                return int(when.timestamp() * 1e9)
    raise SystemExit(f"no {needle!r} in {log}")


def wait_gone(pid, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(") ", 1)[1][0] == "Z":
                    return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.005)
    raise SystemExit(f"pid {pid} did not exit")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    fresh, recovered = [], []
    with tempfile.TemporaryDirectory(prefix="handover-recovery-") as scratch:
        for n in range(rounds):
            pid_file = os.path.join(scratch, f"r{n}.pid")
            first_log = os.path.join(scratch, f"r{n}-first.log")
            t0 = time.time_ns()
            first = start(pid_file, first_log)
            orphan = wait_current(pid_file, first.pid)
            fresh.append((log_time(first_log, "child started") - t0) / 1e6)
            first.send_signal(signal.SIGKILL)
            first.wait()
            second_log = os.path.join(scratch, f"r{n}-second.log")
            t0 = time.time_ns()
            second = start(pid_file, second_log)
            new = wait_current(pid_file, second.pid)
            recovered.append((log_time(second_log, "child started") - t0) / 1e6)
            wait_gone(orphan)
            assert new != orphan
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
            wait_gone(new)

    def row(name, values):
        values = sorted(values)
        return (f"| {name} | {len(values)} | {statistics.median(values):.1f} | "
                f"{values[int(len(values) * 0.9) - 1]:.1f} | {values[-1]:.1f} |")

    print("| start → own child spawned | rounds | median ms | p90 ms | max ms |")
    print("|---|---|---|---|---|")
    print(row("fresh start (nothing to recover)", fresh))
    print(row("after a SIGKILL (recovering)", recovered))


if __name__ == "__main__":
    main()
