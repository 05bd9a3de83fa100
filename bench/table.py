#!/usr/bin/env python3
"""Turn the JSON files of bench/compare.sh into the comparison table.

    bench/table.py --results DIR [--doc docs/BENCHMARKS.md] [--print]

DIR holds meta.json (written by compare.sh) and one PEER-MODE.json per run:
{"peer", "mode", "exit_status", "plot", "check": <`handover check --json`>} or
{"peer", "mode", "error"}. The Markdown goes between the markers
<!-- comparison:start --> and <!-- comparison:end --> of the document; nothing
outside them is touched (the markers are appended if missing, the file created
with a "# Benchmarks" heading if it does not exist). Python 3 stdlib only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile

START = "<!-- comparison:start -->"
END = "<!-- comparison:end -->"

# Row order and how each peer upgrades.
PEERS = [
    ("handover", "(a) handover", "`hello` on the handover library; `kill -HUP`: the new "
     "process inherits the listening socket, the old one stops accepting once the new one "
     "is ready, then drains (`Connection: close` on the next response)."),
    ("plain", "(b) naive restart", "`peer-plain`: SIGTERM (hyper graceful shutdown: stop "
     "accepting, close idle keep-alive connections, finish requests in flight), wait for "
     "the exit, start the new process, which initialises and then binds."),
    ("holder", "(c) socket-holding parent", "`peer-holder` binds once and runs `hello` "
     "as its child through `LISTEN_FDS` (systemfd / catflap style); SIGHUP: SIGTERM the "
     "child, wait for its exit, start a new child on the same socket."),
    ("reuseport", "(d) SO_REUSEPORT overlap", "`peer-reuseport`: start a new process "
     "that binds its own `SO_REUSEPORT` socket, wait until it accepts, SIGTERM the old "
     "one, which closes its socket at once (and with it its accept queue) and drains "
     "like (b)."),
    ("nginx", "(e) nginx binary upgrade", "Debian's nginx, `worker_processes 1`: USR2 "
     "to the master, wait for the new master (`nginx.pid.oldbin` + new `nginx.pid`), "
     "QUIT the old master. No start-up delay to simulate: nginx starts in milliseconds, "
     "so its numbers are a lower bound for a slow-starting app."),
    ("ecdysis", "(f) ecdysis", "`peer-ecdysis` on cloudflare's `ecdysis` crate: "
     "`kill -HUP`, ecdysis fork/execs the new process with the socket, the old one "
     "stops accepting when the new one calls `ready()`, then drains like (b)."),
]
LABEL = {key: label for key, label, _ in PEERS}
MODES = ["keepalive", "close"]
KINDS = ["refused", "reset", "eof", "timeout", "bad_status", "malformed", "other"]


def load(results):
    meta_path = os.path.join(results, "meta.json")
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    runs = {}
    for name in sorted(os.listdir(results)):
        if name == "meta.json" or not name.endswith(".json"):
            continue
        with open(os.path.join(results, name)) as f:
            entry = json.load(f)
        runs[(entry["peer"], entry["mode"])] = entry
    return meta, runs


def fmt_ms(value):
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(num, den, fmt="{:.2f}×"):
    if num is None or not den:
        return "–"
    return fmt.format(num / den)


def percent(num, den):
    if num is None or not den:
        return "–"
    return f"{100.0 * num / den:.0f} %"


def failures_text(check):
    kinds = check.get("failures") or {}
    parts = [f"{kinds[k]} {k.replace('_', ' ')}" for k in KINDS if kinds.get(k)]
    statuses = check.get("bad_statuses") or {}
    if statuses:
        parts.append("statuses " + ", ".join(f"{c}×{n}" for c, n in sorted(statuses.items())))
    return ", ".join(parts) if parts else "–"


def ok_upgrades(check):
    return [u for u in check.get("upgrades") or [] if u.get("ok")]


def mean_upgrade_ms(check):
    ok = ok_upgrades(check)
    if not ok:
        return None
    return sum(u["duration_ms"] for u in ok) / len(ok)


def upgrade_text(check):
    ups = check.get("upgrades") or []
    ok = ok_upgrades(check)
    if not ups:
        return "no upgrade ran"
    mean = mean_upgrade_ms(check)
    text = f"{fmt_ms(mean)}" if mean is not None else "–"
    if len(ok) != len(ups):
        text += f" ({len(ups) - len(ok)} of {len(ups)} failed)"
    return text


def duration_ms(text):
    m = re.fullmatch(r"([0-9.]+)(ms|s|m)", text or "")
    if not m:
        return 0.0
    value, unit = float(m.group(1)), m.group(2)
    return value * {"ms": 1, "s": 1000, "m": 60000}[unit]


def startup_ms(peer, meta):
    """The start-up delay an upgrade of this peer has to wait out."""
    return 0.0 if peer == "nginx" else duration_ms(meta.get("startup_delay"))


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f", {int(line.split()[1]) / 1048576:.1f} GiB RAM"
                    break
    except OSError:
        pass
    distro = ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    kernel = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} × {model}{mem}; {kernel}" + (f"; {distro}" if distro else "")


def render(meta, runs):
    out = []
    w = out.append
    w("## Comparison with other ways to upgrade a server")
    w("")
    w("The same load and the same number of upgrades, in one run, against handover and "
      "five other ways of replacing a running server, each in keep-alive mode (every "
      "worker reuses its connection) and new-connection mode (one request per "
      "connection). Load and measurements: `handover check`, whose client never retries, "
      "so every failed request counts.")
    w("")
    w("```sh")
    w(meta.get("command", "bench/compare.sh"))
    w("```")
    w("")
    when = meta.get("date") or datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    w(f"- Machine: {machine()}")
    w(f"- Date: {when}")
    tools = [meta.get("rustc", "")]
    if meta.get("nginx_version"):
        tools.append(meta["nginx_version"])
    tools.append("ecdysis 1.1.1")
    w(f"- Software: {', '.join(t for t in tools if t)}")
    w(f"- Load: {meta.get('connections', '?')} connections for {meta.get('duration', '?')} "
      f"per run, {meta.get('upgrade_count', '?')} upgrades (one every "
      f"{meta.get('every', '?')}), start-up delay {meta.get('startup_delay', '?')} "
      "for every server but nginx; server and load generator share the machine, "
      "127.0.0.1 only.")
    busy = [e["cpu_busy_before_percent"] for e in runs.values()
            if "cpu_busy_before_percent" in e]
    after = [e["cpu_busy_after_percent"] for e in runs.values()
             if "cpu_busy_after_percent" in e]
    if busy:
        w(f"- Other activity on the machine: CPU busy {min(busy)}–{max(busy)} % in the "
          f"second before each run (the script waits up to 60 s for it to drop below "
          f"25 %)" + (f", {min(after)}–{max(after)} % in the second after it (a run "
                      "followed by more than 25 % is repeated, up to 3 times)"
                      if after else "") + ".")
    w("")
    w("| upgrade method | mode | failed / requests | failures | p99 steady (ms) "
      "| p99 upgrade (ms) | p99 upgrade / steady | max upgrade (ms) "
      "| throughput upgrade / steady "
      "| throughput run / steady | upgrade duration, mean (ms) "
      "| longest gap without a new connection (ms) | plot |")
    w("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    skipped = meta.get("skipped") or {}
    peers_run = meta.get("peers") or [p for p, _, _ in PEERS]
    modes = meta.get("modes") or MODES
    for key, label, _ in PEERS:
        if key not in peers_run:
            continue
        if key in skipped:
            w(f"| {label} | – | skipped: {skipped[key]} | | | | | | | | | | |")
            continue
        for mode in modes:
            entry = runs.get((key, mode))
            name = label + ("†" if key == "nginx" else "")
            if disturbed(entry):
                name += "‡"
            if entry is None or "check" not in entry:
                why = (entry or {}).get("error", "no result")
                w(f"| {name} | {mode} | not measured: {why} | | | | | | | | | | |")
                continue
            c = entry["check"]
            lat = c.get("latency_ms") or {}
            p99s = (lat.get("steady") or {}).get("p99")
            p99u = (lat.get("upgrade") or {}).get("p99")
            maxu = (lat.get("upgrade") or {}).get("max")
            thr = c.get("throughput_rps") or {}
            failed = c.get("failed", 0)
            failed_text = f"**{failed}** / {c.get('requests', 0)}" if failed else \
                f"0 / {c.get('requests', 0)}"
            # Relative to the document's directory.
            rel = entry.get("plot", "")
            gap = c.get("longest_gap_without_new_connection_ms")
            w(f"| {name} | {mode} | {failed_text} | {failures_text(c)} | {fmt_ms(p99s)} "
              f"| {fmt_ms(p99u)} | {ratio(p99u, p99s)} | {fmt_ms(maxu)} "
              f"| {percent(thr.get('upgrade'), thr.get('steady'))} "
              f"| {percent(thr.get('overall'), thr.get('steady'))} "
              f"| {upgrade_text(c)} | {fmt_ms(gap)} "
              f"| [svg]({rel}) |")
    w("")
    if any(disturbed(e) for e in runs.values()):
        w("‡ other work on the machine overlapped this run (CPU more than 25 % busy just "
          "before or after it): its numbers are disturbed.")
        w("")
    if any((e.get("check") or {}).get("request_cap_reached") for e in runs.values()):
        w("Some runs reached the checker's `--max-requests` and stopped early.")
        w("")
    w("† nginx has no start-up delay to simulate (it starts in milliseconds): its "
      "upgrade duration and latencies are a lower bound for a slow-starting application.")
    w("")
    w("Columns: *failures* by kind as `handover check` classifies them (refused = "
      "connection refused, reset = connection reset, eof = the server closed the "
      "connection without an answer). *Steady* = requests started outside every upgrade "
      "window; an upgrade window runs from the start of the upgrade command until it "
      "has finished and a new process has answered, plus the checker's window tail. "
      "*Max upgrade*: the slowest successful request of the upgrade windows (a "
      "client that waited out a start-up shows here, not in the p99). "
      "*Throughput* counts successful requests per second. *Upgrade duration* = the "
      "upgrade command, which returns once the new version serves (and, for (b) and "
      "(c), once the old one has exited first). *Longest gap without a new connection*: "
      "the longest time between two successful requests on fresh connections "
      "(in keep-alive mode fresh connections are rare, so that gap is long by nature).")
    w("")
    w("How each one upgrades:")
    w("")
    for key, label, how in PEERS:
        if key in peers_run:
            w(f"- **{label}**: {how}")
    w("")
    w(targets(meta, runs))
    return "\n".join(out).rstrip() + "\n"


def disturbed(entry):
    return (entry.get("cpu_busy_before_percent", 0) > 25
            or entry.get("cpu_busy_after_percent", 0) > 25)


def targets(meta, runs):
    """The issue's targets, checked on the handover rows of this run."""
    lines = ["Targets for handover, in this run's numbers:", ""]
    modes = meta.get("modes") or MODES
    rows = {m: runs.get(("handover", m)) for m in modes}
    if not any(r and "check" in r for r in rows.values()):
        return "Targets: handover was not measured in this run."

    def mark(ok):
        return "met" if ok else "**not met**"

    for mode in modes:
        entry = rows.get(mode)
        if not entry or "check" not in entry:
            lines.append(f"- {mode}: not measured")
            continue
        c = entry["check"]
        lat = c.get("latency_ms") or {}
        p99s = (lat.get("steady") or {}).get("p99")
        p99u = (lat.get("upgrade") or {}).get("p99")
        thr = c.get("throughput_rps") or {}
        failed = c.get("failed", 0)
        lines.append(f"- {mode}: 0 failed requests — {failed} failed: {mark(failed == 0)}")
        if p99s and p99u is not None:
            lines.append(f"- {mode}: p99 in upgrade windows ≤ 1.1 × steady p99 — "
                         f"{fmt_ms(p99u)} vs {fmt_ms(p99s)} ms ({p99u / p99s:.2f}×): "
                         f"{mark(p99u <= 1.1 * p99s)}")
        if thr.get("steady"):
            share = thr.get("overall", 0) / thr["steady"]
            lines.append(f"- {mode}: throughput over the run ≥ 95 % of steady — "
                         f"{100 * share:.1f} %: {mark(share >= 0.95)}")
        mine = mean_upgrade_ms(c)
        if mine is None:
            lines.append(f"- {mode}: upgrade duration — no successful upgrade")
            continue
        mine_extra = mine - startup_ms("handover", meta)
        others = []
        for key, _, _ in PEERS:
            other = runs.get((key, mode))
            if key == "handover" or not other or "check" not in other:
                continue
            theirs = mean_upgrade_ms(other["check"])
            if theirs is not None:
                others.append((theirs - startup_ms(key, meta), key))
        if others:
            best, who = min(others)
            lines.append(f"- {mode}: upgrade duration beyond the start-up delay no longer "
                         f"than any peer's — handover {mine_extra:.0f} ms, fastest peer "
                         f"{LABEL[who]} {best:.0f} ms: {mark(mine_extra <= best)}")
    return "\n".join(lines)


def write_section(doc, section):
    block = f"{START}\n{section}{END}\n"
    if os.path.exists(doc):
        with open(doc) as f:
            text = f.read()
        if START in text and END in text and text.index(START) < text.index(END):
            before = text[: text.index(START)]
            after = text[text.index(END) + len(END):]
            after = after[1:] if after.startswith("\n") else after
            text = before + block + after
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        text = "# Benchmarks\n\n" + block
    directory = os.path.dirname(os.path.abspath(doc))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".BENCHMARKS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if os.path.exists(doc):
        os.chmod(tmp, os.stat(doc).st_mode & 0o777)
    else:
        os.chmod(tmp, 0o644)
    os.replace(tmp, doc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="directory of the JSON files")
    parser.add_argument("--doc", default="docs/BENCHMARKS.md", help="document to update")
    parser.add_argument("--print", action="store_true", help="print instead of writing")
    args = parser.parse_args()
    meta, runs = load(args.results)
    section = render(meta, runs)
    if args.print:
        sys.stdout.write(section)
    else:
        write_section(args.doc, section)
        print(f"table.py: wrote the comparison section of {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
