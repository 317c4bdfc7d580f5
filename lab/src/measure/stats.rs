//! Statistics over repetitions: means, the Jain fairness index, bootstrap ratio intervals.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Bootstrap resamples per interval.
const RESAMPLES: usize = 10_000;

/// The arithmetic mean; `None` for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Jain's fairness index (Σx)² / (n·Σx²): 1 when all loads are equal, 1/n when one of n
/// carries everything. `None` for no values or all zero.
pub fn jain(loads: &[f64]) -> Option<f64> {
    let sum: f64 = loads.iter().sum();
    let squares: f64 = loads.iter().map(|x| x * x).sum();
    (squares > 0.0).then(|| sum * sum / (loads.len() as f64 * squares))
}

/// A ratio of means with its 95 % confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RatioCi {
    /// mean(other) / mean(base).
    pub ratio: f64,
    /// Lower end of the interval (2.5th percentile of the bootstrap ratios).
    pub ci_low: f64,
    /// Upper end of the interval (97.5th percentile).
    pub ci_high: f64,
}

/// The ratio mean(`other`) / mean(`base`) of per-repetition values, with a 95 % percentile
/// bootstrap interval: both samples are resampled with replacement, independently, 10 000
/// times from a generator seeded with `seed`. `None` if a sample is empty or `base` has mean
/// zero.
pub fn ratio_ci(base: &[f64], other: &[f64], seed: u64) -> Option<RatioCi> {
    let base_mean = mean(base).filter(|m| *m != 0.0)?;
    let ratio = mean(other)? / base_mean;
    let mut rng = Rng::new(seed);
    let mut resample = |values: &[f64]| {
        let sum: f64 = (0..values.len())
            .map(|_| values[rng.below(values.len())])
            .sum();
        sum / values.len() as f64
    };
    let mut ratios: Vec<f64> = (0..RESAMPLES)
        .filter_map(|_| {
            let b = resample(base);
            let o = resample(other);
            (b != 0.0).then(|| o / b)
        })
        .filter(|r| r.is_finite())
        .collect();
    if ratios.is_empty() {
        return Some(RatioCi {
            ratio,
            ci_low: ratio,
            ci_high: ratio,
        });
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    Some(RatioCi {
        ratio,
        ci_low: at(0.025),
        ci_high: at(0.975),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_of_equal_loads_is_one() {
        for n in 1..=16 {
            let j = jain(&vec![0.3; n]).unwrap();
            assert!((j - 1.0).abs() < 1e-12, "n={n}: {j}");
        }
    }

    #[test]
    fn jain_of_one_hot_cpu_is_one_over_n() {
        for n in 1..=16 {
            let mut loads = vec![0.0; n];
            loads[n / 2] = 0.9;
            let j = jain(&loads).unwrap();
            assert!((j - 1.0 / n as f64).abs() < 1e-12, "n={n}: {j}");
        }
        assert_eq!(jain(&[]), None);
        assert_eq!(jain(&[0.0, 0.0]), None);
    }

    #[test]
    fn bootstrap_interval_contains_the_true_ratio() {
        // Synthetic repetitions: base around 100, other around 150 (true ratio 1.5), ±10 %.
        let mut noise = Rng::new(99);
        let mut jitter =
            |center: f64| center * (0.9 + 0.2 * (noise.next_u64() as f64 / u64::MAX as f64));
        let mut covered = 0;
        for trial in 0..40 {
            let base: Vec<f64> = (0..8).map(|_| jitter(100.0)).collect();
            let other: Vec<f64> = (0..8).map(|_| jitter(150.0)).collect();
            let ci = ratio_ci(&base, &other, trial).unwrap();
            assert!(ci.ci_low <= ci.ratio && ci.ratio <= ci.ci_high, "{ci:?}");
            assert!(ci.ci_high - ci.ci_low < 0.2, "{ci:?}");
            covered += usize::from(ci.ci_low <= 1.5 && 1.5 <= ci.ci_high);
        }
        // A 95 % interval: far more than 80 % of the trials cover the truth.
        assert!(covered >= 32, "{covered} of 40");
    }

    #[test]
    fn bootstrap_is_reproducible_and_handles_edges() {
        let base = [10.0, 11.0, 9.0];
        let other = [20.0, 19.0, 22.0];
        assert_eq!(ratio_ci(&base, &other, 5), ratio_ci(&base, &other, 5));
        let ci = ratio_ci(&[4.0], &[2.0], 1).unwrap();
        assert_eq!((ci.ratio, ci.ci_low, ci.ci_high), (0.5, 0.5, 0.5));
        assert_eq!(ratio_ci(&[], &other, 1), None);
        assert_eq!(ratio_ci(&[0.0, 0.0], &other, 1), None);
        assert_eq!(mean(&[]), None);
    }
}
