//! `lab run`: a scenario from file to report.
//!
//! 1. Check what the scenario needs against this machine ([`problems`]): netem for impaired
//!    links, variants and events, CPUs for pinning, the programs of deployed services, a
//!    DisGraFS server on the node HTTP workloads talk to. Anything missing refuses the run
//!    before anything is created.
//! 2. Plan the scenario's topology under the scenario's name (the lab is called like the
//!    scenario) and bring it up; a guard takes it down again however the run ends. Start the
//!    `[deploy]` services ([`crate::deploy`]), each checked before the next (those of a node
//!    that a variant puts the socket redirect on in a cgroup of that node).
//! 3. Warm up: every workload runs, unmeasured, for the scenario's `warmup`.
//! 4. For each run of the seeded schedule ([`crate::scenario::schedule`]): put the links the
//!    scenario changes into the variant's state, attach its accelerators (from a thread inside
//!    the node's namespace; the socket redirect to a cgroup the whole runner joins and to the
//!    cgroup of the node's services, see `run/sock_redirect.rs`, which also says why the
//!    DisGraFS server is then restarted), read the counters, run every workload together over
//!    the window while a timer thread fires the events, read the counters again, detach.
//! 5. Stop the services and copy their logs into `OUT/services/`; build the [`Report`] from
//!    every run's metrics and write it with [`Env`] into the output directory; take the lab
//!    down.
//!
//! A stop request ([`Interrupt`], set by SIGINT or SIGTERM) ends the run after the window in
//! progress: the lab is taken down and the report written with `complete: false`. A failure
//! after the lab is up does the same, then returns the error.

mod balance;
mod preflight;
mod progress;
mod sock_redirect;
mod window;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

pub use preflight::{netem_available, netem_needs, problems};

use crate::apply;
use crate::measure::{CpuTimes, latency_cdf};
use crate::report::{Env, Report, VariantResults};
use crate::scenario::{AcceleratorKind, Scenario, Slot};
use crate::state::StateDir;
use crate::topology::{Plan, PlanOptions, Prefix, Step};
use progress::Progress;
use window::{Lab, Measured};

/// Points of each variant's latency CDF in the report.
const CDF_STEPS: u32 = 100;

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// The directory the report goes to (made if missing).
    pub out: PathBuf,
    /// Start of every kernel name of the lab.
    pub prefix: Prefix,
    /// Where the lab's state file is kept.
    pub states: StateDir,
    /// Draw a progress bar (stderr is a terminal) instead of log lines.
    pub progress_bar: bool,
}

/// Why a scenario did not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scenario needs something this machine lacks; nothing was created.
    #[error("scenario {scenario} cannot run on this machine (nothing was created):\n{}",
        .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Unsupported {
        /// The scenario's name.
        scenario: String,
        /// What it needs, one sentence each.
        problems: Vec<String>,
    },
    /// The lab could not be brought up (or collides with one that is up).
    #[error("bringing lab {lab} up: {source}")]
    Up {
        /// The lab.
        lab: String,
        /// What failed.
        source: Box<apply::Error>,
    },
    /// A step of the run failed after the lab was up; the lab was taken down and a partial
    /// report written.
    #[error("{during}: {message}{}", .report.as_ref().map_or(String::new(),
        |dir| format!(" (partial report in {})", dir.display())))]
    Run {
        /// What was going on (warm-up, or which repetition and variant).
        during: String,
        /// What went wrong.
        message: String,
        /// The directory holding the partial report, if it could be written.
        report: Option<PathBuf>,
    },
    /// The report could not be written.
    #[error("writing the report into {}: {source}", .dir.display())]
    Report {
        /// The output directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The lab could not be taken down completely.
    #[error("taking lab {lab} down: {source} (`lab down {lab}` retries)")]
    Down {
        /// The lab.
        lab: String,
        /// What failed.
        source: Box<apply::Error>,
    },
}

/// A stop request: the number of the signal that asked to stop, 0 while none did.
#[derive(Debug, Default)]
pub struct Interrupt(AtomicI32);

