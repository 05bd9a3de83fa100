//! The human table printed at the end of a run (stdout).

use std::fmt::Write as _;

use super::summary::{LatencyStats, Summary};

/// Long-lived connections that did not survive, listed one by one.
const BROKEN_LISTED: usize = 5;

/// The whole table, ending with the verdict line.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "handover check  {}  ({}, {}, {} connections, {:.1}s)",
        s.target, s.protocol, s.mode, s.connections, s.elapsed_s
    );
    if s.interrupted {
        let _ = writeln!(
            w,
            "  interrupted by Ctrl-C: the numbers cover the run so far"
        );
    }
    if s.request_cap_reached {
        let _ = writeln!(
            w,
            "  --max-requests reached: load stopped before the end of the run"
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "requests   {:>10}   ok {}   failed {} ({} in steady time, {} in upgrade windows)",
        s.requests, s.successes, s.failed, s.failed_steady, s.failed_upgrade
    );
    let f = &s.failures;
    let _ = writeln!(
        w,
        "failures   refused {}  reset {}  eof {}  timeout {}  bad status {}  malformed {}  other {}",
        f.refused, f.reset, f.eof, f.timeout, f.bad_status, f.malformed, f.other
    );
    if !s.bad_statuses.is_empty() {
        let list: Vec<String> = s
            .bad_statuses
            .iter()
            .map(|(code, n)| format!("{code} × {n}"))
            .collect();
        let _ = writeln!(w, "           statuses: {}", list.join(", "));
    }
    let t = &s.throughput_rps;
    let _ = writeln!(
        w,
        "throughput {:.1} ok/s overall, {:.1} steady, {:.1} in upgrade windows ({:.1}s of windows)",
        t.overall, t.steady, t.upgrade, s.upgrade_window_s
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "latency ms        {:>9} {:>9} {:>9} {:>9} {:>9}",
        "count", "p50", "p99", "p99.9", "max"
    );
    latency_row(w, "steady", &s.latency_ms.steady);
    latency_row(w, "upgrade windows", &s.latency_ms.upgrade);
    let _ = writeln!(w);
    let gap = match &s.longest_gap_without_new_connection {
        Some(stretch) => format!(
            "{:.1} ms (from {:.3}s to {:.3}s)",
            s.longest_gap_without_new_connection_ms, stretch.from_s, stretch.to_s
        ),
        None if s.new_connections <= s.connections as u64 => {
            "none: no connection was opened after the start".to_owned()
        }
        None => "none: fewer than two new connections succeeded".to_owned(),
    };
    let _ = writeln!(
        w,
        "longest stretch without a successful new connection: {gap}; {} new connections",
        s.new_connections
    );
    let answered = if !s.answered_by_generation.is_empty() {
        list("generation", &s.answered_by_generation)
    } else if !s.answered_by_pid.is_empty() {
        list("pid", &s.answered_by_pid)
    } else {
        "(the server does not say: no x-pid/x-generation header, no pid=N/generation=N)".to_owned()
    };
    let _ = writeln!(w, "answered by {answered}");
    if !s.answered_by_generation.is_empty() && !s.answered_by_pid.is_empty() {
        let _ = writeln!(w, "            {}", list("pid", &s.answered_by_pid));
    }
    if let Some(long_lived) = &s.long_lived {
        let _ = writeln!(w, "{}", long_lived.line);
        let broken: Vec<_> = long_lived
            .per_connection
            .iter()
            .filter(|c| !c.survived)
            .collect();
        for c in broken.iter().take(BROKEN_LISTED) {
            let closed = if c.closed_by_server {
                ", closed by the server"
            } else {
                ""
            };
            let _ = writeln!(
                w,
                "  connection {}: opened {}, failed exchanges {}{closed}; pids [{}]",
                c.worker,
                c.opened,
                c.failures,
                c.pids.join(", ")
            );
        }
        if broken.len() > BROKEN_LISTED {
            let _ = writeln!(w, "  … and {} more", broken.len() - BROKEN_LISTED);
        }
    }
    if let Some(keep_alive) = &s.keep_alive {
        let _ = writeln!(w, "{}", keep_alive.line);
    }
    if !s.upgrades.is_empty() {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "upgrade  started     took        status      window ends  first new answer"
        );
        for u in &s.upgrades {
            let status = match (u.exit_status, u.signal, u.timed_out, &u.error) {
                (Some(code), ..) => format!("exit {code}"),
                (_, Some(signal), ..) => format!("signal {signal}"),
                (_, _, true, _) => "timed out".to_owned(),
                _ => "not run".to_owned(),
            };
            let new = match (&u.first_new_answer_s, &u.new_answered_by) {
                (Some(at), Some(who)) => format!("{at:.3}s ({who})"),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                w,
                "{:>7}  {:>8.3}s  {:>9.1}ms  {:<10}  {:>10.3}s  {new}",
                u.index, u.started_s, u.duration_ms, status, u.window_end_s
            );
            if u.first_new_answer_s.is_none() && !s.answered_by.is_empty() {
                let _ = writeln!(
                    w,
                    "         note: no new pid or generation answered after this command"
                );
            }
            if !u.ok {
                if let Some(error) = &u.error {
                    let _ = writeln!(w, "         error: {error}");
                }
                for line in &u.output_tail {
                    let _ = writeln!(w, "         | {line}");
                }
            }
        }
    }
    if !s.first_failures.is_empty() {
        let _ = writeln!(w);
        let _ = writeln!(w, "first failures:");
        for failure in &s.first_failures {
            let _ = writeln!(w, "  {failure}");
        }
    }
    let _ = writeln!(w);
    if s.passed() {
        let _ = writeln!(
            w,
            "PASS: {} requests, none failed; {} upgrades, none failed",
            s.requests,
            s.upgrades.len()
        );
    } else {
        let _ = writeln!(w, "FAIL: {}", s.reasons.join("; "));
    }
    out
}

fn latency_row(w: &mut String, label: &str, stats: &LatencyStats) {
    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
    let _ = writeln!(
        w,
        "  {label:<15} {:>9} {:>9} {:>9} {:>9} {:>9}",
        stats.count,
        cell(stats.p50),
        cell(stats.p99),
        cell(stats.p999),
        cell(stats.max)
    );
}

/// `generation 0 (1200), 1 (3400)`, in numeric order when the keys are numbers.
fn list(what: &str, counts: &std::collections::BTreeMap<String, u64>) -> String {
    let mut entries: Vec<(&String, &u64)> = counts.iter().collect();
    entries.sort_by_key(|(key, _)| (key.parse::<u64>().unwrap_or(u64::MAX), (*key).clone()));
    let items: Vec<String> = entries.iter().map(|(k, n)| format!("{k} ({n})")).collect();
    format!("{what} {}", items.join(", "))
}
