//! What the library's and the supervisor's counters share: one registry
//! prefix (`handover_`), one set of duration buckets, one encoding. The same
//! metric names (`handover_upgrade_duration_seconds`, …) come from both kinds
//! of process, so their histograms must have the same buckets to be summed
//! or compared. Each process defines its own metrics on top
//! (`handover::metrics`, the supervisor's `metrics` module).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

/// A registry whose metrics are named `handover_…`.
pub fn registry() -> Registry {
    Registry::with_prefix("handover")
}

/// Registers `metric` as `name` with its `help` and returns it (a metric is
/// a handle: the registry keeps a clone).
pub fn register<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// A histogram of durations in seconds: 15 buckets from 10 ms, doubling, to
/// about 2.7 minutes.
pub fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

/// The `result` label of an outcome (`ok`, `failed`, `refused`, …).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome's name.
    pub result: &'static str,
}

/// The registry's exposition in the Prometheus (OpenMetrics) text format,
/// ending `# EOF`.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn a_registered_counter_is_encoded_with_the_prefix() {
        let mut registry = registry();
        let counter = register(&mut registry, "things", "Things", Counter::<u64>::default());
        counter.inc();
        let text = encode(&registry);
        assert!(text.contains("handover_things_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
