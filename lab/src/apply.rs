//! Applying a [`Plan`] to the kernel (`lab up`) and removing it again (`lab down`).
//!
//! Steps run as early as their namespaces allow: a step waits for the previous *group* of
//! steps in every namespace it touches, where a group is a run of consecutive steps of one
//! kind in that namespace (creating 100 veths in a bridge's namespace needs no ordering among
//! them, but must finish before those veths are enslaved or addressed). Work in different
//! namespaces overlaps, which is what keeps `lab up` of star-100 near the iproute2 floor.
//!
//! Teardown removes a lab's containers, deletes namespaces (the kernel removes their devices
//! in batches) after killing the processes still inside them, and deletes the few host-side
//! devices a plan makes.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::{FutureExt as _, Shared, join_all};
use indicatif::ProgressBar;
use lab_netlink::{Netem, Netlink, Probability, Route, Veth};
use tokio::sync::OnceCell;

use crate::{
    node::{
        NetnsNode, Node,
        container::{ContainerSpec, Engine, EngineError},
        vm::VmNode,
    },
    state::{LabState, Phase, StateDir},
    topology::{Impairment, Netns, Plan, Step, Undo, lab_tag},
};

/// Why a lab could not be brought up or taken down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lab (or another one using the same names or addresses) is already up.
    #[error("{0}")]
    Conflict(String),
    /// Steps of the plan failed; everything made was removed again.
    #[error("{} step(s) failed; the lab was torn down again:\n{}", .0.len(), .0.join("\n"))]
    Steps(Vec<String>),
    /// Reading or writing the state file failed.
    #[error("state file: {0}")]
    State(#[from] std::io::Error),
    /// Teardown could not remove something.
    #[error("could not remove: {}", .0.join("; "))]
    Teardown(Vec<String>),
    /// A netlink or namespace operation outside the plan's steps failed.
    #[error(transparent)]
    Netlink(#[from] lab_netlink::Error),
    /// The lab has container nodes and the container engine failed or cannot be reached.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Brings `plan` up: refuses if it collides with a lab that is up, records the plan in the
/// state file, then runs every step, advancing `progress` by one per step. On failure
/// everything is torn down again.
pub async fn up(
    plan: &Plan,
    source: &std::path::Path,
    states: &StateDir,
    progress: &ProgressBar,
) -> Result<(), Error> {
    check_conflicts(plan, states)?;
    let engine = if plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::StartContainer { .. }))
    {
        Some(Engine::connect().await?)
    } else {
        None
    };
    let mut state = LabState {
        phase: Phase::Applying,
        pid: std::process::id(),
        source: source.to_owned(),
        plan: plan.clone(),
        deployed: None,
    };
    states.write(&state)?;
    tracing::info!(lab = %plan.lab, steps = plan.steps.len(), "bringing the lab up");
    let started = std::time::Instant::now();
    let vm_dir = states.vm_dir(&plan.prefix, &plan.lab);
    let failures = Executor::new(vm_dir, engine)?
        .run(&plan.steps, progress)
        .await;
    if failures.is_empty() {
        state.phase = Phase::Up;
        states.write(&state)?;
        tracing::info!(lab = %plan.lab, elapsed = ?started.elapsed(), "lab is up");
        return Ok(());
    }
    tracing::warn!(lab = %plan.lab, failed = failures.len(), "steps failed; tearing down");
    teardown(plan, states).await?;
    Err(Error::Steps(failures))
}

