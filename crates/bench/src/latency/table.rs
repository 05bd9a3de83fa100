//! The Markdown table of one client mode: latency by where requests started,
//! and the figures checked against the targets.

use std::time::Duration;

use super::analysis::{self, Latencies, Span};
use super::Run;
use crate::stats::{ms, ratio, verdict, Spread};

const P99_TARGET: f64 = 1.1;
const THROUGHPUT_TARGET: f64 = 0.95;
/// The first part of a window, in which the old process forks and the
/// successor execs and starts; shown as its own row.
const SPAWN: Duration = Duration::from_millis(50);

/// The section of one mode, from the steady runs A1 and A2 and run B.
pub(super) fn section(title: &str, steady: [&Run; 2], upgraded: &Run) -> String {
    let spans = |pick| analysis::spans(&upgraded.windows, upgraded.start, pick);
    let windows = spans(|w| (w.signalled, w.exited));
    let spawns = spans(|w| (w.signalled, (w.signalled + SPAWN).min(w.committed)));
    let commits = spans(|w| (w.committed, w.exited));
    let split = analysis::split(&upgraded.report, &windows, &spawns, &commits);
    let [a1, a2] = steady.map(|run| analysis::throughput(&run.report));
    let throughput_b = analysis::throughput(&upgraded.report);
    let throughput_ratio = ratio(throughput_b, (a1 + a2) / 2.0);
    let p99_ratio = match (split.inside.p99, split.outside.p99) {
        (Some(inside), Some(outside)) => ratio(inside.as_secs_f64(), outside.as_secs_f64()),
        _ => f64::NAN,
    };
    let failures: usize = [steady[0], upgraded, steady[1]]
        .iter()
        .map(|run| run.report.failure_count())
        .sum();
    let median = |spans: &[Span]| {
        Spread::of(spans.iter().map(Span::length).collect()).map_or("–".into(), |s| ms(s.median))
    };
    let in_windows: Duration = windows.iter().map(Span::length).sum();
    let mut out = format!(
        "\n#### {title}\n\n\
         | requests started | count | failed | p50 | p99 | max |\n|---|---|---|---|---|---|\n\
         {}{}{}{}{}{}{}\n\
         Run B had {} upgrades; windows lasted {} (median; {:.0} % of the run), of which \
         commit → old process exited {} (median). Other processes used {:.0} % (A1), {:.0} % (B) \
         and {:.0} % (A2) of the machine's CPU time meanwhile.\n\n\
         | figure | value | target | verdict |\n|---|---|---|---|\n\
         | p99 in windows / p99 outside (run B) | {p99_ratio:.2}× | ≤ {P99_TARGET}× | {} |\n\
         | throughput B / mean(A1, A2) | {throughput_b:.0} / {:.0} req/s = {:.1} % | ≥ {:.0} % | {} |\n\
         | noise floor: throughput A2 / A1 | {a2:.0} / {a1:.0} req/s = {:.1} % | | |\n\
         | failed requests (A1 + B + A2) | {failures} | 0 | {} |\n",
        row("run A1, steady (no upgrade)", &Latencies::of(&steady[0].report.samples)),
        row("run A2, steady (no upgrade)", &Latencies::of(&steady[1].report.samples)),
        row("run B, outside upgrade windows", &split.outside),
        row("run B, inside upgrade windows", &split.inside),
        row(
            &format!("… of which SIGHUP → +{} ms (fork, exec, start-up)", SPAWN.as_millis()),
            &split.spawn
        ),
        row("… of which commit → old process exited", &split.commit),
        row("run B, all", &Latencies::of(&upgraded.report.samples)),
        upgraded.windows.len(),
        median(&windows),
        100.0 * ratio(in_windows.as_secs_f64(), upgraded.report.elapsed.as_secs_f64()),
        median(&commits),
        steady[0].others * 100.0,
        upgraded.others * 100.0,
        steady[1].others * 100.0,
        verdict(p99_ratio <= P99_TARGET),
        (a1 + a2) / 2.0,
        throughput_ratio * 100.0,
        THROUGHPUT_TARGET * 100.0,
        verdict(throughput_ratio >= THROUGHPUT_TARGET),
        ratio(a2, a1) * 100.0,
        verdict(failures == 0),
    );
    for (name, run) in [("A1", steady[0]), ("B", upgraded), ("A2", steady[1])] {
        let first = run.report.first_failures(10);
        if !first.is_empty() {
            out.push_str(&format!(
                "\nFailures in run {name} ({:?}):\n\n```text\n{}\n```\n",
                run.report.failure_counts(),
                first.join("\n")
            ));
        }
    }
    out
}

fn row(name: &str, l: &Latencies) -> String {
    let f = |d: Option<Duration>| d.map_or("–".into(), ms);
    format!(
        "| {name} | {} | {} | {} | {} | {} |\n",
        l.requests,
        l.failures,
        f(l.p50),
        f(l.p99),
        f(l.max)
    )
}