impl Interrupt {
    /// No stop requested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests a stop, as signal `signal` would.
    pub fn request(&self, signal: i32) -> bool {
        self.0
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// The signal that requested a stop, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    /// Installs SIGINT and SIGTERM handlers on `runtime`: the first signal requests a stop
    /// (the run ends after the window in progress, tears the lab down and writes a partial
    /// report); a second one exits at once with status 128 + signal, leaving `lab` up for
    /// `lab down`.
    pub fn on_signals(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        lab: &str,
    ) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = runtime.enter();
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let (this, lab) = (self.clone(), lab.to_owned());
        runtime.spawn(async move {
            loop {
                let number = tokio::select! {
                    _ = interrupt.recv() => libc::SIGINT,
                    _ = terminate.recv() => libc::SIGTERM,
                };
                if this.request(number) {
                    eprintln!(
                        "lab run: stopping after the window in progress, then taking lab {lab} \
                         down (signal again to exit at once)"
                    );
                } else {
                    eprintln!("lab run: exiting at once; `lab down {lab}` removes the lab");
                    std::process::exit(128 + number);
                }
            }
        });
        Ok(())
    }
}

/// Takes the lab down when dropped, unless [`Teardown::now`] did already.
struct Teardown<'a> {
    runtime: &'a tokio::runtime::Handle,
    plan: &'a Plan,
    states: &'a StateDir,
    armed: bool,
}

impl Teardown<'_> {
    fn now(mut self) -> Result<(), Error> {
        self.armed = false;
        self.down().map_err(|source| Error::Down {
            lab: self.plan.lab.clone(),
            source: Box::new(source),
        })
    }

    fn down(&self) -> Result<(), apply::Error> {
        self.runtime
            .block_on(apply::down(
                &self.plan.prefix,
                Some(&self.plan.lab),
                self.states,
            ))
            .map(drop)
    }
}

impl Drop for Teardown<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.down()
        {
            eprintln!(
                "error: taking lab {} down: {e} (`lab down {}` retries)",
                self.plan.lab, self.plan.lab
            );
        }
    }
}

/// The plan of `scenario`'s topology for its run: the lab is named after the scenario.
pub fn plan(scenario: &Scenario, prefix: &Prefix) -> Plan {
    let mut topology = scenario.topology.clone();
    topology.name.value = scenario.name.value.clone();
    Plan::new(
        &topology,
        &PlanOptions {
            prefix: prefix.clone(),
            ..PlanOptions::default()
        },
    )
}

