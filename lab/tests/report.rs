//! Reports from a fixed synthetic input: Markdown snapshot, files written, compare.

use std::collections::BTreeMap;

use lab::report::{Env, Report, VariantResults, compare, comparison_text, markdown};

fn variant(name: &str, rate: f64, p99: f64) -> VariantResults {
    let repetitions = (0..4)
        .map(|i| {
            let wobble = 1.0 + 0.01 * f64::from(i);
            BTreeMap::from([
                ("rr_per_s".to_owned(), rate * wobble),
                ("p99_us".to_owned(), p99 / wobble),
            ])
        })
        .collect();
    VariantResults {
        name: name.to_owned(),
        repetitions,
        latency_cdf: vec![
            (0.0, p99 / 4.0),
            (0.5, p99 / 2.0),
            (0.99, p99),
            (1.0, p99 * 2.0),
        ],
        cpu_busy: vec![0.5, 0.25],
        ..VariantResults::default()
    }
}

fn sample() -> (Report, Env) {
    let report = Report::new(
        "synthetic",
        7,
        true,
        vec![variant("clean", 10_000.0, 100.0), {
            // A variant with a monitor: per-CPU packet and softirq shares.
            let mut v = variant("netem-1ms", 480.0, 2100.0);
            v.cpu_packets = vec![0.125, 0.875];
            v.cpu_softirq = vec![0.0625, 0.375];
            v
        }],
    );
    let env = Env {
        kernel: "6.1.0".to_owned(),
        cpu_model: "Test CPU".to_owned(),
        cores: 2,
        lab_version: "0.1.0".to_owned(),
        crates: [("aya".to_owned(), "0.14.0".to_owned())].into(),
        tools: [("iperf3".to_owned(), "iperf 3.12".to_owned())].into(),
        git_rev: Some("abc123".to_owned()),
        scenario_sha256: "00".repeat(32),
        seed: 7,
        vm_kernels: [(
            "server".to_owned(),
            "6.12 (6.12.118+deb13-amd64)".to_owned(),
        )]
        .into(),
    };
    (report, env)
}

#[test]
fn markdown_of_a_fixed_report() {
    let (report, env) = sample();
    insta::assert_snapshot!(markdown(&report, &env));
}

#[test]
fn ratios_are_against_the_first_variant() {
    let (report, _) = sample();
    let ratios = &report.ratios["netem-1ms"];
    assert!((ratios["rr_per_s"].ratio - 0.048).abs() < 1e-9);
    assert!((ratios["p99_us"].ratio - 21.0).abs() < 0.01);
    assert!(ratios["p99_us"].ci_low <= 21.0 && ratios["p99_us"].ci_high >= 20.9);
    assert!(!report.ratios.contains_key("clean"));
}

#[test]
fn writes_every_file_and_reads_the_report_back() {
    let (report, env) = sample();
    let dir = std::env::temp_dir().join(format!("lab-report-test-{}", std::process::id()));
    let written = report.write(&env, &dir);
    let files: Vec<String> = ["report.json", "env.json", "report.md"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect();
    let svgs: Vec<String> = ["latency_cdf.svg", "cpu_busy.svg", "throughput.svg"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect();
    let read = Report::read(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    written.unwrap();
    assert_eq!(read.unwrap(), report);
    assert!(files[0].contains("\"schema_version\": 1"));
    assert!(files[1].contains("\"scenario_sha256\""));
    assert!(files[2].starts_with("# synthetic"));
    for svg in svgs {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("netem-1ms"));
    }
}

#[test]
fn comparing_two_reports() {
    let (a, _) = sample();
    let mut b = a.clone();
    for v in &mut b.variants {
        for r in &mut v.repetitions {
            *r.get_mut("rr_per_s").unwrap() *= 2.0;
        }
    }
    let lines = compare(&a, &b);
    assert_eq!(lines.len(), 4);
    for line in &lines {
        let expected = if line.metric == "rr_per_s" { 2.0 } else { 1.0 };
        assert!((line.ratio.ratio - expected).abs() < 1e-9, "{line:?}");
    }
    insta::assert_snapshot!(comparison_text(&lines));
}

#[test]
fn reading_a_bad_report_names_the_file() {
    let dir = std::env::temp_dir().join(format!("lab-report-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.json"), "{\"schema_version\": 99}").unwrap();
    let error = Report::read(&dir).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(error.contains("report.json"), "{error}");
}

#[test]
fn lab_compare_prints_the_ratios() {
    let (report, env) = sample();
    let dir = std::env::temp_dir().join(format!("lab-compare-test-{}", std::process::id()));
    let written = report.write(&env, &dir);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
        .arg("compare")
        .arg(&dir)
        .arg(dir.join("report.json"))
        .output();
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["compare", "/nonexistent/a", "/nonexistent/b"])
        .output();
    std::fs::remove_dir_all(&dir).unwrap();
    written.unwrap();
    let output = output.unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("netem-1ms            rr_per_s                     1.0000"),
        "{text}"
    );
    let missing = missing.unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/a/report.json")
            || String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/a")
    );
}
