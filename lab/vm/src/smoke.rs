//! Accelerator smoke tests as data (`vm-images/smoke.toml`): per accelerator the host tools it
//! needs, extra modules, and the commands to run in the guest with checks on their output.
//!
//! Checking a command's output is pure ([`Step::check`]); [`SmokeTest::run`] drives a [`Vm`].

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::vm::{CommandOutput, Vm};
use crate::{Error, Result, io_err};

/// The smoke tests shipped with this crate (`vm-images/smoke.toml`, embedded at build time).
pub const BUILTIN: &str = include_str!("../../../vm-images/smoke.toml");

/// The name steps use for the accelerator CLI under test; it is always shipped.
pub const ACCEL_TOOL: &str = "accel";

/// How much of a command's output an error message quotes.
const QUOTE_LIMIT: usize = 600;

/// All smoke tests, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeTests {
    /// The `[[accelerator]]` entries.
    #[serde(rename = "accelerator", default)]
    pub tests: Vec<SmokeTest>,
}

/// The smoke test of one accelerator.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeTest {
    /// The accelerator, e.g. `monitor`.
    pub name: String,
    /// Host programs the steps call by name (shipped into the image with their libraries).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Kernel modules to load at boot besides the image's defaults.
    #[serde(default)]
    pub modules: Vec<String>,
    /// The oldest kernel (`major.minor`) the accelerator supports, with the reason, e.g.
    /// `{ version = "5.18", reason = "bpf_xdp_load_bytes" }`; older kernels show `n/a`.
    pub min_kernel: Option<MinKernel>,
    /// Commands run in order; the first failing one ends the test.
    pub steps: Vec<Step>,
}

/// The oldest kernel an accelerator supports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinKernel {
    /// `major.minor`, e.g. `5.18`.
    pub version: String,
    /// What the accelerator needs that older kernels lack.
    pub reason: String,
}

impl MinKernel {
    /// Why the kernel with `release` (`uname -r`, e.g. `5.10.0-46-amd64`) cannot run the
    /// accelerator, or `None` when it can (or its version cannot be read).
    pub fn excludes(&self, release: &str) -> Option<String> {
        let needed = major_minor(&self.version)?;
        let running = major_minor(release)?;
        (running < needed).then(|| format!("needs Linux >= {} ({})", self.version, self.reason))
    }
}

/// The `(major, minor)` at the start of a kernel version string.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// One command of a smoke test and the checks on its output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The command and its arguments; the first word may name a tool.
    pub run: Vec<String>,
    /// JSON paths in standard output that must be numbers greater than zero.
    #[serde(default)]
    pub positive: Vec<String>,
    /// JSON paths in standard output that must not exist.
    #[serde(default)]
    pub absent: Vec<String>,
}

/// How a smoke test (or a kernel's run of it) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "lowercase")]
pub enum Outcome {
    /// Every step ran and every check held.
    Pass,
    /// A step failed or a check did not hold; says which and why.
    Fail(String),
    /// The test could not be run (image, boot or guest agent trouble).
    Error(String),
    /// The kernel is older than the accelerator supports (`min_kernel`): not run, not a
    /// failure.
    Unsupported(String),
}

impl Outcome {
    /// Whether the cell is fine: passed, or not applicable to this kernel.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Pass | Outcome::Unsupported(_))
    }
}

/// Guest paths of the shipped tools by name (`accel`, `ip`, ...).
pub type Tools = BTreeMap<String, PathBuf>;

impl SmokeTests {
    /// The smoke tests embedded in this crate.
    ///
    /// # Errors
    /// Only if the embedded file is invalid (a unit test guards against that).
    pub fn builtin() -> Result<SmokeTests> {
        SmokeTests::parse(BUILTIN, "vm-images/smoke.toml (built in)")
    }

