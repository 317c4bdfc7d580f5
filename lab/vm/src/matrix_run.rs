//! `lab-vm matrix`: every accelerator's smoke test ([`crate::smoke`]) on every kernel of the
//! matrix, and the program × kernel table (Markdown and JSON).
//!
//! Per kernel: fetch (cached); boot the minimal image ([`InitramfsSpec::minimal`], one vCPU)
//! once and power it off, to report the boot time against [`BOOT_GOAL`]; build an initramfs with the `accel` binary, the tools and
//! modules the smoke tests need (and only the agent's modules besides: no network card, no
//! host share, so the VM boots faster), boot, run the smoke tests one after another in that VM, power off. The
//! console is scanned for splats after every smoke test (a splat fails the test that was
//! running) and once more after power-off (a splat then fails the kernel). Nothing here
//! returns early on a failed kernel: the table always has every cell.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fetch::Cache;
use crate::initramfs::{self, AGENT_MODULES, InitramfsSpec};
use crate::matrix::KernelPin;
use crate::smoke::{ACCEL_TOOL, Outcome, SmokeTests, Tools};
use crate::vm::{Vm, VmConfig, scan_console};
use crate::{Error, Result, io_err};

/// The boot time goal for the minimal image under TCG: QEMU started to the agent's hello.
pub const BOOT_GOAL: Duration = Duration::from_secs(3);

/// How to run the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// The `accel` binary shipped into every image.
    pub accel: PathBuf,
    /// Directory for console logs, `matrix.md` and `matrix.json`.
    pub out: PathBuf,
    /// Virtual CPUs per VM.
    pub cpus: u32,
    /// Memory per VM in MiB.
    pub memory_mib: u32,
    /// Longest wait for a VM's agent.
    pub boot_timeout: Duration,
    /// Longest wait for one smoke test step.
    pub step_timeout: Duration,
}

/// The whole matrix run: what `matrix.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Whether every kernel ran cleanly and every smoke test passed.
    pub passed: bool,
    /// Wall-clock time of the whole run in milliseconds.
    pub ms: u64,
    /// The accelerators, in smoke test order (the table's rows).
    pub accelerators: Vec<String>,
    /// One entry per kernel, in matrix order (the table's columns).
    pub kernels: Vec<KernelReport>,
}

/// One kernel's column.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelReport {
    /// Matrix name, e.g. `6.1`.
    pub kernel: String,
    /// Kernel release (`uname -r`), once fetched.
    pub release: Option<String>,
    /// `tcg` or `kvm`, once booted.
    pub accel: Option<String>,
    /// Time from starting QEMU to the agent's hello for the minimal image on one vCPU (the
    /// number [`BOOT_GOAL`] is about), once booted.
    pub minimal_boot_ms: Option<u64>,
    /// Time from starting QEMU to the agent's hello for the smoke test image, once booted.
    pub boot_ms: Option<u64>,
    /// Wall-clock time for this kernel (fetch, image, boot, tests, power-off).
    pub ms: u64,
    /// The console log, once QEMU was started.
    pub console: Option<PathBuf>,
    /// What went wrong outside the smoke tests (fetch, image, boot, splat at power-off).
    pub error: Option<String>,
    /// One result per accelerator, in [`Report::accelerators`] order.
    pub results: Vec<AcceleratorResult>,
}

/// One cell of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcceleratorResult {
    /// The accelerator.
    pub accelerator: String,
    /// Pass, fail or error, with the detail.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Wall-clock time of the smoke test in milliseconds (0 when it did not run).
    pub ms: u64,
}

impl KernelReport {
    /// Whether the kernel ran cleanly and all its smoke tests passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.results.iter().all(|r| r.outcome.passed())
    }
}

/// Runs every smoke test on every kernel in `pins`, one kernel after another, writing console
/// logs to `options.out`; progress goes to standard error.
///
/// # Errors
/// Only problems that concern all kernels: a tool the smoke tests need is not on the host, or
/// the output directory cannot be created. Per-kernel problems are recorded in the report.
pub fn run(
    pins: &[&KernelPin],
    cache: &Cache,
    tests: &SmokeTests,
    options: &RunOptions,
) -> Result<Report> {
    let started = Instant::now();
    fs::create_dir_all(&options.out)
        .map_err(io_err(format!("creating {}", options.out.display())))?;
    let mut tools = Tools::new();
    tools.insert(ACCEL_TOOL.to_owned(), options.accel.clone());
    for name in tests.tools() {
        let path = find_on_path(&name).ok_or_else(|| {
            Error::Kernel(format!(
                "tool {name:?} needed by the smoke tests is not on the host's PATH \
                 (or in /usr/sbin, /sbin); install it"
            ))
        })?;
        tools.insert(name, path);
    }
    let kernels = pins
        .iter()
        .map(|pin| run_kernel(pin, cache, tests, &tools, options))
        .collect::<Vec<_>>();
    Ok(Report {
        passed: kernels.iter().all(KernelReport::passed),
        ms: millis(started.elapsed()),
        accelerators: tests.tests.iter().map(|t| t.name.clone()).collect(),
        kernels,
    })
}