/// Takes down lab `lab`, or every lab of `prefix` when `lab` is `None`: the state files'
/// plans first, then anything else named like the lab's objects (after a crash the state
/// file may be gone). Returns the labs taken down.
pub async fn down(
    prefix: &str,
    lab: Option<&str>,
    states: &StateDir,
) -> Result<Vec<String>, Error> {
    let mut labs = Vec::new();
    for state in states.list(prefix)? {
        if lab.is_none_or(|l| l == state.plan.lab) {
            if let Some(deployed) = &state.deployed {
                crate::deploy::stop(deployed, None)
                    .map_err(|e| Error::Teardown(vec![format!("services: {e}")]))?;
            }
            teardown(&state.plan, states).await?;
            labs.push(state.plan.lab);
        }
    }
    for (vm_lab, dir) in states.vm_dirs(prefix)? {
        if lab.is_none_or(|l| l == vm_lab) {
            stop_vms(&dir).await?;
            if !labs.contains(&vm_lab) {
                labs.push(vm_lab);
            }
        }
    }
    let (ns_prefix, host_prefix) = match lab {
        Some(lab) => (
            format!("{prefix}-{lab}."),
            Some(format!("{}-", lab_tag_of(prefix, lab))),
        ),
        None => (format!("{prefix}-"), None),
    };
    let strays: Vec<Undo> = lab_netlink::Netns::list()?
        .into_iter()
        .filter(|name| name.starts_with(&ns_prefix))
        .map(|ns| Undo::DeleteNamespace { ns })
        .collect();
    let host = Netlink::current()?;
    let mut stray_links = Vec::new();
    for link in host.links().await? {
        let ours = match &host_prefix {
            Some(p) => link.name.starts_with(p.as_str()),
            None => is_host_device_of_prefix(prefix, &link.name),
        };
        if ours {
            stray_links.push(Undo::DeleteLink {
                ns: Netns::Root,
                dev: link.name,
            });
        }
    }
    // Containers carry the lab's labels: found even when no state file names them.
    let containers: Vec<Undo> = match Engine::connect().await {
        Ok(engine) => engine
            .containers_of(prefix, lab)
            .await?
            .into_iter()
            .map(|name| Undo::RemoveContainer { name })
            .collect(),
        Err(e) => {
            tracing::debug!("no container engine, so no containers to look for: {e}");
            Vec::new()
        }
    };
    if !strays.is_empty() || !stray_links.is_empty() || !containers.is_empty() {
        run_undos(stray_links.iter().chain(&containers).chain(&strays)).await?;
        if let Some(lab) = lab
            && !labs.iter().any(|l| l == lab)
        {
            labs.push(lab.to_owned());
        }
    }
    Ok(labs)
}

/// A change to one interface of a lab that is up.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkChange {
    /// Set the interface administratively up.
    Up,
    /// Set it down (its peer sees carrier loss).
    Down,
    /// Replace its egress impairment.
    Impair(Impairment),
    /// Remove its egress impairment.
    Clear,
}

/// Applies `change` to device `dev` in namespace `ns` of `plan`'s lab. Setting a link down
/// makes the kernel drop the routes through it, so `Up` puts back the plan's routes of that
/// namespace (those still present are left alone).
pub async fn change_link(
    plan: &Plan,
    ns: &Netns,
    dev: &str,
    change: &LinkChange,
) -> Result<(), Error> {
    let conn = match named(ns)? {
        Some(ns) => ns.connect()?,
        None => Netlink::current()?,
    };
    match change {
        LinkChange::Up => {
            conn.set_up(dev).await?;
            for step in &plan.steps {
                if let Step::AddRoute {
                    ns: route_ns,
                    to,
                    via,
                } = step
                    && route_ns == ns
                {
                    let network = to.network();
                    let route = Route::new(network.addr, network.prefix).via(*via);
                    match conn.add_route(&route).await {
                        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e.into()),
                        _ => {}
                    }
                }
            }
        }
        LinkChange::Down => conn.set_down(dev).await?,
        LinkChange::Impair(impairment) => {
            let index = conn.link_index(dev).await?;
            conn.set_netem(index, &to_netem(impairment)?).await?;
        }
        LinkChange::Clear => {
            let index = conn.link_index(dev).await?;
            conn.delete_root_qdisc(index).await?;
        }
    }
    Ok(())
}

/// Removes everything `plan` makes, then its state file.
async fn teardown(plan: &Plan, states: &StateDir) -> Result<(), Error> {
    tracing::info!(lab = %plan.lab, "tearing the lab down");
    stop_vms(&states.vm_dir(&plan.prefix, &plan.lab)).await?;
    run_undos(plan.teardown().iter()).await?;
    states.remove(&plan.prefix, &plan.lab)?;
    Ok(())
}

fn lab_tag_of(prefix: &str, lab: &str) -> String {
    match crate::topology::Prefix::new(prefix) {
        Ok(p) => lab_tag(&p, lab),
        Err(_) => prefix.to_owned(),
    }
}

