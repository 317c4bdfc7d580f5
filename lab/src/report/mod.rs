//! Reports: `report.json` (the canonical result), `env.json` (where it was measured),
//! `report.md` and SVG plots made from them, and comparisons of two reports.
//!
//! `report.json`, schema version 1 ([`SCHEMA_VERSION`]):
//!
//! ```json
//! { "schema_version": 1, "scenario": "baseline-rr", "seed": 7, "complete": true,
//!   "schedule": [ { "repetition": 0, "variant": 1 }, { "repetition": 0, "variant": 0 }, … ],
//!   "variants": [ { "name": "clean",
//!                   "repetitions": [ { "rr_per_s": 14000.0, "p99_us": 80.1 }, … ],
//!                   "latency_cdf": [ [0.0, 50.2], …, [1.0, 310.0] ],   // (quantile, µs)
//!                   "cpu_busy": [0.61, 0.58],                  // mean busy share per CPU
//!                   "cpu_packets": [0.02, 0.98],               // monitor: share of packets
//!                   "cpu_softirq": [0.01, 0.35] }, … ],        // monitor: NET_RX time share
//!   "ratios": { "netem-1ms": { "p99_us": { "ratio": 28.1, "ci_low": 27.0, "ci_high": 29.3 } } } }
//! ```
//!
//! `schedule` lists the measured runs in the order they ran (variants by index): the
//! scenario's seeded schedule, or its beginning when the run was interrupted. Metric names end
//! in their unit (`_us`, `_per_s`, `_bytes`, …); `ratios[variant][metric]`
//! is mean(variant) / mean(first variant) over repetitions with a 95 % bootstrap interval.
//! `cpu_packets` and `cpu_softirq` come from the variant's first monitor accelerator and are
//! left out when it has none: each CPU's share of the packets received on the monitored
//! interface, and the share of the window each CPU spent in NET_RX softirqs (cpumap and
//! redirect work that /proc/softirqs misses shows up here and in `cpu_busy`, not in
//! /proc/softirqs). Both are means over the variant's repetitions.

mod env;
mod markdown;
mod plots;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::measure::{RatioCi, ratio_ci};
use crate::scenario::Slot;

pub use env::Env;
pub use markdown::markdown;
pub use plots::{cpu_busy_svg, latency_cdf_svg, throughput_svg};

/// Version of the `report.json` schema; a change that breaks readers increments it.
pub const SCHEMA_VERSION: u32 = 1;

/// One scenario's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// The scenario's name.
    pub scenario: String,
    /// The scenario's seed: the same file and seed give the same schedule.
    pub seed: u64,
    /// False when the run was interrupted: some repetitions are missing.
    pub complete: bool,
    /// The measured runs in the order they ran: the scenario's schedule, or its beginning
    /// when the run was interrupted (empty in reports not made by a run).
    #[serde(default)]
    pub schedule: Vec<Slot>,
    /// Per variant, in the scenario's order.
    pub variants: Vec<VariantResults>,
    /// `ratios[variant][metric]` against the first variant.
    pub ratios: BTreeMap<String, BTreeMap<String, RatioCi>>,
}

/// What was measured for one variant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VariantResults {
    /// The variant's name.
    pub name: String,
    /// Metric values, one map per repetition, in the order they ran.
    pub repetitions: Vec<BTreeMap<String, f64>>,
    /// `(quantile, µs)` points of the latency CDF over all repetitions (empty: no latency).
    pub latency_cdf: Vec<(f64, f64)>,
    /// Mean busy share (0 to 1) of each CPU over the measured windows.
    pub cpu_busy: Vec<f64>,
    /// Mean share (0 to 1) of the monitored packets received on each CPU (empty: no monitor).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_packets: Vec<f64>,
    /// Mean share (0 to 1) of the window each CPU spent in NET_RX softirqs (empty: no
    /// monitor).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_softirq: Vec<f64>,
}

impl VariantResults {
    /// The values of `metric` over the repetitions that have it.
    pub fn values(&self, metric: &str) -> Vec<f64> {
        self.repetitions
            .iter()
            .filter_map(|r| r.get(metric).copied())
            .collect()
    }