fn run_kernel(
    pin: &KernelPin,
    cache: &Cache,
    tests: &SmokeTests,
    tools: &Tools,
    options: &RunOptions,
) -> KernelReport {
    let started = Instant::now();
    let mut report = KernelReport {
        kernel: pin.name.clone(),
        release: None,
        accel: None,
        minimal_boot_ms: None,
        boot_ms: None,
        ms: 0,
        console: None,
        error: None,
        results: Vec::new(),
    };
    if let Err(e) = boot_and_test(pin, cache, tests, tools, options, &mut report) {
        eprintln!("lab-vm matrix: kernel {}: {e}", pin.name);
        report.error = Some(e.to_string());
    }
    // Smoke tests that never ran (the kernel failed first) are errors pointing at the kernel.
    for test in &tests.tests[report.results.len()..] {
        report.results.push(AcceleratorResult {
            accelerator: test.name.clone(),
            outcome: Outcome::Error(format!("not run: kernel {} failed first", pin.name)),
            ms: 0,
        });
    }
    report.ms = millis(started.elapsed());
    report
}

fn boot_and_test(
    pin: &KernelPin,
    cache: &Cache,
    tests: &SmokeTests,
    tools: &Tools,
    options: &RunOptions,
    report: &mut KernelReport,
) -> Result<()> {
    let kernel = cache.fetch(pin)?;
    report.release = Some(kernel.release.clone());
    let dir = tempfile::Builder::new()
        .prefix("lab-vm-matrix-")
        .tempdir()
        .map_err(io_err("creating a temporary directory for the image"))?;
    let minimal = dir.path().join("minimal.cpio");
    initramfs::build(&kernel, &InitramfsSpec::minimal(), &minimal)?;
    let config = VmConfig {
        memory_mib: options.memory_mib,
        console_log: Some(
            options
                .out
                .join(format!("console-{}-minimal.log", pin.name)),
        ),
        boot_timeout: options.boot_timeout,
        ..VmConfig::new(&kernel.vmlinux, &minimal)
    };
    let vm = Vm::boot(&config)?;
    report.minimal_boot_ms = Some(millis(vm.ready_after()));
    eprintln!(
        "lab-vm matrix: kernel {} ({}) minimal image ready after {} ms",
        pin.name,
        kernel.release,
        vm.ready_after().as_millis()
    );
    vm.power_off(Duration::from_secs(10))?;
    let image = dir.path().join("initramfs.cpio");
    let mut modules: Vec<String> = AGENT_MODULES.iter().map(|m| (*m).to_owned()).collect();
    for module in tests.modules() {
        if !modules.contains(&module) {
            modules.push(module);
        }
    }
    let spec = InitramfsSpec {
        modules,
        extra_binaries: tools.values().cloned().collect(),
        ..InitramfsSpec::default()
    };
    initramfs::build(&kernel, &spec, &image)?;
    let console = options.out.join(format!("console-{}.log", pin.name));
    report.console = Some(console.clone());
    let config = VmConfig {
        cpus: options.cpus,
        memory_mib: options.memory_mib,
        console_log: Some(console),
        boot_timeout: options.boot_timeout,
        ..VmConfig::new(&kernel.vmlinux, &image)
    };
    let mut vm = Vm::boot(&config)?;
    report.accel = Some(format!("{:?}", vm.accel()).to_lowercase());
    report.boot_ms = Some(millis(vm.ready_after()));
    eprintln!(
        "lab-vm matrix: kernel {} ({}) ready after {} ms",
        pin.name,
        kernel.release,
        vm.ready_after().as_millis()
    );
    let mut splat_seen = false;
    for test in &tests.tests {
        let started = Instant::now();
        if let Some(why) = test
            .min_kernel
            .as_ref()
            .and_then(|m| m.excludes(&kernel.release))
        {
            eprintln!(
                "lab-vm matrix: kernel {}: {}: n/a, {why}",
                pin.name, test.name
            );
            report.results.push(AcceleratorResult {
                accelerator: test.name.clone(),
                outcome: Outcome::Unsupported(why),
                ms: 0,
            });
            continue;
        }
        let mut outcome = test.run(&mut vm, tools, options.step_timeout);
        if !splat_seen && let Err(splat @ Error::Splat { .. }) = scan_console(vm.console()) {
            splat_seen = true;
            outcome = Outcome::Fail(match outcome {
                Outcome::Pass | Outcome::Unsupported(_) => splat.to_string(),
                Outcome::Fail(why) | Outcome::Error(why) => format!("{splat}; and {why}"),
            });
        }
        let ms = millis(started.elapsed());
        eprintln!(
            "lab-vm matrix: kernel {}: {}: {} ({ms} ms)",
            pin.name,
            test.name,
            cell(&outcome)
        );
        report.results.push(AcceleratorResult {
            accelerator: test.name.clone(),
            outcome,
            ms,
        });
    }
    match vm.power_off(Duration::from_secs(10)) {
        Err(Error::Splat { .. }) if splat_seen => Ok(()),
        other => other,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `name` in `$PATH`, `/usr/sbin` or `/sbin`, as an executable file.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| {
            rustix::fs::access(candidate, rustix::fs::Access::EXEC_OK).is_ok()
                && candidate.is_file()
        })
}

