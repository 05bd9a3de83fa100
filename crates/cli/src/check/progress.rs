//! The live progress line: on stderr, only when stderr is a terminal,
//! redrawn four times a second and erased at the end.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover_loadgen::LiveStats;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::args::Plan;

const EVERY: Duration = Duration::from_millis(250);
/// Carriage return + erase the line.
const CLEAR: &str = "\r\x1b[2K";

/// A running progress line.
#[derive(Debug)]
pub struct Progress {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts redrawing, unless stderr is not a terminal (`None`).
    pub fn start(
        plan: &Plan,
        origin: Instant,
        stats: LiveStats,
        done: Arc<AtomicU32>,
    ) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let duration = plan.load.duration;
        let planned = plan.planned_upgrades();
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            let (mut last_at, mut last_attempts) = (Instant::now(), 0);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let now = Instant::now();
                let attempts = stats.attempts();
                let window = now.duration_since(last_at).as_secs_f64();
                let rate = if window > 0.0 {
                    (attempts - last_attempts) as f64 / window
                } else {
                    0.0
                };
                (last_at, last_attempts) = (now, attempts);
                let line = format!(
                    "{CLEAR}{:.1}s / {:.1}s  upgrades {}/{planned}  requests {attempts}  failed {}  {rate:.0} req/s",
                    origin.elapsed().min(duration).as_secs_f64(),
                    duration.as_secs_f64(),
                    done.load(Ordering::Relaxed),
                    stats.failures(),
                );
                let mut stderr = std::io::stderr().lock();
                let _ = stderr.write_all(line.as_bytes());
                let _ = stderr.flush();
            }
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(CLEAR.as_bytes());
            let _ = stderr.flush();
        });
        Some(Progress { stop, task })
    }

    /// Stops redrawing and erases the line.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