/// Runs `scenario`, read from `file`, and writes its report into `options.out` (see the
/// module's documentation). Returns the report, with `complete: false` when `interrupt`
/// stopped it early. `runtime` drives the lab's netlink work; call this from outside it.
pub fn run(
    scenario: &Scenario,
    file: &Path,
    options: &Options,
    runtime: &tokio::runtime::Handle,
    interrupt: &Interrupt,
) -> Result<Report, Error> {
    let cpus = CpuTimes::read().map_or_else(
        |_| std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t.cpus.len(),
    );
    let problems = problems(scenario, || netem_available(runtime), cpus);
    if !problems.is_empty() {
        return Err(Error::Unsupported {
            scenario: scenario.name.value.clone(),
            problems,
        });
    }
    let plan = plan(scenario, &options.prefix);
    let slots = scenario.schedule();
    let progress = Progress::new(slots.len(), options.progress_bar);
    progress.phase(&format!(
        "bringing lab {} up ({} steps)",
        plan.lab,
        plan.steps.len()
    ));
    runtime
        .block_on(apply::up(
            &plan,
            file,
            &options.states,
            &indicatif::ProgressBar::hidden(),
        ))
        .map_err(|source| Error::Up {
            lab: plan.lab.clone(),
            source: Box::new(source),
        })?;
    let teardown = Teardown {
        runtime,
        plan: &plan,
        states: &options.states,
        armed: true,
    };
    let mut results = Results::new(scenario);
    let deployed = if scenario.deploy.is_empty() {
        Ok(None)
    } else {
        progress.phase("starting the services of [deploy]");
        crate::deploy::start(
            &scenario.deploy,
            &scenario.topology,
            &plan,
            &options.states,
            runtime,
            &redirected_service_nodes(scenario),
        )
        .map(Some)
        .map_err(|e| ("starting the services".to_owned(), e.to_string()))
    };
    let mut failure = match deployed {
        Ok(deployed) => {
            let vm_dir = options.states.vm_dir(&plan.prefix, &plan.lab);
            match Lab::new(
                scenario,
                &plan,
                runtime,
                cpus,
                deployed,
                &options.states,
                &vm_dir,
            ) {
                Ok(lab) => measure_all(scenario, &lab, &slots, interrupt, &progress, &mut results),
                Err(e) => Some(("preparing the runs".to_owned(), e)),
            }
        }
        Err(e) => Some(e),
    };
    progress.finish();
    if let Err(e) = stop_services(&plan, &options.states, &options.out) {
        failure = failure.or(Some(("stopping the services".to_owned(), e)));
    }
    let complete = failure.is_none() && results.done.len() == slots.len();
    if let Some(signal) = interrupt.signal()
        && !complete
    {
        eprintln!(
            "lab run: stopped by signal {signal} after {} of {} runs",
            results.done.len(),
            slots.len()
        );
    }
    let report = results.report(scenario, complete);
    let text = std::fs::read(file).unwrap_or_default();
    let dir = file.parent().unwrap_or(Path::new("."));
    let written = report
        .write(&env(&text, dir, scenario.seed, &plan), &options.out)
        .map_err(|source| Error::Report {
            dir: options.out.clone(),
            source,
        });
    let down = teardown.now();
    if let Some((during, message)) = failure {
        return Err(Error::Run {
            during,
            message,
            report: written.is_ok().then(|| options.out.clone()),
        });
    }
    written?;
    down?;
    Ok(report)
}

/// This machine's [`Env`], with the kernel of each VM node of `plan`.
fn env(scenario: &[u8], dir: &Path, seed: u64, plan: &Plan) -> Env {
    let mut env = Env::collect(scenario, dir, seed);
    let matrix = lab_vm::Matrix::builtin().ok();
    for step in &plan.steps {
        if let Step::StartVm(spec) = step {
            let release = matrix
                .as_ref()
                .and_then(|m| m.kernel(&spec.kernel).ok())
                .map_or_else(String::new, |pin| format!(" ({})", pin.release));
            env.vm_kernels
                .insert(spec.node.clone(), format!("{}{release}", spec.kernel));
        }
    }
    env
}

/// The nodes that run deployed services and that a variant puts the socket redirect on: their
/// services get a cgroup of their own (see `run/sock_redirect.rs`).
fn redirected_service_nodes(scenario: &Scenario) -> Vec<&str> {
    scenario
        .deploy
        .iter()
        .map(|d| d.node.value.as_str())
        .filter(|&node| {
            scenario
                .variants
                .iter()
                .flat_map(|v| &v.accelerators)
                .any(|a| {
                    a.node.value == node && matches!(a.kind, AcceleratorKind::SockRedirect { .. })
                })
        })
        .collect()
}

/// Stops the lab's services (if any were started), copying their logs into `OUT/services/`.
fn stop_services(plan: &Plan, states: &StateDir, out: &Path) -> Result<(), String> {
    crate::deploy::stop_recorded(states, &plan.prefix, &plan.lab, Some(&out.join("services")))
        .map_err(|e| e.to_string())
}