/// Host-side devices of any lab of `prefix`: `<prefix><4 hex digits>-<n>`.
fn is_host_device_of_prefix(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let Some((tag, n)) = rest.split_once('-') else {
        return false;
    };
    tag.len() == 4
        && tag.bytes().all(|b| b.is_ascii_hexdigit())
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
}

/// Stops the VMs whose run directories are in `dir` (see [`StateDir::vm_dir`]) and removes
/// it. Every VM node of a plan has its directory there, so this is its [`Undo::StopVm`].
async fn stop_vms(dir: &std::path::Path) -> Result<(), Error> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::State(e)),
        };
        let mut failures = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if let Err(e) = lab_vm::vm::stop(&path) {
                failures.push(e.to_string());
            }
        }
        if !failures.is_empty() {
            return Err(Error::Teardown(failures));
        }
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::State(e)),
            _ => Ok(()),
        }
    })
    .await
    .map_err(|e| Error::Teardown(vec![format!("teardown thread: {e}")]))?
}

/// Host links first (a veth end in the host goes with its peer), then containers (the engine
/// kills their processes), then namespaces, whose processes are killed first: a process inside
/// keeps a namespace and its devices alive. A container's namespace name goes with it.
async fn run_undos<'a>(undos: impl Iterator<Item = &'a Undo>) -> Result<(), Error> {
    let (links, namespaces): (Vec<&Undo>, Vec<&Undo>) =
        undos.partition(|u| matches!(u, Undo::DeleteLink { .. }));
    let mut failures = Vec::new();
    let containers: Vec<&str> = namespaces
        .iter()
        .filter_map(|u| match u {
            Undo::RemoveContainer { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if !containers.is_empty() {
        match Engine::connect().await {
            Ok(engine) => {
                let removals = containers.iter().map(|name| engine.remove(name));
                for result in join_all(removals).await {
                    if let Err(e) = result {
                        failures.push(e.to_string());
                    }
                }
            }
            // A container's namespace name is still removed below; the container is not.
            Err(e) => failures.push(format!("containers {}: {e}", containers.join(", "))),
        }
    }
    if !links.is_empty() {
        let host = Netlink::current()?;
        for undo in links {
            if let Undo::DeleteLink { dev, .. } = undo
                && let Err(e) = host.delete_link(dev.as_str()).await
                && !is_gone(&e)
            {
                failures.push(e.to_string());
            }
        }
    }
    let names: Vec<String> = namespaces
        .into_iter()
        .filter_map(|u| match u {
            Undo::DeleteNamespace { ns } => Some(ns.clone()),
            Undo::RemoveContainer { name } => Some(name.clone()),
            Undo::DeleteLink { .. } | Undo::StopVm { .. } => None,
        })
        .collect();
    failures.extend(
        tokio::task::spawn_blocking(move || delete_namespaces(&names))
            .await
            .map_err(|e| Error::Teardown(vec![format!("teardown thread: {e}")]))?,
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Teardown(failures))
    }
}

fn is_gone(e: &lab_netlink::Error) -> bool {
    matches!(e, lab_netlink::Error::NoSuchLink { .. })
        || matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT))
}