/// Builds the release `accel` binary of this workspace (`cargo build --release -p accel`)
/// and returns its path.
///
/// # Errors
/// Cargo cannot be started or fails, or reports no `accel` executable.
pub fn build_accel() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let command = format!(
        "cargo build --release -p accel --manifest-path {}",
        manifest.display()
    );
    eprintln!("lab-vm matrix: {command}");
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "accel",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(io_err(format!("starting {command}")))?;
    if !out.status.success() {
        return Err(Error::Tool {
            command,
            detail: format!("{} (its errors are above)", out.status),
        });
    }
    executable_from_messages(&String::from_utf8_lossy(&out.stdout), ACCEL_TOOL).ok_or_else(|| {
        Error::Tool {
            command,
            detail: "it reported no executable named accel".into(),
        }
    })
}

/// The executable of binary target `bin` in cargo's `--message-format=json` output.
fn executable_from_messages(messages: &str, bin: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == bin
                && m["target"]["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == "bin"))
        })
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// The table cell for an outcome.
fn cell(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "pass",
        Outcome::Fail(_) => "**FAIL**",
        Outcome::Error(_) => "**ERROR**",
        Outcome::Unsupported(_) => "n/a",
    }
}

impl Report {
    /// The program × kernel table and, below it, the details of every failure.
    pub fn markdown(&self) -> String {
        let mut md = String::from("# Accelerator × kernel matrix\n\n|  |");
        for k in &self.kernels {
            let _ = write!(md, " {} |", k.kernel);
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(self.kernels.len()));
        let mut row = |name: &str, cells: &mut dyn Iterator<Item = String>| {
            let _ = write!(md, "\n| {name} |");
            for c in cells {
                let _ = write!(md, " {} |", c.replace('|', "\\|"));
            }
        };
        row(
            "release",
            &mut self
                .kernels
                .iter()
                .map(|k| k.release.clone().unwrap_or_else(|| "—".into())),
        );
        row(
            "boot, minimal image",
            &mut self
                .kernels
                .iter()
                .map(|k| match (k.minimal_boot_ms, &k.accel) {
                    (Some(ms), Some(accel)) => {
                        let over = if u128::from(ms) > BOOT_GOAL.as_millis() {
                            format!(" **> {} s**", BOOT_GOAL.as_secs())
                        } else {
                            String::new()
                        };
                        format!("{:.1} s ({accel}){over}", ms as f64 / 1000.0)
                    }
                    _ => "—".into(),
                }),
        );
        row(
            "boot, smoke image",
            &mut self.kernels.iter().map(|k| match k.boot_ms {
                Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
                None => "—".into(),
            }),
        );
        for (i, accelerator) in self.accelerators.iter().enumerate() {
            row(
                accelerator,
                &mut self.kernels.iter().map(|k| {
                    k.results
                        .get(i)
                        .map_or("**ERROR**", |r| cell(&r.outcome))
                        .to_owned()
                }),
            );
        }
        row(
            "kernel (boot, console)",
            &mut self.kernels.iter().map(|k| {
                if k.error.is_some() {
                    "**ERROR**".into()
                } else {
                    "clean".into()
                }
            }),
        );
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        let _ = write!(
            md,
            "\n\n**{verdict}**: {} accelerator(s) × {} kernel(s) in {:.1} s.\n",
            self.accelerators.len(),
            self.kernels.len(),
            self.ms as f64 / 1000.0
        );
        let mut details = String::new();
        for k in &self.kernels {
            if let Some(error) = &k.error {
                detail(&mut details, &format!("kernel {}: error", k.kernel), error);
            }
            for r in &k.results {
                let (what, text) = match &r.outcome {
                    Outcome::Pass => continue,
                    Outcome::Fail(text) => ("fail", text),
                    Outcome::Error(text) => ("error", text),
                    Outcome::Unsupported(text) => ("not applicable", text),
                };
                let title = format!("{} on {}: {what}", r.accelerator, k.kernel);
                detail(&mut details, &title, text);
            }
        }
        if !details.is_empty() {
            md.push_str("\n## Details (failures, and why a cell is n/a)\n");
            md.push_str(&details);
        }
        md
    }

