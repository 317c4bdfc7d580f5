//! `report.md`: the report as tables.

use std::fmt::Write;

use super::{Env, Report};

/// The report as Markdown: ratios first, then every repetition's metrics per variant.
pub fn markdown(report: &Report, env: &Env) -> String {
    let mut out = format!("# {}\n\n", report.scenario);
    if !report.complete {
        out += "**Incomplete: the run was interrupted; some repetitions are missing.**\n\n";
    }
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "Seed {} (the same file and seed give the same schedule) · schema {} · kernel {} · \
         {} × {} · lab {}{}\n",
        report.seed,
        report.schema_version,
        env.kernel,
        env.cores,
        env.cpu_model,
        env.lab_version,
        env.git_rev
            .as_ref()
            .map_or(String::new(), |r| format!(" · git {r}")),
    );
    let listed = |map: &std::collections::BTreeMap<String, String>,
                  format: fn(&str, &str) -> String| {
        map.iter()
            .map(|(name, version)| format(name, version))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !env.vm_kernels.is_empty() {
        let _ = writeln!(
            out,
            "VM nodes: {}\n",
            listed(&env.vm_kernels, |node, kernel| format!(
                "{node} kernel {kernel}"
            ))
        );
    }
    if !env.crates.is_empty() || !env.tools.is_empty() {
        let _ = writeln!(
            out,
            "Crates: {} · tools: {}\n",
            listed(&env.crates, |name, version| format!("{name} {version}")),
            listed(&env.tools, |name, version| format!("{name} ({version})"))
        );
    }
    if !report.schedule.is_empty() {
        let name = |index: usize| report.variants.get(index).map_or("?", |v| v.name.as_str());
        let runs: Vec<String> = report
            .schedule
            .iter()
            .map(|slot| format!("{}:{}", slot.repetition + 1, name(slot.variant)))
            .collect();
        let _ = writeln!(
            out,
            "Runs in order (repetition:variant): {}\n",
            runs.join(" ")
        );
    }
    if let Some(base) = report.variants.first() {
        let _ = writeln!(
            out,
            "## Ratios against `{}`\n\nMean over repetitions, with a 95 % bootstrap \
             confidence interval.\n\n| variant | metric | ratio | 95 % CI |\n|---|---|---:|---:|",
            base.name
        );
        for (variant, metrics) in &report.ratios {
            for (metric, ci) in metrics {
                let _ = writeln!(
                    out,
                    "| {variant} | {metric} | {:.3} | {:.3} – {:.3} |",
                    ci.ratio, ci.ci_low, ci.ci_high
                );
            }
        }
        out.push('\n');
    }
    for variant in &report.variants {
        let metrics = variant.metrics();
        let _ = writeln!(
            out,
            "## `{}`\n\n| repetition | {} |\n|---:|{}",
            variant.name,
            metrics.join(" | "),
            "---:|".repeat(metrics.len())
        );
        for (i, repetition) in variant.repetitions.iter().enumerate() {
            let cells: Vec<String> = metrics
                .iter()
                .map(|m| repetition.get(*m).map_or("–".to_owned(), |v| number(*v)))
                .collect();
            let _ = writeln!(out, "| {} | {} |", i + 1, cells.join(" | "));
        }
        for (what, shares) in [
            ("CPU busy", &variant.cpu_busy),
            ("CPU packets (monitor)", &variant.cpu_packets),
            ("CPU NET_RX softirq (monitor)", &variant.cpu_softirq),
        ] {
            if !shares.is_empty() {
                let shares: Vec<String> = shares
                    .iter()
                    .enumerate()
                    .map(|(cpu, share)| format!("cpu{cpu} {:.0} %", share * 100.0))
                    .collect();
                let _ = writeln!(out, "\n{what}: {}", shares.join(", "));
            }
        }
        out.push('\n');
    }
    out
}

/// A value with 4 significant digits, without exponent for everyday magnitudes.
fn number(value: f64) -> String {
    let magnitude = if value == 0.0 {
        0
    } else {
        value.abs().log10().floor() as i32
    };
    let decimals = (3 - magnitude).clamp(0, 6) as usize;
    format!("{value:.decimals$}")
}
