//! The `lab` command: builds and inspects network labs from topology files.

use std::io::{IsTerminal as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use lab::apply::{self, LinkChange};
use lab::node::{NetnsNode, Node, vm::VmNode};
use lab::run;
use lab::state::{DEFAULT_STATE_DIR, LabState, StateDir};
use lab::topology::{self, Impairment, LoadError, Plan, PlanOptions, Prefix, Step};
use miette::GraphicalReportHandler;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure while running (a kernel operation failed; what was made is removed again)
  2  invalid input: bad arguments, or an invalid topology or scenario file (every problem
     is printed)
  3  conflict: the lab, or one using the same names or addresses, is already up
  4  (run) the scenario needs something this machine lacks, e.g. netem; nothing was created
  130, 143  (run) stopped by SIGINT or SIGTERM: the lab was taken down and a partial report
     (complete: false) written";

/// Exit code for failures while running.
const FAILURE: u8 = 1;
/// Exit code for invalid input.
const INVALID: u8 = 2;
/// Exit code for a lab that collides with one that is up.
const CONFLICT: u8 = 3;
/// Exit code for a scenario this machine cannot run.
const UNSUPPORTED: u8 = 4;

#[derive(Debug, Parser)]
#[command(name = "lab", version, about = "Network labs for the DisGraFS eBPF Lab", after_help = EXIT_CODES)]
struct Cli {
    /// Where lab state files are kept.
    #[arg(long, global = true, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the resources that `lab up` would create for a topology, in order.
    #[command(after_help = EXIT_CODES)]
    Plan(PlanArgs),
    /// Create a lab: namespaces, veths, bridges, addresses, routes, impairments.
    #[command(after_help = EXIT_CODES)]
    Up(PlanArgs),
    /// Remove a lab (or every lab of the prefix), also after a crash.
    #[command(after_help = EXIT_CODES)]
    Down(DownArgs),
    /// Show the labs that are up.
    Status(StatusArgs),
    /// Run a command inside a node's network namespace (entered with setns: /sys and bpffs
    /// stay as they are).
    Exec(ExecArgs),
    /// Change a link of a lab that is up: impairments, or down/up (e.g. to simulate a flap).
    #[command(subcommand, after_help = EXIT_CODES)]
    Link(LinkCommand),
    /// Run a scenario: bring its lab up, measure every variant in the seeded order, write
    /// report.json, env.json, report.md and SVG plots into --out, take the lab down.
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// Print the ratios of report B against report A, per variant and metric, with 95 %
    /// bootstrap confidence intervals.
    Compare(CompareArgs),
    /// Images for the lab's nodes: VM kernels (`vm-images/kernels.toml`) and container images
    /// (built locally; no registry needed).
    #[command(subcommand)]
    Images(ImagesCommand),
    /// The server side of one workload, as `lab run` starts it in a VM guest: serves until
    /// its clients are done, then prints what it measured (JSON).
    #[command(hide = true)]
    WorkloadServer {
        /// The server (JSON, `lab::workloads::remote::ServerSpec`).
        spec: String,
    },
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// Download and unpack the pinned kernels (all, or the named ones) into the cache
    /// (`~/.cache/disgrafs-lab`, or `DISGRAFS_LAB_CACHE`); cached ones are reused.
    Fetch {
        /// Kernel name from vm-images/kernels.toml, e.g. 6.12 (repeatable; default: all).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
    },
    /// Build base, storage, server and tagger (or the ones named) unless their inputs are
    /// unchanged; tag each with the git revision and `latest`.
    Build {
        /// Images to build (default: all).
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LinkCommand {
    /// Replace the egress impairment of NODE:IFACE (netem); with no option, remove it.
    Set {
        #[command(flatten)]
        target: LinkTarget,
        /// Added delay, e.g. 5ms.
        #[arg(long)]
        delay: Option<topology::Nanos>,
        /// Delay variation, e.g. 100us.
        #[arg(long)]
        jitter: Option<topology::Nanos>,
        /// Loss, e.g. 1%.
        #[arg(long)]
        loss: Option<topology::Percent>,
        /// Duplication, e.g. 0.1%.
        #[arg(long)]
        duplicate: Option<topology::Percent>,
        /// Reordering (needs a delay), e.g. 5%.
        #[arg(long)]
        reorder: Option<topology::Percent>,
        /// Corruption, e.g. 0.01%.
        #[arg(long)]
        corrupt: Option<topology::Percent>,
        /// Rate limit, e.g. 100mbit.
        #[arg(long)]
        rate: Option<topology::Rate>,
    },
    /// Set NODE:IFACE down.
    Down {
        #[command(flatten)]
        target: LinkTarget,
    },
    /// Set NODE:IFACE up.
    Up {
        #[command(flatten)]
        target: LinkTarget,
    },
}

#[derive(Debug, Args)]
struct LinkTarget {
    /// The interface, as NODE:IFACE from the topology file.
    endpoint: String,
    /// The lab (needed only when several are up).
    #[arg(long)]
    lab: Option<String>,
    /// Start of every kernel name.
    #[arg(long, default_value = "dgl", value_parser = Prefix::new)]
    prefix: Prefix,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Scenario file (TOML).
    file: PathBuf,
    /// Directory for the report (made if missing; existing report files are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Start of every kernel name.
    #[arg(long, default_value = "dgl", value_parser = Prefix::new)]
    prefix: Prefix,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Report A (the baseline): a `report.json` or the directory holding it.
    a: PathBuf,
    /// Report B.
    b: PathBuf,
}

#[derive(Debug, Args)]
struct DownArgs {
    /// The lab to remove.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    lab: Option<String>,
    /// Remove every lab of the prefix, and anything named like one.
    #[arg(long)]
    all: bool,
    /// Start of every kernel name.
    #[arg(long, default_value = "dgl", value_parser = Prefix::new)]
    prefix: Prefix,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Start of every kernel name.
    #[arg(long, default_value = "dgl", value_parser = Prefix::new)]
    prefix: Prefix,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// The lab (needed only when several are up).
    #[arg(long)]
    lab: Option<String>,
    /// Start of every kernel name.
    #[arg(long, default_value = "dgl", value_parser = Prefix::new)]
    prefix: Prefix,
    /// The node.
    node: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Topology file: TOML, or containerlab YAML (`.yml`, `.yaml`).
    file: PathBuf,
    /// Print the plan as JSON (the form saved in the lab's state file).
    #[arg(long)]
    json: bool,
    /// Start of every kernel name: 1 to 4 lowercase letters or digits, first a letter.
    #[arg(long, default_value = "dgl", value_parser = Prefix::new)]
    prefix: Prefix,
    /// Where the services of `[deploy]` run: in containers of the lab's images (the netns
    /// nodes that run them become containers), as processes in the nodes' namespaces, or
    /// (auto) in containers when an engine answers and the images are built.
    #[arg(long, value_enum, default_value_t = Services::Auto)]
    services: Services,
}

/// Where the services of `[deploy]` run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Services {
    /// Containers when an engine answers and the images are built, else processes.
    Auto,
    /// Containers (`lab images build` makes their images); fails without an engine.
    Containers,
    /// Processes in the nodes' namespaces.
    Processes,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Structured logs on stderr, off unless RUST_LOG asks (e.g. RUST_LOG=lab=debug).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let states = StateDir::new(&cli.state_dir);
    let result = match cli.command {
        Command::Plan(args) => plan(&args),
        Command::Up(args) => up(&args, &states),
        Command::Down(args) => down(&args, &states),
        Command::Status(args) => status(&args, &states),
        Command::Exec(args) => exec(&args, &states),
        Command::Link(command) => link(command, &states),
        Command::Compare(args) => compare(&args),
        Command::Run(args) => run(&args, &states),
        Command::Images(ImagesCommand::Fetch { kernels }) => images_fetch(&kernels),
        Command::Images(ImagesCommand::Build { names }) => images_build(&names),
        Command::WorkloadServer { spec } => workload_server(&spec),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

/// Loads a topology, printing its warnings, or every diagnostic and the exit code to use.
fn load(file: &std::path::Path) -> Result<topology::Loaded, u8> {
    let handler = GraphicalReportHandler::new();
    match topology::load(file) {
        Ok(loaded) => {
            eprint!("{}", loaded.warnings.render(&handler));
            Ok(loaded)
        }
        Err(LoadError::Invalid(diagnostics)) => {
            eprint!("{}", diagnostics.render(&handler));
            eprintln!(
                "error: {} is invalid ({})",
                file.display(),
                count_errors(diagnostics.error_count())
            );
            Err(INVALID)
        }
        Err(error @ LoadError::Read { .. }) => {
            eprintln!("error: {error}");
            Err(FAILURE)
        }
    }
}

fn plan_of(args: &PlanArgs) -> Result<Plan, u8> {
    let loaded = load(&args.file)?;
    plan_of_topology(&loaded.topology, args)
}

fn plan_of_topology(topology: &topology::Topology, args: &PlanArgs) -> Result<Plan, u8> {
    let options = PlanOptions {
        prefix: args.prefix.clone(),
        service_containers: service_containers(topology, args.services)?,
    };
    Ok(Plan::new(topology, &options))
}

/// Whether the services of `topology`'s `[deploy]` run in containers: asks the engine for the
/// images they need, unless none of them is on a netns node or `services` says processes.
/// `auto` falls back to processes (saying why); `containers` fails instead.
fn service_containers(topology: &topology::Topology, services: Services) -> Result<bool, u8> {
    let mut images = vec![lab::deploy::NODE_IMAGE.to_owned()];
    for deployment in &topology.deploy {
        let on_netns = topology
            .node(&deployment.node.value)
            .is_some_and(|n| n.kind.value == topology::NodeKind::Netns);
        for service in deployment.services.iter().filter(|_| on_netns) {
            if let Some((image, _)) = lab::deploy::image_of(service.value) {
                let reference = format!("{}/{image}", lab::images::REPOSITORY);
                if !images.contains(&reference) {
                    images.push(reference);
                }
            }
        }
    }
    if services == Services::Processes || images.len() == 1 {
        return Ok(false);
    }
    let checked = runtime()?.block_on(async {
        let engine = lab::node::container::Engine::connect()
            .await
            .map_err(|e| e.to_string())?;
        for image in &images {
            if !engine.has_image(&format!("{image}:latest")).await {
                return Err(format!(
                    "image {image} is missing: `lab images build` makes it"
                ));
            }
        }
        Ok(())
    });
    match (checked, services) {
        (Ok(()), _) => Ok(true),
        (Err(why), Services::Containers) => Err(fail(format!(
            "the services of [deploy] cannot run in containers: {why}"
        ))),
        (Err(why), _) => {
            eprintln!("note: the services of [deploy] run as processes: {why}");
            Ok(false)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            FAILURE
        })
}

fn apply_error(e: &apply::Error) -> u8 {
    eprintln!("error: {e}");
    match e {
        apply::Error::Conflict(_) => CONFLICT,
        _ => FAILURE,
    }
}

fn up(args: &PlanArgs, states: &StateDir) -> Result<(), u8> {
    let topology = load(&args.file)?.topology;
    let plan = plan_of_topology(&topology, args)?;
    let started = Instant::now();
    let runtime = runtime()?;
    runtime
        .block_on(apply::up(
            &plan,
            &args.file,
            states,
            &steps_bar(plan.steps.len()),
        ))
        .map_err(|e| apply_error(&e))?;
    if !topology.deploy.is_empty()
        && let Err(e) = lab::deploy::start(
            &topology.deploy,
            &topology,
            &plan,
            states,
            runtime.handle(),
            &[],
        )
    {
        eprintln!("error: starting the services of [deploy]: {e}");
        eprintln!("taking lab {} down again", plan.lab);
        runtime
            .block_on(apply::down(&plan.prefix, Some(&plan.lab), states))
            .map_err(|e| apply_error(&e))?;
        return Err(FAILURE);
    }
    let nodes = namespaces_of(&plan).count();
    write_stdout(&format!(
        "lab {} is up: {nodes} namespaces, {} steps in {:.2} s\n",
        plan.lab,
        plan.steps.len(),
        started.elapsed().as_secs_f64()
    ))?;
    status(
        &StatusArgs {
            json: false,
            prefix: args.prefix.clone(),
        },
        states,
    )
}

/// A bar over the steps of `lab up` for large labs on a terminal; hidden otherwise.
fn steps_bar(steps: usize) -> indicatif::ProgressBar {
    if steps < 200 || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn images_build(names: &[String]) -> Result<(), u8> {
    let started = Instant::now();
    let reports = runtime()?
        .block_on(lab::images::build(names, &lab::images::Sources::default()))
        .map_err(|e| match e {
            lab::images::Error::Unknown(_) => invalid(e),
            _ => fail(e),
        })?;
    let mut text: String = reports.iter().map(|r| format!("{r}\n")).collect();
    text.push_str(&format!(
        "{} image(s), {} built, in {:.1} s\n",
        reports.len(),
        reports
            .iter()
            .filter(|r| r.outcome == lab::images::Outcome::Built)
            .count(),
        started.elapsed().as_secs_f64()
    ));
    write_stdout(&text)
}

fn down(args: &DownArgs, states: &StateDir) -> Result<(), u8> {
    let labs = runtime()?
        .block_on(apply::down(
            args.prefix.as_str(),
            args.lab.as_deref(),
            states,
        ))
        .map_err(|e| apply_error(&e))?;
    let text = match (labs.is_empty(), &args.lab) {
        (true, Some(lab)) => format!("lab {lab} is not up: nothing to remove\n"),
        (true, None) => "no lab is up: nothing to remove\n".to_owned(),
        (false, _) => format!("removed: {}\n", labs.join(", ")),
    };
    write_stdout(&text)
}

/// The (namespace, node) pairs of a plan.
fn namespaces_of(plan: &Plan) -> impl Iterator<Item = (&str, &str)> {
    plan.steps.iter().filter_map(Step::node_namespace)
}

fn status(args: &StatusArgs, states: &StateDir) -> Result<(), u8> {
    let labs = states.list(args.prefix.as_str()).map_err(|e| {
        eprintln!("error: reading lab state: {e}");
        FAILURE
    })?;
    let present: Vec<String> = lab_netlink::Netns::list().unwrap_or_default();
    let report: Vec<serde_json::Value> = labs
        .iter()
        .map(|state| {
            let nodes: Vec<serde_json::Value> = namespaces_of(&state.plan)
                .map(|(ns, node)| {
                    serde_json::json!({
                        "node": node,
                        "netns": ns,
                        "present": present.iter().any(|p| p == ns),
                    })
                })
                .collect();
            let services: Vec<serde_json::Value> = state
                .deployed
                .iter()
                .flat_map(|d| &d.services)
                .map(|s| {
                    serde_json::json!({
                        "service": s.service,
                        "node": s.node,
                        "pid": s.pid,
                        "container": s.container,
                        "log": s.log,
                    })
                })
                .collect();
            serde_json::json!({
                "lab": state.plan.lab,
                "phase": state.phase,
                "source": state.source,
                "pid": state.pid,
                "nodes": nodes,
                "services": services,
                "disgrafs": state.deployed.as_ref().and_then(|d| d.server).map(|addr| {
                    serde_json::json!({
                        "url": format!("http://{addr}/"),
                        "token_file": state.deployed.as_ref().map(|d| d.dir.join("token")),
                    })
                }),
            })
        })
        .collect();
    if args.json {
        return write_stdout(&format!("{}\n", serde_json::Value::Array(report)));
    }
    let mut text = String::new();
    if report.is_empty() {
        text.push_str("no lab is up\n");
    }
    for lab in &report {
        text.push_str(&format!(
            "{} ({}, from {})\n",
            lab["lab"].as_str().unwrap_or_default(),
            lab["phase"].as_str().unwrap_or_default(),
            lab["source"].as_str().unwrap_or_default()
        ));
        for node in lab["nodes"].as_array().into_iter().flatten() {
            let mark = if node["present"] == true {
                "up"
            } else {
                "MISSING"
            };
            text.push_str(&format!(
                "  {:<16} {:<32} {mark}\n",
                node["node"].as_str().unwrap_or_default(),
                node["netns"].as_str().unwrap_or_default()
            ));
        }
        for service in lab["services"].as_array().into_iter().flatten() {
            let container = service["container"]
                .as_str()
                .map_or_else(String::new, |c| format!(" container {c}"));
            text.push_str(&format!(
                "  {:<16} {:<16} pid {:<8} log {}{container}\n",
                service["node"].as_str().unwrap_or_default(),
                service["service"].as_str().unwrap_or_default(),
                service["pid"],
                service["log"].as_str().unwrap_or_default()
            ));
        }
        if let Some(url) = lab["disgrafs"]["url"].as_str() {
            text.push_str(&format!(
                "  DisGraFS UI: {url} (write token in {})\n",
                lab["disgrafs"]["token_file"].as_str().unwrap_or_default()
            ));
        }
    }
    write_stdout(&text)
}

fn fail(message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    FAILURE
}

fn invalid(message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    INVALID
}

/// The state of the lab `lab` names, or of the only lab that is up.
fn lab_state(states: &StateDir, prefix: &Prefix, lab: Option<&str>) -> Result<LabState, u8> {
    let labs = states
        .list(prefix.as_str())
        .map_err(|e| fail(format!("reading lab state: {e}")))?;
    let names: Vec<&str> = labs.iter().map(|s| s.plan.lab.as_str()).collect();
    let chosen = match lab {
        Some(name) => labs
            .iter()
            .position(|s| s.plan.lab == name)
            .ok_or_else(|| fail(format!("lab {name} is not up (up: {})", names.join(", "))))?,
        None if labs.len() == 1 => 0,
        None if labs.is_empty() => return Err(fail("no lab is up")),
        None => {
            return Err(fail(format!(
                "several labs are up ({}): choose one with --lab",
                names.join(", ")
            )));
        }
    };
    Ok(labs.into_iter().nth(chosen).expect("index from position"))
}

fn exec(args: &ExecArgs, states: &StateDir) -> Result<(), u8> {
    let state = lab_state(states, &args.prefix, args.lab.as_deref())?;
    let (ns, node) = namespaces_of(&state.plan)
        .find(|(_, node)| *node == args.node)
        .ok_or_else(|| {
            let nodes: Vec<&str> = namespaces_of(&state.plan).map(|(_, n)| n).collect();
            fail(format!(
                "lab {} has no node {} (nodes: {})",
                state.plan.lab,
                args.node,
                nodes.join(", ")
            ))
        })?;
    let is_vm = state
        .plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::StartVm(spec) if spec.node == node));
    let target: Box<dyn Node> = if is_vm {
        let dir = states
            .vm_dir(&state.plan.prefix, &state.plan.lab)
            .join(node);
        Box::new(VmNode::new(node, ns, dir))
    } else {
        Box::new(NetnsNode::new(node, ns))
    };
    let error = target.exec(&args.command[0], &args.command[1..]);
    Err(fail(format!("cannot run {}: {error}", args.command[0])))
}

fn images_fetch(names: &[String]) -> Result<(), u8> {
    let matrix = lab_vm::Matrix::builtin().map_err(fail)?;
    let cache = lab_vm::Cache::from_env().map_err(fail)?;
    let pins = if names.is_empty() {
        matrix.kernels.iter().collect()
    } else {
        names
            .iter()
            .map(|name| matrix.kernel(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?
    };
    let mut text = String::new();
    for pin in pins {
        let kernel = cache.fetch(pin).map_err(fail)?;
        text.push_str(&format!(
            "{}\t{}\t{}\n",
            kernel.name,
            kernel.release,
            kernel.vmlinux.display()
        ));
    }
    write_stdout(&text)
}

fn link(command: LinkCommand, states: &StateDir) -> Result<(), u8> {
    let (target, change) = match command {
        LinkCommand::Set {
            target,
            delay,
            jitter,
            loss,
            duplicate,
            reorder,
            corrupt,
            rate,
        } => {
            let impairment = Impairment {
                delay,
                jitter,
                loss,
                duplicate,
                reorder,
                corrupt,
                rate,
            };
            let change = if impairment.is_none() {
                LinkChange::Clear
            } else {
                LinkChange::Impair(impairment)
            };
            (target, change)
        }
        LinkCommand::Down { target } => (target, LinkChange::Down),
        LinkCommand::Up { target } => (target, LinkChange::Up),
    };
    let state = lab_state(states, &target.prefix, target.lab.as_deref())?;
    let Some((node, iface)) = target.endpoint.split_once(':') else {
        return Err(invalid(format!("{}: expected NODE:IFACE", target.endpoint)));
    };
    let end = state
        .plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateVeth { a, b, .. } => Some([a, b]),
            _ => None,
        })
        .flatten()
        .find(|end| end.node == node && end.iface == iface)
        .ok_or_else(|| {
            fail(format!(
                "lab {} has no link endpoint {}",
                state.plan.lab, target.endpoint
            ))
        })?;
    runtime()?
        .block_on(apply::change_link(&state.plan, &end.ns, &end.dev, &change))
        .map_err(|e| apply_error(&e))?;
    write_stdout(&format!("{}: {change:?}\n", target.endpoint))
}

fn plan(args: &PlanArgs) -> Result<(), u8> {
    let plan = plan_of(args)?;
    let text = if args.json {
        serde_json::to_string_pretty(&plan).map_err(|e| {
            eprintln!("error: cannot write the plan as JSON: {e}");
            FAILURE
        })? + "\n"
    } else {
        plan.to_string()
    };
    write_stdout(&text)
}

/// Writes to stdout; a closed pipe (`lab plan … | head`) is not an error.
fn workload_server(spec: &str) -> Result<(), u8> {
    let spec: lab::workloads::remote::ServerSpec = serde_json::from_str(spec)
        .map_err(|e| invalid(format!("workload server spec {spec}: {e}")))?;
    let served = spec.serve().map_err(fail)?;
    let json = serde_json::to_string(&served).map_err(fail)?;
    write_stdout(&format!("{json}\n"))
}

fn write_stdout(text: &str) -> Result<(), u8> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write to stdout: {e}");
            Err(FAILURE)
        }
        _ => Ok(()),
    }
}