/// Kills the processes inside each namespace, then deletes it; returns what failed.
fn delete_namespaces(names: &[String]) -> Vec<String> {
    let mut inodes = HashMap::new();
    for name in names {
        if let Ok(meta) = fs::metadata(format!("/run/netns/{name}")) {
            inodes.insert(meta.ino(), name.clone());
        }
    }
    kill_processes_in(&inodes);
    let mut failures = Vec::new();
    for name in names {
        match lab_netlink::Netns::open(name) {
            Ok(ns) => {
                if let Err(e) = ns.delete() {
                    failures.push(e.to_string());
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT)) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    failures
}

/// SIGKILLs every process whose network namespace is one of `inodes`, and waits (up to 2 s)
/// for them to be gone.
fn kill_processes_in(inodes: &HashMap<u64, String>) {
    if inodes.is_empty() {
        return;
    }
    let me = std::process::id();
    let find = || -> Vec<i32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid as u32 != me)
            .filter(|pid| {
                fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|m| inodes.contains_key(&m.ino()))
            })
            .collect()
    };
    for _ in 0..100 {
        let pids = find();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from /proc; a pid that exited meanwhile is ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Refuses a plan whose namespaces, tag or address pools collide with a lab that is up.
fn check_conflicts(plan: &Plan, states: &StateDir) -> Result<(), Error> {
    if let Some(state) = states.read(&plan.prefix, &plan.lab)? {
        return Err(Error::Conflict(format!(
            "lab {} is already up (from {}, {:?}); `lab down {}` first",
            plan.lab,
            state.source.display(),
            state.phase,
            plan.lab
        )));
    }
    let ns_prefix = format!("{}-{}.", plan.prefix, plan.lab);
    if let Some(ns) = lab_netlink::Netns::list()?
        .into_iter()
        .find(|n| n.starts_with(&ns_prefix))
    {
        return Err(Error::Conflict(format!(
            "namespace {ns} exists but lab {} has no state file (left from a crash?); \
             `lab down {}` removes it",
            plan.lab, plan.lab
        )));
    }
    for other in states.list(&plan.prefix)? {
        if other.plan.tag == plan.tag {
            return Err(Error::Conflict(format!(
                "lab {} shares the host device tag {} with lab {}, which is up; rename one",
                plan.lab, plan.tag, other.plan.lab
            )));
        }
        let clash = [
            (&plan.pools.ipv4, &other.plan.pools.ipv4),
            (&plan.pools.ipv6, &other.plan.pools.ipv6),
        ]
        .into_iter()
        .find(|(a, b)| a.overlaps(b));
        if let Some((mine, theirs)) = clash {
            return Err(Error::Conflict(format!(
                "lab {} would use {mine}, which overlaps {theirs} of lab {}, which is up; \
                 set [pool] in one of the topologies",
                plan.lab, other.plan.lab
            )));
        }
    }
    Ok(())
}

/// The kind of a step, for grouping consecutive steps that need no order among themselves.
fn kind(step: &Step) -> std::mem::Discriminant<Step> {
    std::mem::discriminant(step)
}

/// The namespaces a step acts in.
fn namespaces(step: &Step) -> Vec<Netns> {
    match step {
        Step::CreateNamespace { ns, .. } | Step::StartContainer { ns, .. } => {
            vec![Netns::Named(ns.clone())]
        }
        Step::StartVm(spec) => vec![Netns::Named(spec.ns.clone())],
        Step::CreateVeth { a, b, .. } => vec![a.ns.clone(), b.ns.clone()],
        Step::Sysctl { ns, .. }
        | Step::CreateBridge { ns, .. }
        | Step::Enslave { ns, .. }
        | Step::AddAddress { ns, .. }
        | Step::AddNetem { ns, .. }
        | Step::SetUp { ns, .. }
        | Step::AddRoute { ns, .. }
        | Step::CreateTap { ns, .. }
        | Step::Exec { ns, .. } => vec![ns.clone()],
    }
}

/// For each step, the indices of the steps it must wait for.
fn dependencies(steps: &[Step]) -> Vec<Vec<usize>> {
    struct Lane {
        kind: std::mem::Discriminant<Step>,
        current: Vec<usize>,
        previous: Vec<usize>,
    }
    let mut lanes: HashMap<Netns, Lane> = HashMap::new();
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let mut deps = HashSet::new();
            let mut touched = namespaces(step);
            touched.dedup();
            for ns in touched {
                let lane = lanes.entry(ns).or_insert_with(|| Lane {
                    kind: kind(step),
                    current: Vec::new(),
                    previous: Vec::new(),
                });
                if lane.kind != kind(step) {
                    lane.previous = std::mem::take(&mut lane.current);
                    lane.kind = kind(step);
                }
                lane.current.push(i);
                deps.extend(lane.previous.iter().copied());
            }
            let mut deps: Vec<usize> = deps.into_iter().collect();
            deps.sort_unstable();
            deps
        })
        .collect()
}