    /// `matrix.json`: this report, pretty-printed.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes (plain data)")
    }

    /// Writes `matrix.md` and `matrix.json` into `dir`.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn write(&self, dir: &Path) -> Result<()> {
        for (name, text) in [("matrix.md", self.markdown()), ("matrix.json", self.json())] {
            let path = dir.join(name);
            fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
        }
        Ok(())
    }
}

/// Appends a `### title` section with `text` in a code block.
fn detail(out: &mut String, title: &str, text: &str) {
    let _ = write!(out, "\n### {title}\n\n```text\n{}\n```\n", text.trim_end());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(accelerator: &str, outcome: Outcome) -> AcceleratorResult {
        AcceleratorResult {
            accelerator: accelerator.into(),
            outcome,
            ms: 1200,
        }
    }

    fn kernel(name: &str, results: Vec<AcceleratorResult>) -> KernelReport {
        KernelReport {
            kernel: name.into(),
            release: Some(format!("{name}.0-1-amd64")),
            accel: Some("tcg".into()),
            minimal_boot_ms: Some(1987),
            boot_ms: Some(2345),
            ms: 9000,
            console: Some(PathBuf::from(format!("/out/console-{name}.log"))),
            error: None,
            results,
        }
    }

    fn report(kernels: Vec<KernelReport>) -> Report {
        Report {
            passed: kernels.iter().all(KernelReport::passed),
            ms: 61_500,
            accelerators: vec!["monitor".into(), "http_filter".into()],
            kernels,
        }
    }

    fn mixed() -> Report {
        let booted = kernel(
            "6.1",
            vec![
                result("monitor", Outcome::Pass),
                result(
                    "http_filter",
                    Outcome::Fail("step 9 `accel stats`: total.x is 0 | really".into()),
                ),
            ],
        );
        let failed_boot = KernelReport {
            release: None,
            accel: None,
            minimal_boot_ms: None,
            boot_ms: None,
            error: Some("QEMU exited (signal 9)\n--- last console lines ---\nPanic".into()),
            results: vec![
                result(
                    "monitor",
                    Outcome::Error("not run: kernel 7.3 failed first".into()),
                ),
                result(
                    "http_filter",
                    Outcome::Error("not run: kernel 7.3 failed first".into()),
                ),
            ],
            ..kernel("7.3", vec![])
        };
        report(vec![booted, failed_boot])
    }

    #[test]
    fn markdown_table_has_a_row_per_accelerator_and_a_column_per_kernel() {
        let md = mixed().markdown();
        let lines: Vec<&str> = md.lines().collect();
        let table: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with('|'))
            .collect();
        assert_eq!(
            table,
            [
                "|  | 6.1 | 7.3 |",
                "|---|---|---|",
                "| release | 6.1.0-1-amd64 | — |",
                "| boot, minimal image | 2.0 s (tcg) | — |",
                "| boot, smoke image | 2.3 s | — |",
                "| monitor | pass | **ERROR** |",
                "| http_filter | **FAIL** | **ERROR** |",
                "| kernel (boot, console) | clean | **ERROR** |",
            ]
        );
        assert!(
            md.contains("**FAIL**: 2 accelerator(s) × 2 kernel(s) in 61.5 s."),
            "{md}"
        );
        assert!(
            md.contains(
                "### http_filter on 6.1: fail\n\n```text\nstep 9 `accel stats`: total.x is 0 | really\n```"
            ),
            "{md}"
        );
        assert!(
            md.contains("### kernel 7.3: error\n\n```text\nQEMU exited (signal 9)\n--- last"),
            "{md}"
        );
        assert!(
            !md.contains("monitor on 6.1"),
            "passes have no details: {md}"
        );
    }

    #[test]
    fn a_clean_run_passes_without_a_problems_section() {
        let ok = report(vec![kernel(
            "6.12",
            vec![
                result("monitor", Outcome::Pass),
                result("http_filter", Outcome::Pass),
            ],
        )]);
        assert!(ok.passed);
        let md = ok.markdown();
        assert!(
            md.contains("**PASS**: 2 accelerator(s) × 1 kernel(s)"),
            "{md}"
        );
        assert!(!md.contains("## Details"), "{md}");
        assert!(md.contains("| kernel (boot, console) | clean |"), "{md}");
    }

    #[test]
    fn a_minimal_boot_over_the_goal_is_marked_but_does_not_fail_the_run() {
        let slow = KernelReport {
            minimal_boot_ms: Some(3001),
            ..kernel("7.3", vec![result("monitor", Outcome::Pass)])
        };
        let fast = kernel("6.1", vec![result("monitor", Outcome::Pass)]);
        let r = report(vec![fast, slow]);
        assert!(r.passed);
        assert!(
            r.markdown()
                .contains("| boot, minimal image | 2.0 s (tcg) | 3.0 s (tcg) **> 3 s** |"),
            "{}",
            r.markdown()
        );
    }

    #[test]
    fn a_splat_or_boot_error_fails_the_kernel_even_when_tests_pass() {
        let mut k = kernel("5.10", vec![result("monitor", Outcome::Pass)]);
        assert!(k.passed());
        k.error = Some("kernel splat in console-5.10.log:812: WARNING: at x".into());
        assert!(!k.passed());
        assert!(!report(vec![k]).passed);
    }

    #[test]
    fn json_has_status_detail_and_timings_per_cell() {
        let json: serde_json::Value = serde_json::from_str(&mixed().json()).unwrap();
        assert_eq!(json["passed"], false);
        assert_eq!(json["ms"], 61_500);
        assert_eq!(json["accelerators"][1], "http_filter");
        let k = &json["kernels"][0];
        assert_eq!(k["kernel"], "6.1");
        assert_eq!(k["boot_ms"], 2345);
        assert_eq!(k["minimal_boot_ms"], 1987);
        assert_eq!(k["console"], "/out/console-6.1.log");
        assert_eq!(k["error"], serde_json::Value::Null);
        assert_eq!(
            k["results"][0],
            serde_json::json!({"accelerator": "monitor", "status": "pass", "ms": 1200})
        );
        assert_eq!(k["results"][1]["status"], "fail");
        assert!(
            k["results"][1]["detail"]
                .as_str()
                .unwrap()
                .starts_with("step 9")
        );
        let failed = &json["kernels"][1];
        assert_eq!(failed["boot_ms"], serde_json::Value::Null);
        assert!(failed["error"].as_str().unwrap().contains("QEMU exited"));
        assert_eq!(failed["results"][0]["status"], "error");
    }

    #[test]
    fn writes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = mixed();
        r.write(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("matrix.md")).unwrap(),
            r.markdown()
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("matrix.json")).unwrap(),
            r.json()
        );
    }

    #[test]
    fn finds_the_accel_executable_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"accel","kind":["lib"]},"executable":null}
{"reason":"build-script-executed","package_id":"x"}
{"reason":"compiler-artifact","target":{"name":"accel","kind":["bin"]},"executable":"/t/release/accel"}
{"reason":"compiler-artifact","target":{"name":"lab","kind":["bin"]},"executable":"/t/release/lab"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_from_messages(messages, "accel"),
            Some(PathBuf::from("/t/release/accel"))
        );
        assert_eq!(executable_from_messages(messages, "accel-x"), None);
        assert_eq!(executable_from_messages("not json\n", "accel"), None);
    }

    #[test]
    fn finds_tools_on_the_path() {
        assert_eq!(find_on_path("sh").map(|p| p.is_file()), Some(true));
        assert_eq!(find_on_path("no-such-tool-lab-vm"), None);
    }
}