fn compare(args: &CompareArgs) -> Result<(), u8> {
    let read = |path: &std::path::Path| {
        lab::report::Report::read(path).map_err(|e| {
            eprintln!("error: cannot read the report {e}");
            INVALID
        })
    };
    let (a, b) = (read(&args.a)?, read(&args.b)?);
    let lines = lab::report::compare(&a, &b);
    if lines.is_empty() {
        eprintln!("error: the two reports have no variant and metric in common");
        return Err(INVALID);
    }
    write_stdout(&lab::report::comparison_text(&lines))
}

fn run(args: &RunArgs, states: &StateDir) -> Result<(), u8> {
    let handler = GraphicalReportHandler::new();
    let loaded = match lab::scenario::load(&args.file) {
        Ok(loaded) => loaded,
        Err(lab::scenario::LoadError::Invalid(diagnostics)) => {
            eprint!("{}", diagnostics.render(&handler));
            return Err(invalid(format!(
                "{} is invalid ({})",
                args.file.display(),
                count_errors(diagnostics.error_count())
            )));
        }
        Err(error @ lab::scenario::LoadError::Read { .. }) => return Err(fail(error)),
    };
    eprint!("{}", loaded.warnings.render(&handler));
    let scenario = loaded.scenario;
    let runtime = runtime()?;
    let interrupt = Arc::new(run::Interrupt::new());
    interrupt
        .on_signals(runtime.handle(), &scenario.name.value)
        .map_err(|e| fail(format!("cannot handle signals: {e}")))?;
    let options = run::Options {
        out: args.out.clone(),
        prefix: args.prefix.clone(),
        states: states.clone(),
        progress_bar: std::io::stderr().is_terminal(),
    };
    let report = run::run(
        &scenario,
        &args.file,
        &options,
        runtime.handle(),
        &interrupt,
    )
    .map_err(|e| {
        eprintln!("error: {e}");
        match e {
            run::Error::Unsupported { .. } => UNSUPPORTED,
            run::Error::Up { source, .. } if matches!(*source, apply::Error::Conflict(_)) => {
                CONFLICT
            }
            _ => FAILURE,
        }
    })?;
    let mut text = format!(
        "{} runs of scenario {} ({}); report in {}\n",
        report.schedule.len(),
        report.scenario,
        if report.complete {
            "complete"
        } else {
            "incomplete"
        },
        args.out.display()
    );
    let lines: Vec<lab::report::Comparison> = report
        .ratios
        .iter()
        .flat_map(|(variant, metrics)| {
            metrics
                .iter()
                .map(|(metric, ratio)| lab::report::Comparison {
                    variant: variant.clone(),
                    metric: metric.clone(),
                    ratio: *ratio,
                })
        })
        .collect();
    if let (false, Some(base)) = (lines.is_empty(), report.variants.first()) {
        text += &format!(
            "ratios against variant {} (B/A: mean of the variant / mean of {}):\n",
            base.name, base.name
        );
        text += &lab::report::comparison_text(&lines);
    }
    write_stdout(&text)?;
    match interrupt.signal() {
        Some(signal) if !report.complete => Err(u8::try_from(128 + signal).unwrap_or(FAILURE)),
        _ => Ok(()),
    }
}

/// "1 error", "2 errors".
fn count_errors(count: usize) -> String {
    if count == 1 {
        "1 error".to_owned()
    } else {
        format!("{count} errors")
    }
}