/// Warms up, then measures the runs of `slots` in order until all are done, `interrupt`
/// asks to stop, or one fails: returns what failed, and when.
fn measure_all(
    scenario: &Scenario,
    lab: &Lab<'_>,
    slots: &[Slot],
    interrupt: &Interrupt,
    progress: &Progress,
    results: &mut Results,
) -> Option<(String, String)> {
    if scenario.warmup.0 > 0 && interrupt.signal().is_none() {
        progress.phase(&format!("warming up for {}", scenario.warmup));
        if let Err(e) = lab.warm_up(Duration::from_nanos(scenario.warmup.0)) {
            return Some(("warm-up".to_owned(), e));
        }
    }
    for (index, slot) in slots.iter().enumerate() {
        if interrupt.signal().is_some() {
            progress.note("stopped: taking the lab down and writing a partial report");
            return None;
        }
        let variant = &scenario.variants[slot.variant];
        let during = format!(
            "repetition {} of {}, variant `{}`",
            slot.repetition + 1,
            scenario.repetitions,
            variant.name.value
        );
        progress.running(&during);
        match lab.measure(variant) {
            Ok(measured) => {
                progress.done(index, &format!("{during}: {}", measured.summary));
                results.add(*slot, measured);
            }
            Err(e) => return Some((during, e)),
        }
    }
    None
}

/// One variant's runs so far.
#[derive(Default)]
struct VariantRuns {
    /// Metrics of each run.
    metrics: Vec<BTreeMap<String, f64>>,
    /// Busy share of each CPU in each run.
    busy: Vec<Vec<f64>>,
    /// Each CPU's share of the monitored packets in each run that had a monitor.
    packets: Vec<Vec<f64>>,
    /// Each CPU's NET_RX softirq share of each run that had a monitor.
    softirq: Vec<Vec<f64>>,
    /// Latencies of all runs together.
    latency: Option<Histogram<u64>>,
}

/// Every run's measurements so far.
struct Results {
    /// Per variant, in the scenario's order.
    variants: Vec<VariantRuns>,
    /// The runs measured, in order.
    done: Vec<Slot>,
}

impl Results {
    fn new(scenario: &Scenario) -> Self {
        Self {
            variants: scenario
                .variants
                .iter()
                .map(|_| VariantRuns::default())
                .collect(),
            done: Vec::new(),
        }
    }

    fn add(&mut self, slot: Slot, measured: Measured) {
        let runs = &mut self.variants[slot.variant];
        runs.metrics.push(measured.metrics);
        runs.busy.push(measured.cpu_busy);
        if !measured.cpu_packets.is_empty() {
            runs.packets.push(measured.cpu_packets);
        }
        if !measured.cpu_softirq.is_empty() {
            runs.softirq.push(measured.cpu_softirq);
        }
        if let Some(h) = measured.latency {
            match &mut runs.latency {
                // Histograms of one workload have the same bounds: adding cannot fail.
                Some(all) => drop(all.add(&h)),
                None => runs.latency = Some(h),
            }
        }
        self.done.push(slot);
    }

    fn report(&self, scenario: &Scenario, complete: bool) -> Report {
        let variants = scenario
            .variants
            .iter()
            .zip(&self.variants)
            .map(|(variant, runs)| VariantResults {
                name: variant.name.value.clone(),
                repetitions: runs.metrics.clone(),
                latency_cdf: runs
                    .latency
                    .as_ref()
                    .map_or_else(Vec::new, |h| latency_cdf(h, CDF_STEPS)),
                cpu_busy: mean_shares(&runs.busy),
                cpu_packets: mean_shares(&runs.packets),
                cpu_softirq: mean_shares(&runs.softirq),
            })
            .collect();
        let mut report = Report::new(&scenario.name.value, scenario.seed, complete, variants);
        report.schedule = self.done.clone();
        report
    }
}

/// The mean busy share of each CPU over runs.
fn mean_shares(runs: &[Vec<f64>]) -> Vec<f64> {
    let cpus = runs.iter().map(Vec::len).max().unwrap_or(0);
    (0..cpus)
        .map(|cpu| {
            let values: Vec<f64> = runs.iter().filter_map(|r| r.get(cpu).copied()).collect();
            crate::measure::mean(&values).unwrap_or(0.0)
        })
        .collect()
}