    /// Every metric name of any repetition, sorted.
    pub fn metrics(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .repetitions
            .iter()
            .flat_map(|r| r.keys().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

impl Report {
    /// A report of `variants`, with ratios against the first one (intervals seeded with
    /// `seed`).
    pub fn new(scenario: &str, seed: u64, complete: bool, variants: Vec<VariantResults>) -> Self {
        let mut ratios = BTreeMap::new();
        if let Some((base, others)) = variants.split_first() {
            for variant in others {
                ratios.insert(variant.name.clone(), ratios_between(base, variant, seed));
            }
        }
        Self {
            schema_version: SCHEMA_VERSION,
            scenario: scenario.to_owned(),
            seed,
            complete,
            schedule: Vec::new(),
            variants,
            ratios,
        }
    }

    /// Reads `report.json` (or the file itself, when `path` is not a directory).
    pub fn read(path: &Path) -> io::Result<Self> {
        let file = if path.is_dir() {
            path.join("report.json")
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
        let report: Report = serde_json::from_str(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", file.display()),
            )
        })?;
        if report.schema_version != SCHEMA_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: schema version {} (this lab reads {SCHEMA_VERSION})",
                    file.display(),
                    report.schema_version
                ),
            ));
        }
        Ok(report)
    }

    /// Writes `report.json`, `env.json`, `report.md`, `latency_cdf.svg`, `cpu_busy.svg` and
    /// `throughput.svg` into `dir` (made if missing).
    pub fn write(&self, env: &Env, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), pretty(self)?)?;
        std::fs::write(dir.join("env.json"), pretty(env)?)?;
        std::fs::write(dir.join("report.md"), markdown(self, env))?;
        std::fs::write(dir.join("latency_cdf.svg"), latency_cdf_svg(self)?)?;
        std::fs::write(dir.join("cpu_busy.svg"), cpu_busy_svg(self)?)?;
        std::fs::write(dir.join("throughput.svg"), throughput_svg(self)?)?;
        Ok(())
    }
}

/// Pretty JSON with a trailing newline.
fn pretty<T: Serialize>(value: &T) -> io::Result<String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(io::Error::other)
}

/// Ratios of every metric both variants have: `other` against `base`.
fn ratios_between(
    base: &VariantResults,
    other: &VariantResults,
    seed: u64,
) -> BTreeMap<String, RatioCi> {
    other
        .metrics()
        .into_iter()
        .filter_map(|metric| {
            let ci = ratio_ci(&base.values(metric), &other.values(metric), seed)?;
            Some((metric.to_owned(), ci))
        })
        .collect()
}

/// One line of a comparison of two reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The variant, present in both reports.
    pub variant: String,
    /// The metric.
    pub metric: String,
    /// B against A.
    pub ratio: RatioCi,
}

/// Ratios of report `b` against report `a`, for every variant (by name) and metric in both;
/// intervals seeded with `b`'s seed.
pub fn compare(a: &Report, b: &Report) -> Vec<Comparison> {
    let mut out = Vec::new();
    for variant in &b.variants {
        let Some(base) = a.variants.iter().find(|v| v.name == variant.name) else {
            continue;
        };
        for (metric, ratio) in ratios_between(base, variant, b.seed) {
            out.push(Comparison {
                variant: variant.name.clone(),
                metric,
                ratio,
            });
        }
    }
    out
}

/// A comparison as an aligned text table.
pub fn comparison_text(lines: &[Comparison]) -> String {
    let mut out = format!(
        "{:<20} {:<24} {:>10} {:>23}\n",
        "variant", "metric", "B/A", "95% CI"
    );
    for c in lines {
        out += &format!(
            "{:<20} {:<24} {:>10.4} {:>23}\n",
            c.variant,
            c.metric,
            c.ratio.ratio,
            format!("[{:.4}, {:.4}]", c.ratio.ci_low, c.ratio.ci_high)
        );
    }
    out
}
