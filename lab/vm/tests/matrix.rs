//! The matrix path end to end on one kernel (6.1): build the release `accel`, build an image
//! with it, boot, run the monitor's smoke test and a variant that forgets to detach (which
//! must fail), power off, and write the table. Needs QEMU and the cached (or fetchable) kernel.

use std::time::Duration;

use lab_vm::matrix_run::{self, RunOptions};
use lab_vm::smoke::Outcome;
use lab_vm::{Cache, Matrix, SmokeTests};

#[test]
fn monitor_smoke_test_passes_on_6_1_and_a_missing_detach_is_caught() {
    let builtin = SmokeTests::builtin().unwrap();
    let monitor = builtin
        .tests
        .iter()
        .find(|t| t.name == "monitor")
        .unwrap()
        .clone();
    let mut not_detached = monitor.clone();
    not_detached.name = "monitor-not-detached".into();
    not_detached
        .steps
        .retain(|s| !s.run.iter().any(|word| word == "detach"));
    let tests = SmokeTests {
        tests: vec![monitor, not_detached],
    };

    let matrix = Matrix::builtin().unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = RunOptions {
        accel: matrix_run::build_accel().unwrap(),
        out: out.path().to_owned(),
        cpus: 2,
        memory_mib: 512,
        boot_timeout: Duration::from_secs(120),
        step_timeout: Duration::from_secs(120),
    };
    let report = matrix_run::run(
        &[matrix.kernel("6.1").unwrap()],
        &Cache::from_env().unwrap(),
        &tests,
        &options,
    )
    .unwrap();
    report.write(out.path()).unwrap();
    let md = report.markdown();

    let kernel = &report.kernels[0];
    assert_eq!(kernel.error, None, "{md}");
    assert_eq!(
        kernel.accel.as_deref().map(|a| a == "tcg" || a == "kvm"),
        Some(true)
    );
    assert!(kernel.boot_ms.is_some(), "{md}");
    assert_eq!(kernel.results[0].accelerator, "monitor");
    assert_eq!(kernel.results[0].outcome, Outcome::Pass, "{md}");
    match &kernel.results[1].outcome {
        Outcome::Fail(why) => assert!(
            why.contains("test ! -e /sys/fs/bpf/dgl/monitor/host/smkmon0")
                && why.contains("exit code 1"),
            "{why}"
        ),
        other => panic!("the variant without detach should fail, got {other:?}\n{md}"),
    }
    assert!(!report.passed);
    assert!(md.contains("| monitor | pass |"), "{md}");
    assert!(md.contains("| monitor-not-detached | **FAIL** |"), "{md}");

    let console = std::fs::read_to_string(kernel.console.as_ref().unwrap()).unwrap();
    assert!(console.contains("reboot: Power down"), "{console}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("matrix.json")).unwrap())
            .unwrap();
    assert_eq!(json["kernels"][0]["results"][0]["status"], "pass");
}