/// Runs steps, holding one netlink connection per namespace.
struct Executor {
    host: Netlink,
    connections: Mutex<HashMap<String, Arc<OnceCell<Netlink>>>>,
    /// Where VM nodes get their run directories.
    vm_dir: std::path::PathBuf,
    /// The VM nodes of the steps being run.
    vms: Mutex<HashSet<String>>,
    /// The container engine, when the plan has container nodes.
    engine: Option<Engine>,
}

type StepDone = Shared<futures_util::future::BoxFuture<'static, bool>>;

impl Executor {
    fn new(vm_dir: std::path::PathBuf, engine: Option<Engine>) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            host: Netlink::current()?,
            connections: Mutex::new(HashMap::new()),
            vm_dir,
            vms: Mutex::new(HashSet::new()),
            engine,
        }))
    }

    /// Runs every step in dependency order; returns the failures (empty: all done). A step
    /// whose dependency failed is skipped.
    async fn run(self: Arc<Self>, steps: &[Step], progress: &ProgressBar) -> Vec<String> {
        let failures = Arc::new(Mutex::new(Vec::new()));
        self.vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(steps.iter().filter_map(|s| match s {
                Step::StartVm(spec) => Some(spec.node.clone()),
                _ => None,
            }));
        let mut done: Vec<StepDone> = Vec::with_capacity(steps.len());
        for (step, deps) in steps.iter().zip(dependencies(steps)) {
            let waits: Vec<StepDone> = deps.iter().map(|&d| done[d].clone()).collect();
            let (this, step, failures) = (self.clone(), step.clone(), failures.clone());
            let progress = progress.clone();
            let future = async move {
                if !join_all(waits).await.into_iter().all(|ok| ok) {
                    return false;
                }
                let started = std::time::Instant::now();
                let result = this.step(&step).await;
                progress.inc(1);
                tracing::debug!(%step, elapsed = ?started.elapsed(), ok = result.is_ok(), "step");
                match result {
                    Ok(()) => true,
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("  {step}: {e}"));
                        false
                    }
                }
            };
            done.push(future.boxed().shared());
        }
        join_all(done).await;
        let mut failures = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
        failures.sort();
        failures
    }

    /// The connection into `ns`, opened on first use.
    async fn connection(&self, ns: &Netns) -> Result<Netlink, lab_netlink::Error> {
        let Netns::Named(name) = ns else {
            return Ok(self.host.clone());
        };
        let cell = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async { lab_netlink::Netns::open(name)?.connect() })
            .await
            .cloned()
    }

    async fn step(&self, step: &Step) -> Result<(), lab_netlink::Error> {
        match step {
            Step::CreateNamespace { ns, .. } => {
                let name = ns.clone();
                blocking(move || lab_netlink::Netns::create(&name).map(drop)).await
            }
            Step::StartContainer {
                ns,
                node,
                lab,
                prefix,
                image,
                cmd,
            } => {
                let Some(engine) = &self.engine else {
                    return Err(io_error(
                        format!("start container {ns}"),
                        std::io::Error::other("no container engine connection"),
                    ));
                };
                let spec = ContainerSpec {
                    name: ns.clone(),
                    node: node.clone(),
                    lab: lab.clone(),
                    prefix: prefix.clone(),
                    image: image.clone(),
                    cmd: cmd.clone(),
                };
                engine.start(&spec).await.map(drop).map_err(|e| {
                    io_error(format!("start container {ns}"), std::io::Error::other(e))
                })
            }
            Step::Sysctl { ns, key, value } => {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                let value = value.clone();
                in_namespace(ns, move || {
                    fs::write(&path, &value).map_err(|e| io_error(format!("write {path}"), e))
                })
                .await
            }
            Step::CreateBridge { ns, dev, .. } => self.connection(ns).await?.add_bridge(dev).await,
            Step::CreateVeth { a, b, mtu } => {
                let (ns_a, ns_b) = (named(&a.ns)?, named(&b.ns)?);
                let mut veth = Veth::new(&a.dev, &b.dev);
                if let Some(ns) = &ns_a {
                    veth = veth.netns(ns);
                }
                if let Some(ns) = &ns_b {
                    veth = veth.peer_netns(ns);
                }
                if let Some(mtu) = mtu {
                    veth = veth.mtu(*mtu);
                }
                self.host.add_veth(&veth).await
            }
            Step::Enslave { ns, dev, bridge } => {
                let conn = self.connection(ns).await?;
                let bridge = conn.link_index(bridge).await?;
                conn.set_master(dev.as_str(), bridge).await
            }
            Step::AddAddress {
                ns, dev, address, ..
            } => {
                let conn = self.connection(ns).await?;
                let index = conn.link_index(dev).await?;
                conn.add_address(index, address.addr, address.prefix).await
            }
            Step::AddNetem { ns, dev, netem } => {
                let conn = self.connection(ns).await?;
                let index = conn.link_index(dev).await?;
                conn.set_netem(index, &to_netem(netem)?).await
            }
            Step::SetUp { ns, dev } => self.connection(ns).await?.set_up(dev.as_str()).await,
            Step::AddRoute { ns, to, via } => {
                let network = to.network();
                let route = Route::new(network.addr, network.prefix).via(*via);
                self.connection(ns).await?.add_route(&route).await
            }
            Step::CreateTap { ns, dev, mtu, .. } => {
                let netns = named(ns)?;
                let name = dev.clone();
                blocking(move || match netns {
                    Some(netns) => netns.create_tap(&name),
                    None => Err(io_error(
                        format!("create tap {name}"),
                        std::io::Error::other("taps are made in a VM node's namespace"),
                    )),
                })
                .await?;
                match mtu {
                    Some(mtu) => self.connection(ns).await?.set_mtu(dev.as_str(), *mtu).await,
                    None => Ok(()),
                }
            }
            Step::StartVm(spec) => {
                let spec = spec.clone();
                let dir = self.vm_dir.join(&spec.node);
                blocking(move || {
                    let (pid, ready) = spec.start(&dir).map_err(|e| {
                        io_error(format!("start vm {}", spec.node), std::io::Error::other(e))
                    })?;
                    tracing::info!(node = %spec.node, pid, ready = ?ready, "VM is up");
                    Ok(())
                })
                .await
            }
            Step::Exec { ns, node, command } => {
                let args = vec!["-c".to_owned(), command.clone()];
                let is_vm = self
                    .vms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(node);
                let node: Option<Box<dyn Node + Send>> = match ns {
                    Netns::Named(netns) if is_vm => {
                        Some(Box::new(VmNode::new(node, netns, self.vm_dir.join(node))))
                    }
                    Netns::Named(netns) => Some(Box::new(NetnsNode::new(node, netns))),
                    Netns::Root => None,
                };
                let command = command.clone();
                blocking(move || {
                    let output = match node {
                        Some(node) => node.run("sh", &args),
                        None => Command::new("sh").args(&args).output(),
                    };
                    check_output(&command, output)
                })
                .await
            }
        }
    }
}