    /// Reads and validates a smoke test file.
    ///
    /// # Errors
    /// I/O errors and everything [`SmokeTests::parse`] rejects.
    pub fn load(path: &Path) -> Result<SmokeTests> {
        let text =
            std::fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))?;
        SmokeTests::parse(&text, &path.display().to_string())
    }

    /// Parses and validates smoke test text; `origin` names it in errors.
    ///
    /// # Errors
    /// TOML syntax errors, unknown fields, no entries, duplicate names, empty steps or
    /// commands, tool names with a `/`, and malformed JSON paths.
    pub fn parse(text: &str, origin: &str) -> Result<SmokeTests> {
        let tests: SmokeTests =
            toml::from_str(text).map_err(|e| Error::Matrix(format!("{origin}: {e}")))?;
        tests.validate(origin)?;
        Ok(tests)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |what: String| Err(Error::Matrix(format!("{origin}: {what}")));
        if self.tests.is_empty() {
            return bad("no [[accelerator]] entries".into());
        }
        let mut names = HashSet::new();
        for test in &self.tests {
            let at = format!("accelerator {:?}", test.name);
            if test.name.is_empty() || test.name.contains(|c: char| c.is_whitespace()) {
                return bad(format!("{at}: name must be one non-empty word"));
            }
            if !names.insert(test.name.as_str()) {
                return bad(format!("{at}: defined twice"));
            }
            if let Some(min) = &test.min_kernel
                && major_minor(&min.version).is_none()
            {
                return bad(format!(
                    "{at}: min_kernel version {:?} is not major.minor",
                    min.version
                ));
            }
            if let Some(tool) = test
                .tools
                .iter()
                .find(|t| t.is_empty() || t.contains('/') || *t == ACCEL_TOOL)
            {
                return bad(format!(
                    "{at}: tool {tool:?} must be a program name without '/' (and {ACCEL_TOOL} \
                     is always shipped)"
                ));
            }
            if test.steps.is_empty() {
                return bad(format!("{at}: steps is empty"));
            }
            for (i, step) in test.steps.iter().enumerate() {
                let at = format!("{at}: step {}", i + 1);
                if step.run.first().is_none_or(String::is_empty) {
                    return bad(format!("{at}: run must start with a program"));
                }
                if let Some(path) = step
                    .positive
                    .iter()
                    .chain(&step.absent)
                    .find(|p| p.split('.').any(str::is_empty))
                {
                    return bad(format!("{at}: JSON path {path:?} has an empty segment"));
                }
            }
        }
        Ok(())
    }

    /// Names of all tools the tests need besides `accel`, without duplicates, in order.
    pub fn tools(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.tests
            .iter()
            .flat_map(|t| &t.tools)
            .filter(|t| seen.insert(t.as_str()))
            .cloned()
            .collect()
    }

    /// Names of all extra modules the tests need, without duplicates, in order.
    pub fn modules(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.tests
            .iter()
            .flat_map(|t| &t.modules)
            .filter(|m| seen.insert(m.as_str()))
            .cloned()
            .collect()
    }
}

impl SmokeTest {
    /// Runs the steps in `vm`, each with `timeout`, and stops at the first failure.
    pub fn run(&self, vm: &mut Vm, tools: &Tools, timeout: Duration) -> Outcome {
        for (i, step) in self.steps.iter().enumerate() {
            let argv = step.argv(tools);
            let shown = argv.join(" ");
            let started = Instant::now();
            let output = match vm.run(&argv, timeout) {
                Ok(output) => output,
                Err(e) => {
                    return Outcome::Error(format!("step {} `{shown}`: {e}", i + 1));
                }
            };
            if let Err(why) = step.check(&output) {
                return Outcome::Fail(format!(
                    "step {} `{shown}` ({} ms): {why}",
                    i + 1,
                    started.elapsed().as_millis()
                ));
            }
        }
        Outcome::Pass
    }
}

impl Step {
    /// The command line with a first word naming a shipped tool replaced by its guest path.
    pub fn argv(&self, tools: &Tools) -> Vec<String> {
        let mut argv = self.run.clone();
        if let Some(path) = argv.first().and_then(|program| tools.get(program)) {
            argv[0] = path.display().to_string();
        }
        argv
    }

    /// Checks a command's output: exit code 0, then the JSON checks on standard output.
    ///
    /// # Errors
    /// What did not hold, quoting the output.
    pub fn check(&self, output: &CommandOutput) -> Result<(), String> {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.exit_code != 0 {
            return Err(format!(
                "exit code {}; stderr: {}; stdout: {}",
                output.exit_code,
                quote(&stderr),
                quote(&stdout)
            ));
        }
        if self.positive.is_empty() && self.absent.is_empty() {
            return Ok(());
        }
        // The whole output, or else its last line (a command that reports progress first).
        let json: Value = serde_json::from_str(&stdout)
            .or_else(|e| {
                let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
                last.and_then(|l| serde_json::from_str(l).ok()).ok_or(e)
            })
            .map_err(|e| format!("stdout is not JSON ({e}): {}", quote(&stdout)))?;
        for path in &self.positive {
            match lookup(&json, path) {
                Some(v) if v.as_f64().is_some_and(|n| n > 0.0) => {}
                Some(v) => return Err(format!("{path} is {v}, expected > 0; stdout: {json}")),
                None => return Err(format!("{path} is missing; stdout: {json}")),
            }
        }
        for path in &self.absent {
            if let Some(v) = lookup(&json, path) {
                return Err(format!("{path} should be absent but is {v}"));
            }
        }
        Ok(())
    }
}

