//! Order statistics over a handful of measurements, and how to print them.

use std::time::Duration;

/// Nearest-rank percentile `p` (0–100) of `sorted` (ascending); `None` if empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// min / median / p90 / p99 / max of a set of durations.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub count: usize,
    pub min: Duration,
    pub median: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Spread {
    /// The spread of `values`; `None` if there are none.
    pub fn of(mut values: Vec<Duration>) -> Option<Spread> {
        values.sort_unstable();
        Some(Spread {
            count: values.len(),
            min: *values.first()?,
            median: percentile(&values, 50.0)?,
            p90: percentile(&values, 90.0)?,
            p99: percentile(&values, 99.0)?,
            max: *values.last()?,
        })
    }
}

/// `d` in milliseconds with three decimals, e.g. `1.234 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// `d` in whole microseconds, e.g. `87 µs`.
pub fn us(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

/// `a / b`, or NaN when `b` is zero.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        f64::NAN
    } else {
        a / b
    }
}

/// "met" or "NOT met", for the tables.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**NOT met**"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&v, 90.0), Some(Duration::from_millis(9)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&v, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50.0), None);
        let s = Spread::of(v).unwrap();
        assert_eq!(
            (s.count, s.min, s.max),
            (10, Duration::from_millis(1), Duration::from_millis(10))
        );
    }
}