fn named(ns: &Netns) -> Result<Option<lab_netlink::Netns>, lab_netlink::Error> {
    match ns {
        Netns::Root => Ok(None),
        Netns::Named(name) => lab_netlink::Netns::open(name).map(Some),
    }
}

/// Runs `f` on a blocking thread inside `ns` (the host's namespace: just a blocking thread).
async fn in_namespace(
    ns: &Netns,
    f: impl FnOnce() -> Result<(), lab_netlink::Error> + Send + 'static,
) -> Result<(), lab_netlink::Error> {
    let ns = named(ns)?;
    blocking(move || match ns {
        Some(ns) => ns.run(f)?,
        None => f(),
    })
    .await
}

async fn blocking(
    f: impl FnOnce() -> Result<(), lab_netlink::Error> + Send + 'static,
) -> Result<(), lab_netlink::Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_error("a blocking task", std::io::Error::other(e.to_string())))?
}

/// Turns a shell command's outcome into an error carrying its stderr when it failed.
fn check_output(
    command: &str,
    output: std::io::Result<std::process::Output>,
) -> Result<(), lab_netlink::Error> {
    let out = output.map_err(|e| io_error(format!("run `{command}`"), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(io_error(
        format!("`{command}` exited with {}", out.status),
        std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    ))
}

fn io_error(action: impl Into<String>, source: std::io::Error) -> lab_netlink::Error {
    lab_netlink::Error::Os {
        action: action.into(),
        source,
    }
}

/// The netem settings of an impairment (rates in the file are bits/s; netem's are bytes/s).
fn to_netem(impairment: &Impairment) -> Result<Netem, lab_netlink::Error> {
    let probability = |p: Option<crate::topology::Percent>| {
        p.map_or(Ok(Probability::NEVER), |p| Probability::from_percent(p.0))
    };
    Ok(Netem {
        delay: Duration::from_nanos(impairment.delay.map_or(0, |n| n.0)),
        jitter: Duration::from_nanos(impairment.jitter.map_or(0, |n| n.0)),
        loss: probability(impairment.loss)?,
        duplicate: probability(impairment.duplicate)?,
        reorder: probability(impairment.reorder)?,
        corrupt: probability(impairment.corrupt)?,
        rate: impairment.rate.map(|r| r.0 / 8),
        ..Netem::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Format, PlanOptions, parse};

    fn plan_of(text: &str) -> Plan {
        let loaded = parse("t.toml", text, Format::Toml).expect("valid topology");
        Plan::new(&loaded.topology, &PlanOptions::default())
    }

    #[test]
    fn steps_wait_only_for_the_previous_group_in_their_namespaces() {
        let plan = plan_of(
            "name = \"deps\"\n[nodes.a]\n[nodes.b]\n[nodes.c]\n\
             [[links]]\nendpoints = [\"a:eth0\", \"b:eth0\"]\n\
             [[links]]\nendpoints = [\"b:eth1\", \"c:eth0\"]\n",
        );
        let deps = dependencies(&plan.steps);
        for (i, step) in plan.steps.iter().enumerate() {
            for &d in &deps[i] {
                assert!(d < i, "step {i} waits for a later step {d}");
                let shared = namespaces(&plan.steps[d])
                    .iter()
                    .any(|ns| namespaces(step).contains(ns));
                assert!(
                    shared,
                    "{step} waits for {} in another namespace",
                    plan.steps[d]
                );
            }
            // Everything in a namespace comes after that namespace's creation.
            if !matches!(step, Step::CreateNamespace { .. }) {
                for ns in namespaces(step) {
                    let created = plan.steps.iter().position(
                        |s| matches!(s, Step::CreateNamespace { ns: n, .. } if Netns::Named(n.clone()) == ns),
                    );
                    if let Some(c) = created {
                        assert!(
                            reaches(&deps, i, c),
                            "{step} does not wait for {ns}'s creation"
                        );
                    }
                }
            }
        }
        // Creating the namespaces needs nothing: they all start at once.
        for (i, step) in plan.steps.iter().enumerate() {
            if matches!(step, Step::CreateNamespace { .. }) {
                assert!(deps[i].is_empty(), "{step} waits for {:?}", deps[i]);
            }
        }
    }

    fn reaches(deps: &[Vec<usize>], from: usize, to: usize) -> bool {
        from == to || deps[from].iter().any(|&d| reaches(deps, d, to))
    }

    #[test]
    fn host_device_names_are_recognised_by_prefix() {
        assert!(is_host_device_of_prefix("dgl", "dgl3f9a-0"));
        assert!(is_host_device_of_prefix("dgl", "dgl3f9a-12"));
        assert!(!is_host_device_of_prefix("dgl", "dgl3f9a-"));
        assert!(!is_host_device_of_prefix("dgl", "dglt5uex0"));
        assert!(!is_host_device_of_prefix("dgl", "dgl-two.a"));
        assert!(!is_host_device_of_prefix("dgl", "eth0"));
    }

    #[test]
    fn impairments_become_netem_settings() -> Result<(), lab_netlink::Error> {
        let impairment = Impairment {
            delay: Some(crate::topology::Nanos(1_000_000)),
            loss: Some(crate::topology::Percent(0.1)),
            rate: Some(crate::topology::Rate(1_000_000_000)),
            ..Impairment::default()
        };
        let netem = to_netem(&impairment)?;
        assert_eq!(netem.delay, Duration::from_millis(1));
        assert_eq!(netem.rate, Some(125_000_000));
        assert!((netem.loss.percent() - 0.1).abs() < 1e-6);
        assert_eq!(netem.duplicate, Probability::NEVER);
        Ok(())
    }
}