/// The value at a dot-separated path of object keys and array indexes.
fn lookup<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(json, |value, segment| match value {
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
            Value::Object(map) => map.get(segment),
            _ => None,
        })
}

/// Trimmed text, cut to [`QUOTE_LIMIT`] characters, or `(empty)`.
fn quote(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".into();
    }
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_kernel_excludes_only_older_releases() {
        let min = MinKernel {
            version: "5.18".into(),
            reason: "bpf_xdp_load_bytes".into(),
        };
        let why = min.excludes("5.10.0-46-amd64").expect("5.10 is older");
        assert!(
            why.contains(">= 5.18") && why.contains("bpf_xdp_load_bytes"),
            "{why}"
        );
        assert_eq!(min.excludes("5.18.0"), None);
        assert_eq!(min.excludes("6.1.0-56-amd64"), None);
        assert_eq!(min.excludes("6.12.118+deb13-amd64"), None);
        assert_eq!(min.excludes("7.3.4+deb13-amd64"), None);
        assert!(Outcome::Unsupported(why).passed());
        let bad = "[[accelerator]]\nname = \"x\"\nmin_kernel = { version = \"new\", reason = \"r\" }\nsteps = [{ run = [\"true\"] }]\n";
        let err = SmokeTests::parse(bad, "t.toml").expect_err("bad version");
        assert!(err.to_string().contains("not major.minor"), "{err}");
    }

    fn output(exit_code: i32, stdout: &str, stderr: &str) -> CommandOutput {
        CommandOutput {
            exit_code,
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    fn step(positive: &[&str], absent: &[&str]) -> Step {
        Step {
            run: vec!["accel".into(), "monitor".into(), "stats".into()],
            positive: positive.iter().map(|s| (*s).to_owned()).collect(),
            absent: absent.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    const STATS: &str = r#"{"iface":"smkmon0","per_cpu":[{"cpu":0,"xdp_frames":3,"xdp_bytes":294,"netif_receive_skb":0},{"cpu":1,"xdp_frames":0,"xdp_bytes":0,"netif_receive_skb":9}],"total":{"xdp_frames":3,"xdp_bytes":294,"netif_receive_skb":9}}"#;

    #[test]
    fn builtin_smoke_tests_are_valid_and_cover_the_monitor() {
        let tests = SmokeTests::builtin().unwrap();
        let monitor = tests.tests.iter().find(|t| t.name == "monitor").unwrap();
        assert!(monitor.steps.iter().any(|s| !s.positive.is_empty()));
        assert!(monitor.steps.iter().any(|s| !s.absent.is_empty()));
        assert!(tests.tools().contains(&"ip".to_owned()));
    }

    #[test]
    fn every_accelerator_with_an_interface_is_in_the_matrix() {
        let tests = SmokeTests::builtin().unwrap();
        let names: Vec<&str> = tests.tests.iter().map(|t| t.name.as_str()).collect();
        for name in ["monitor", "http_filter", "cpu_balance"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let balance = tests
            .tests
            .iter()
            .find(|t| t.name == "cpu_balance")
            .unwrap();
        let min = balance.min_kernel.as_ref().unwrap();
        assert!(min.excludes("5.4.0").is_some() && min.excludes("5.10.0-46-amd64").is_none());
        assert!(
            balance
                .steps
                .iter()
                .any(|s| s.run.iter().any(|w| w == "weights")),
            "the live weight change is smoke-tested"
        );
    }

    #[test]
    fn positive_checks_pass_on_counts_and_fail_on_zero_or_missing() {
        assert_eq!(
            step(&["total.xdp_frames", "per_cpu.1.netif_receive_skb"], &[])
                .check(&output(0, STATS, "")),
            Ok(())
        );
        let e = step(&["per_cpu.0.netif_receive_skb"], &[])
            .check(&output(0, STATS, ""))
            .unwrap_err();
        assert!(
            e.starts_with("per_cpu.0.netif_receive_skb is 0, expected > 0"),
            "{e}"
        );
        let e = step(&["total.redirects"], &[])
            .check(&output(0, STATS, ""))
            .unwrap_err();
        assert!(e.starts_with("total.redirects is missing"), "{e}");
        let e = step(&["iface"], &[])
            .check(&output(0, STATS, ""))
            .unwrap_err();
        assert!(e.starts_with("iface is \"smkmon0\", expected > 0"), "{e}");
    }

    #[test]
    fn absent_checks_see_attached_xdp_in_ip_link_json() {
        let attached = r#"[{"ifindex":5,"ifname":"smkmon0","xdp":{"mode":1,"prog":{"id":12}}}]"#;
        let detached = r#"[{"ifindex":5,"ifname":"smkmon0","flags":["UP"]}]"#;
        assert_eq!(
            step(&[], &["0.xdp"]).check(&output(0, detached, "")),
            Ok(())
        );
        let e = step(&[], &["0.xdp"])
            .check(&output(0, attached, ""))
            .unwrap_err();
        assert!(
            e.contains("0.xdp should be absent") && e.contains("\"id\":12"),
            "{e}"
        );
    }

    #[test]
    fn exit_codes_and_non_json_output_fail_with_the_output_quoted() {
        let e = step(&[], &[])
            .check(&output(1, "", "accel: error: no monitor on smkmon0\n"))
            .unwrap_err();
        assert_eq!(
            e,
            "exit code 1; stderr: accel: error: no monitor on smkmon0; stdout: (empty)"
        );
        assert_eq!(step(&[], &[]).check(&output(0, "anything", "")), Ok(()));
        let e = step(&["total.xdp_frames"], &[])
            .check(&output(0, "monitor on smkmon0", ""))
            .unwrap_err();
        assert!(
            e.starts_with("stdout is not JSON") && e.ends_with("monitor on smkmon0"),
            "{e}"
        );
        // A progress line before the JSON: the last line is checked.
        let progress = format!("afxdp echo on smkax1: copy mode\n{STATS}\n");
        assert_eq!(
            step(&["total.xdp_frames"], &[]).check(&output(0, &progress, "")),
            Ok(())
        );
        let long = "x".repeat(2 * QUOTE_LIMIT);
        let e = step(&[], &[]).check(&output(2, &long, "")).unwrap_err();
        assert!(e.ends_with('…') && e.len() < long.len(), "{e}");
    }

    #[test]
    fn tools_are_called_by_their_guest_path() {
        let tools: Tools = [
            ("accel".to_owned(), PathBuf::from("/opt/t/accel")),
            ("ip".to_owned(), PathBuf::from("/usr/sbin/ip")),
        ]
        .into();
        assert_eq!(
            step(&[], &[]).argv(&tools),
            ["/opt/t/accel", "monitor", "stats"]
        );
        let ping = Step {
            run: vec!["ping".into(), "ip".into()],
            ..step(&[], &[])
        };
        assert_eq!(ping.argv(&tools), ["ping", "ip"]);
    }

    #[test]
    fn rejects_bad_files_with_clear_errors() {
        let one = "[[accelerator]]\nname = \"monitor\"\ntools = [\"ip\"]\nsteps = [{ run = [\"ip\", \"link\"] }]\n";
        let tests = SmokeTests::parse(&format!("{one}modules = [\"veth\"]"), "s.toml").unwrap();
        assert_eq!(tests.modules(), ["veth"]);
        let err = |text: &str| SmokeTests::parse(text, "s.toml").unwrap_err().to_string();
        assert!(err("").contains("s.toml: no [[accelerator]] entries"));
        assert!(err(&format!("{one}{one}")).contains("accelerator \"monitor\": defined twice"));
        let e = err(&one.replace("\"ip\"]\n", "\"/usr/sbin/ip\"]\n"));
        assert!(e.contains("tool \"/usr/sbin/ip\""), "{e}");
        let e = err(&one.replace("\"ip\"]\n", "\"accel\"]\n"));
        assert!(e.contains("tool \"accel\""), "{e}");
        let e = err(&one.replace("[\"ip\", \"link\"]", "[]"));
        assert!(e.contains("step 1: run must start with a program"), "{e}");
        let e = err(&one.replace("}]", ", positive = [\"total..x\"] }]"));
        assert!(e.contains("step 1: JSON path \"total..x\""), "{e}");
        let e = err(&one.replace("run =", "exec ="));
        assert!(e.contains("unknown field") && e.contains("exec"), "{e}");
        let e = err("[[accelerator]]\nname = \"x\"\nsteps = []\n");
        assert!(e.contains("accelerator \"x\": steps is empty"), "{e}");
    }
}
