//! Measurements: latency summaries, rates, per-CPU load and its spread, CPU cost, TCP
//! counters of a namespace, and A/B ratios with bootstrap confidence intervals.

mod cpu;
mod stats;
mod tcp;

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use cpu::{
    CpuTimes, busy_shares, cpu_seconds, cpu_seconds_per_gb, process_cpu_time, thread_cpu_time,
};
pub use stats::{RatioCi, jain, mean, ratio_ci};
pub use tcp::TcpCounters;

/// Latency percentiles in microseconds, from a histogram of nanoseconds (3 significant digits).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl LatencySummary {
    /// Summarises `histogram` (values in nanoseconds); all zero when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        let at = |q: f64| us(histogram.value_at_quantile(q));
        Self {
            count: histogram.len(),
            mean_us: histogram.mean() / 1000.0,
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: us(histogram.max()),
        }
    }
}

/// Points of the latency CDF of `histogram` (nanoseconds): `(quantile, µs)` at quantiles from
/// 0 to 0.999 in `steps` equal steps, then the maximum.
pub fn latency_cdf(histogram: &Histogram<u64>, steps: u32) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let steps = steps.max(1);
    let mut points: Vec<(f64, f64)> = (0..=steps)
        .map(|i| {
            let q = 0.999 * f64::from(i) / f64::from(steps);
            (q, histogram.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect();
    points.push((1.0, histogram.max() as f64 / 1000.0));
    points
}

/// `count` per second over `elapsed` (0 for an empty interval).
pub fn per_second(count: f64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 { count / seconds } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_samples() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        // 3 significant digits: within 0.1 %.
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001;
        assert!(close(s.p50_us, 500.0), "{s:?}");
        assert!(close(s.p90_us, 900.0), "{s:?}");
        assert!(close(s.p99_us, 990.0), "{s:?}");
        assert!(close(s.p999_us, 999.0), "{s:?}");
        assert!(close(s.max_us, 1000.0), "{s:?}");
        assert!(close(s.mean_us, 500.5), "{s:?}");
    }

    #[test]
    fn cdf_rises_and_ends_at_the_maximum() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
        for ns in [1000, 2000, 3000, 50_000] {
            h.record(ns).unwrap();
        }
        let cdf = latency_cdf(&h, 10);
        assert_eq!(cdf.len(), 12);
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(cdf.last().map(|p| p.0), Some(1.0));
        assert!((cdf.last().unwrap().1 - 50.0).abs() < 0.05);
        assert!(latency_cdf(&Histogram::<u64>::new(3).unwrap(), 10).is_empty());
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(500.0, Duration::from_millis(250)), 2000.0);
        assert_eq!(per_second(500.0, Duration::ZERO), 0.0);
    }
}
