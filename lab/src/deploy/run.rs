//! Starting and stopping deployed services.
//!
//! On a netns node (or the host node) every service is a child process spawned from a thread
//! inside the node's network namespace (the host node: the lab's own), in a process group of
//! its own, stdin from /dev/null and stdout and stderr into `DIR/logs/SERVICE-NODE.log`, where
//! `DIR` is the lab's run directory next to its state file (`<state dir>/<prefix>/<lab>.d/`,
//! also holding Redis' and JuiceFS' data). On a container node (see
//! [`crate::topology::PlanOptions::service_containers`]) a service runs in a container of the
//! lab's images ([`image_of`]) that joins the node container's network namespace, with `DIR`
//! mounted at the same path and its output going to the same log file; JuiceFS stays a process
//! in the node's namespace, as its FUSE mount must be in the host's mount namespace for the
//! server's container (made after it, with `DIR` and so the mount inside) to see it. Before a
//! service is started its mount point (JuiceFS) is recorded in the lab's state file, and its
//! PID (a container's: its first process) with its start time right after: [`stop_recorded`],
//! which `lab down` runs before removing namespaces and containers, stops exactly these
//! processes (SIGTERM — to the group of a process, to the process itself in a container —,
//! SIGKILL after 10 s) — also after a crash of the process that started them — then unmounts
//! what is still mounted and removes the run directory. Service containers carry the lab's
//! labels, so `lab down` removes them with the node containers. Services of a node that a
//! socket redirect covers run as processes in a cgroup v2 directory of that node (see
//! [`start`]), removed with the services.
//!
//! Each service is checked before the next one starts: Redis and FalkorDB answer `PING`,
//! JuiceFS is in `/proc/self/mountinfo` (it runs in the foreground: no daemonizing, so no
//! inherited pipe can hold anything open), the server answers `GET /healthz` with 200, a
//! tagger is still running after a second. Addresses: a service on the same node is reached
//! over 127.0.0.1, one on another node over that node's first address (IPv4 first).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Deployment, FALKORDB_PORT, REDIS_PORT, SERVER_PORT, Service, node_of};
use crate::cgroup;
use crate::images::REPOSITORY;
use crate::node::container::{Engine, EngineError, JoinedSpec};
use crate::state::{LabState, StateDir};
use crate::topology::{Plan, Step, Topology};

/// How long a service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped service may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a service could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program was not found.
    #[error("{program} not found (looked in {}); {hint}", .looked.join(", "))]
    NotFound {
        /// The program.
        program: String,
        /// Where it was looked for.
        looked: Vec<String>,
        /// How to get it.
        hint: &'static str,
    },
    /// A service did not start or become ready.
    #[error("{service} on node {node}: {message}")]
    Service {
        /// The service.
        service: &'static str,
        /// Its node.
        node: String,
        /// What went wrong (with the end of its log).
        message: String,
    },
    /// The container engine failed or cannot be reached.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Reading or writing the lab's state or run directory failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The services of a lab, as recorded in its state file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    /// The run directory (logs, data, mount points).
    pub dir: PathBuf,
    /// The write token of the DisGraFS server (also in `DIR/token`).
    pub token: String,
    /// Where clients on other nodes reach the DisGraFS server, if one is deployed.
    pub server: Option<SocketAddr>,
    /// Mount points, recorded before the mount is made.
    pub mounts: Vec<PathBuf>,
    /// The cgroup v2 directory the services of a node run in, by node, for the nodes that
    /// have one; recorded before it is made.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cgroups: BTreeMap<String, PathBuf>,
    /// The processes, in start order.
    pub services: Vec<ServiceRecord>,
}

/// One running service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Which service.
    pub service: Service,
    /// Its node.
    pub node: String,
    /// Its PID (also its process group).
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat`), so that a reused PID is
    /// never signalled.
    pub start_ticks: u64,
    /// Its log file.
    pub log: PathBuf,
    /// The container it runs in, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Where a program is looked for: `$DISGRAFS_LAB_BIN`, the directory of the running
/// executable and its parent (a cargo target directory: `target/release/lab` next to
/// `target/release/disgrafs-server`; tests run from `target/debug/deps`), the tools directory
/// `./setup` fills (`$DISGRAFS_LAB_TOOLS`, default `/opt/disgrafs-lab`, its `bin/`), then
/// `PATH`.
pub fn binary(program: &str) -> Result<PathBuf, Error> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("DISGRAFS_LAB_BIN").filter(|d| !d.is_empty()) {
        dirs.push(dir.into());
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_owned());
        dirs.extend(dir.parent().map(Path::to_owned));
    }
    dirs.push(tools_dir().join("bin"));
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    for dir in &dirs {
        let path = dir.join(program);
        if path
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return Ok(path);
        }
    }
    Err(Error::NotFound {
        program: program.to_owned(),
        looked: dirs.iter().map(|d| d.display().to_string()).collect(),
        hint: if program.starts_with("disgrafs") {
            "build it with `cargo build --release -p disgrafs-server -p disgrafs-tagger` \
             or set DISGRAFS_LAB_BIN to its directory"
        } else {
            "run ./setup to install it"
        },
    })
}

/// `$DISGRAFS_LAB_TOOLS`, default `/opt/disgrafs-lab`.
fn tools_dir() -> PathBuf {
    std::env::var_os("DISGRAFS_LAB_TOOLS")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/opt/disgrafs-lab"), PathBuf::from)
}

/// The image (in [`REPOSITORY`]) a service runs from on a container node, and its program's
/// path there; `None` for JuiceFS, which always runs as a process (see the module's
/// documentation).
pub fn image_of(service: Service) -> Option<(&'static str, &'static str)> {
    match service {
        Service::Redis => Some(("storage", "/usr/bin/redis-server")),
        Service::Falkordb => Some(("storage", "/opt/falkordb/redis-server")),
        Service::Juicefs => None,
        Service::DisgrafsServer => Some(("server", "/usr/bin/disgrafs-server")),
        Service::DisgrafsTagger => Some(("tagger", "/usr/bin/disgrafs-tagger")),
    }
}

/// FalkorDB's module inside the storage image.
const FALKORDB_MODULE_IN_IMAGE: &str = "/opt/falkordb/falkordb.so";

/// The lab as the starter sees it.
struct Ctx<'a> {
    deploy: &'a [Deployment],
    topology: &'a Topology,
    plan: &'a Plan,
    states: &'a StateDir,
    state: LabState,
    runtime: &'a tokio::runtime::Handle,
    /// Connected on first use (by the first service on a container node).
    engine: Option<Engine>,
}

impl Ctx<'_> {
    fn deployed(&mut self) -> &mut Deployed {
        self.state.deployed.get_or_insert_with(Deployed::default)
    }

    fn save(&self) -> Result<(), Error> {
        self.states
            .write(&self.state)
            .map_err(io_error("writing the lab's state file"))
    }

    /// The namespace of `node` (`None`: the host's).
    fn netns(&self, node: &str) -> Option<String> {
        self.plan
            .steps
            .iter()
            .filter_map(Step::node_namespace)
            .find(|(_, n)| *n == node)
            .map(|(ns, _)| ns.to_owned())
    }

    /// The container of `node`, when it is a container node.
    fn container(&self, node: &str) -> Option<String> {
        self.plan.steps.iter().find_map(|s| match s {
            Step::StartContainer { ns, node: n, .. } if n == node => Some(ns.clone()),
            _ => None,
        })
    }

    fn engine(&mut self) -> Result<Engine, Error> {
        if let Some(engine) = &self.engine {
            return Ok(engine.clone());
        }
        let engine = self.runtime.block_on(Engine::connect())?;
        self.engine = Some(engine.clone());
        Ok(engine)
    }

    /// How a client on node `from` reaches `service` on port `port`.
    fn addr(&self, from: &str, service: Service, port: u16) -> Result<SocketAddr, Error> {
        let node = node_of(self.deploy, service).unwrap_or(from);
        if node == from {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
        node_addr(self.topology, node)
            .map(|ip| SocketAddr::new(ip, port))
            .ok_or_else(|| Error::Service {
                service: service.name(),
                node: node.to_owned(),
                message: format!("node {node} has no address that node {from} could use"),
            })
    }
}

/// The first address of `node` in `topology`, IPv4 first.
pub(crate) fn node_addr(topology: &Topology, node: &str) -> Option<IpAddr> {
    let addresses: Vec<IpAddr> = topology
        .links
        .iter()
        .flat_map(|l| l.endpoints.iter().zip(&l.addresses))
        .filter(|(e, _)| e.node.value == node)
        .flat_map(|(_, addrs)| addrs.iter().map(|c| c.addr))
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
}

/// The state and context of the lab of `plan`, read from its state file in `states`;
/// `runtime` drives the container engine's requests.
fn context<'a>(
    deploy: &'a [Deployment],
    topology: &'a Topology,
    plan: &'a Plan,
    states: &'a StateDir,
    runtime: &'a tokio::runtime::Handle,
) -> Result<Ctx<'a>, Error> {
    let state = states
        .read(&plan.prefix, &plan.lab)
        .map_err(io_error("reading the lab's state file"))?
        .ok_or_else(|| Error::Io {
            what: format!("lab {} has no state file", plan.lab),
            source: io::ErrorKind::NotFound.into(),
        })?;
    Ok(Ctx {
        deploy,
        topology,
        plan,
        states,
        state,
        runtime,
        engine: None,
    })
}

/// Starts the services of `deploy` in the lab of `plan` (which is up, with its state file in
/// `states`), in the order of [`Service::ALL`], each checked before the next one starts, and
/// records them in the state file. The services of the nodes in `isolated` run as processes in
/// a cgroup v2 directory of their own per node, `<this process's cgroup>/<prefix>-<lab>.<node>`,
/// so that a socket redirect can be attached to just them. On an error some may be running:
/// they are recorded, and [`stop_recorded`] (or `lab down`) stops them. `runtime` drives the
/// container engine's requests (for services on container nodes); call this from outside it.
pub fn start(
    deploy: &[Deployment],
    topology: &Topology,
    plan: &Plan,
    states: &StateDir,
    runtime: &tokio::runtime::Handle,
    isolated: &[&str],
) -> Result<Deployed, Error> {
    let mut ctx = context(deploy, topology, plan, states, runtime)?;
    let dir = states.run_dir(&plan.prefix, &plan.lab);
    fs::create_dir_all(dir.join("logs"))
        .map_err(io_error(format!("creating {}", dir.display())))?;
    let token = random_token().map_err(io_error("reading /dev/urandom"))?;
    write_private(&dir.join("token"), &token)?;
    let server = node_of(deploy, Service::DisgrafsServer)
        .and_then(|node| node_addr(topology, node))
        .map(|ip| SocketAddr::new(ip, SERVER_PORT));
    *ctx.deployed() = Deployed {
        dir,
        token,
        server,
        mounts: Vec::new(),
        cgroups: BTreeMap::new(),
        services: Vec::new(),
    };
    ctx.save()?;
    if !isolated.is_empty() {
        let home = cgroup::own().map_err(|message| Error::Service {
            service: "cgroup",
            node: isolated.join(", "),
            message,
        })?;
        for &node in isolated {
            let dir = home.join(format!("{}-{}.{node}", plan.prefix, plan.lab));
            ctx.deployed().cgroups.insert(node.to_owned(), dir.clone());
            ctx.save()?;
            cgroup::make(&dir).map_err(|message| Error::Service {
                service: "cgroup",
                node: node.to_owned(),
                message,
            })?;
        }
    }
    for service in Service::ALL {
        for d in deploy {
            if d.services.iter().any(|s| s.value == service) {
                start_one(&mut ctx, service, &d.node.value)?;
            }
        }
    }
    Ok(ctx.state.deployed.unwrap_or_default())
}

fn start_one(ctx: &mut Ctx<'_>, service: Service, node: &str) -> Result<(), Error> {
    let fail = |message: String| Error::Service {
        service: service.name(),
        node: node.to_owned(),
        message,
    };
    let ns = ctx.netns(node);
    let dir = ctx.deployed().dir.clone();
    let log = dir
        .join("logs")
        .join(format!("{}-{node}.log", service.name()));
    let data = dir.join(format!("{}-{node}", service.name()));
    if matches!(
        service,
        Service::Redis | Service::Falkordb | Service::Juicefs
    ) {
        fs::create_dir_all(&data).map_err(io_error(format!("creating {}", data.display())))?;
    }
    let jfs_mount = dir.join("jfs");
    // The server's data directory; taggers on other nodes see it too (netns nodes share the
    // host's file systems).
    let files = if node_of(ctx.deploy, Service::Juicefs).is_some() {
        jfs_mount.join("disgrafs")
    } else {
        dir.join("disgrafs")
    };
    // The program (found here, or its path in the image) and its arguments.
    let in_container = ctx.container(node).filter(|_| image_of(service).is_some());
    let program = |name: &str| -> Result<OsString, Error> {
        match (&in_container, image_of(service)) {
            (Some(_), Some((_, path))) => Ok(path.into()),
            _ => Ok(binary(name)?.into_os_string()),
        }
    };
    let mut argv: Vec<OsString> = Vec::new();
    let mut env: Vec<(String, String)> = Vec::new();
    match service {
        Service::Redis | Service::Falkordb => {
            let (name, port) = if service == Service::Redis {
                ("redis-server", REDIS_PORT)
            } else {
                ("falkordb-server", FALKORDB_PORT)
            };
            argv.push(program(name)?);
            argv.extend(
                [
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "* -::*",
                    "--protected-mode",
                    "no",
                    "--daemonize",
                    "no",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                ]
                .map(OsString::from),
            );
            argv.push(data.clone().into());
            if service == Service::Falkordb {
                argv.push("--loadmodule".into());
                argv.push(if in_container.is_some() {
                    FALKORDB_MODULE_IN_IMAGE.into()
                } else {
                    tools_dir().join("lib/falkordb.so").into()
                });
            }
        }
        Service::Juicefs => {
            let meta = format!("redis://{}/1", ctx.addr(node, Service::Redis, REDIS_PORT)?);
            let juicefs = binary("juicefs")?;
            let mut format = Command::new(&juicefs);
            format
                .arg("format")
                .arg(&meta)
                .arg(format!("dgl-{}", ctx.plan.lab.replace('_', "-")))
                .args(["--storage", "file", "--bucket"])
                .arg(format!("{}/", data.join("bucket").display()))
                .arg("--no-update");
            let child = spawn(ns.as_deref(), format, &log).map_err(|e| fail(e.to_string()))?;
            wait_exit(child, &log).map_err(|e| fail(format!("juicefs format: {e}")))?;
            fs::create_dir_all(&jfs_mount)
                .map_err(io_error(format!("creating {}", jfs_mount.display())))?;
            ctx.deployed().mounts.push(jfs_mount.clone());
            ctx.save()?;
            argv.push(juicefs.into());
            argv.extend(["mount".into(), meta.into(), jfs_mount.clone().into()]);
            argv.extend(["--cache-dir".into(), data.join("cache").into()]);
            argv.push("--no-usage-report".into());
        }
        Service::DisgrafsServer => {
            fs::create_dir_all(&files)
                .map_err(io_error(format!("creating {}", files.display())))?;
            argv.push(program("disgrafs-server")?);
            argv.extend(["--listen".into(), format!("[::]:{SERVER_PORT}").into()]);
            argv.extend(["--data".into(), files.clone().into()]);
            env.push(("DISGRAFS_TOKEN".to_owned(), ctx.deployed().token.clone()));
            if node_of(ctx.deploy, Service::Redis).is_some() {
                let redis = ctx.addr(node, Service::Redis, REDIS_PORT)?;
                argv.extend(["--redis".into(), format!("redis://{redis}/0").into()]);
                if node_of(ctx.deploy, Service::DisgrafsTagger).is_none() {
                    argv.extend(["--workers".into(), "1".into()]);
                }
            }
            if node_of(ctx.deploy, Service::Falkordb).is_some() {
                let falkordb = ctx.addr(node, Service::Falkordb, FALKORDB_PORT)?;
                argv.extend(["--falkordb".into(), format!("redis://{falkordb}").into()]);
            }
        }
        Service::DisgrafsTagger => {
            let redis = ctx.addr(node, Service::Redis, REDIS_PORT)?;
            argv.push(program("disgrafs-tagger")?);
            argv.extend(["--redis".into(), format!("redis://{redis}/0").into()]);
            argv.extend(["--data".into(), files.clone().into()]);
            argv.extend(["--consumer".into(), format!("tagger-{node}").into()]);
            if node_of(ctx.deploy, Service::Falkordb).is_some() {
                let falkordb = ctx.addr(node, Service::Falkordb, FALKORDB_PORT)?;
                argv.extend(["--falkordb".into(), format!("redis://{falkordb}").into()]);
            }
        }
    }
    let (pid, mut child) = match &in_container {
        Some(_) if ctx.deployed().cgroups.contains_key(node) => {
            return Err(fail(
                "a socket redirect covers this node's services, and it sees only processes in \
                 the node's cgroup: run them as processes (--services processes)"
                    .to_owned(),
            ));
        }
        Some(join) => {
            let (image, _) = image_of(service).unwrap_or_default();
            let spec = JoinedSpec {
                name: container_name(join, service),
                join: join.clone(),
                node: node.to_owned(),
                lab: ctx.plan.lab.clone(),
                prefix: ctx.plan.prefix.clone(),
                image: format!("{REPOSITORY}/{image}:latest"),
                argv: logged_argv(&log, &argv).map_err(&fail)?,
                env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                binds: vec![dir.to_str().map(str::to_owned).ok_or_else(|| {
                    fail(format!("run directory {} is not UTF-8", dir.display()))
                })?],
            };
            let engine = ctx.engine()?;
            let pid = ctx
                .runtime
                .block_on(engine.start_joined(&spec))
                .map_err(|e| fail(e.to_string()))?;
            (pid, None)
        }
        None => {
            let mut command = Command::new(&argv[0]);
            command
                .args(&argv[1..])
                .envs(env.iter().map(|(k, v)| (k, v)));
            if let Some(dir) = ctx.deployed().cgroups.get(node) {
                cgroup::join_on_exec(&mut command, dir).map_err(|e| fail(e.to_string()))?;
            }
            let child = spawn(ns.as_deref(), command, &log).map_err(|e| fail(e.to_string()))?;
            (child.id(), Some(child))
        }
    };
    let record = ServiceRecord {
        service,
        node: node.to_owned(),
        pid,
        start_ticks: start_ticks(pid).unwrap_or(0),
        log: log.clone(),
        container: in_container
            .as_ref()
            .map(|join| container_name(join, service)),
    };
    ctx.deployed().services.push(record.clone());
    ctx.save()?;
    let ready = || -> Result<bool, String> {
        Ok(match service {
            Service::Redis => in_ns(ns.as_deref(), || ping(REDIS_PORT))?,
            Service::Falkordb => in_ns(ns.as_deref(), || ping(FALKORDB_PORT))?,
            Service::Juicefs => mounted(&jfs_mount),
            Service::DisgrafsServer => in_ns(ns.as_deref(), healthz)?,
            Service::DisgrafsTagger => true,
        })
    };
    let started = Instant::now();
    if service == Service::DisgrafsTagger {
        std::thread::sleep(Duration::from_secs(1));
    }
    loop {
        match &mut child {
            Some(child) => {
                if let Some(status) = child.try_wait().map_err(|e| fail(e.to_string()))? {
                    return Err(fail(format!("exited with {status}: {}", tail(&log))));
                }
            }
            None if !running(&record) => {
                return Err(fail(format!("its container exited: {}", tail(&log))));
            }
            None => {}
        }
        if ready().map_err(&fail)? {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(fail(format!(
                "not ready within {READY_TIMEOUT:?}: {}",
                tail(&log)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The name of `service`'s container on the node whose container is `join` (node names have
/// no `.`, so no node container has this name).
fn container_name(join: &str, service: Service) -> String {
    format!("{join}.{}", service.name())
}

/// The command line that runs `argv` in a container with its output appended to `log`:
/// `/bin/sh` (every lab image has busybox) opens the log, then becomes the program.
fn logged_argv(log: &Path, argv: &[OsString]) -> Result<Vec<String>, String> {
    let mut shell = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        r#"log=$1; shift; exec "$@" >> "$log" 2>&1"#.to_owned(),
        "sh".to_owned(),
    ];
    for arg in std::iter::once(log.as_os_str()).chain(argv.iter().map(OsString::as_os_str)) {
        let arg = arg
            .to_str()
            .ok_or_else(|| format!("argument {} is not UTF-8", arg.display()))?;
        shell.push(arg.to_owned());
    }
    Ok(shell)
}

/// Spawns `command` inside namespace `ns` in a process group of its own, output into `log`.
fn spawn(ns: Option<&str>, mut command: Command, log: &Path) -> io::Result<Child> {
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let program = command.get_program().to_string_lossy().into_owned();
    match ns {
        Some(ns) => lab_netlink::Netns::open(ns)
            .map_err(io::Error::other)?
            .run(move || command.spawn())
            .map_err(io::Error::other)?,
        None => command.spawn(),
    }
    .map_err(|e| io::Error::new(e.kind(), format!("starting {program}: {e}")))
}

/// Runs `f` on a thread inside `ns` (or here).
fn in_ns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    match ns {
        Some(ns) => lab_netlink::Netns::open(ns)
            .and_then(|n| n.run(f))
            .map_err(|e| e.to_string()),
        None => Ok(f()),
    }
}

/// Waits for a short-lived command to exit successfully.
fn wait_exit(mut child: Child, log: &Path) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("exited with {status}: {}", tail(log)))
            };
        }
        if started.elapsed() > READY_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "did not finish within {READY_TIMEOUT:?}: {}",
                tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a Redis server on 127.0.0.1:`port` answers `PING`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// Whether the DisGraFS server on 127.0.0.1 answers `GET /healthz` with 200.
fn healthz() -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, SERVER_PORT)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = [0u8; 12];
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        .is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && reply.ends_with(b" 200")
}

/// Whether `path` is a mount point (in this process's mount namespace).
fn mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(want.as_str()))
}

/// The start time of process `pid` in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // Fields after the name start with the state (field 3); starttime is field 22.
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is the recorded process and still running (not a zombie).
fn running(record: &ServiceRecord) -> bool {
    // Reaps it if it is our child that exited; harmless otherwise.
    // SAFETY: waitpid with WNOHANG and a null status pointer only inspects a child.
    unsafe { libc::waitpid(record.pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
    let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", record.pid)) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .is_some_and(|s| s == "Z");
    !zombie && start_ticks(record.pid) == Some(record.start_ticks)
}

/// Sends `signal` to the process group of `record`, or to its process when it runs in a
/// container (the first process there; SIGTERM reaches it only as it handles SIGTERM, SIGKILL
/// always).
fn signal(record: &ServiceRecord, signal: i32) {
    let target = if record.container.is_some() {
        record.pid as i32
    } else {
        -(record.pid as i32)
    };
    // SAFETY: kill has no memory effects; the target is the recorded service.
    unsafe { libc::kill(target, signal) };
}

/// Stops the services in `deployed` (last started first), copies their logs into `logs` if
/// given, removes their cgroups, unmounts its mounts and removes its run directory. Processes
/// that are gone, or whose PID now belongs to another process, are left alone.
pub fn stop(deployed: &Deployed, logs: Option<&Path>) -> Result<(), Error> {
    for record in deployed.services.iter().rev() {
        stop_process(record);
    }
    let copied = logs.map_or(Ok(()), |out| collect_logs(deployed, out));
    let mut cgroups = Ok(());
    for dir in deployed.cgroups.values() {
        if let Err(source) = cgroup::remove(dir) {
            cgroups = cgroups.and(Err(Error::Io {
                what: "removing the services' cgroup".to_owned(),
                source,
            }));
        }
    }
    for mount in &deployed.mounts {
        if mounted(mount) {
            use rustix::mount::{UnmountFlags, unmount};
            unmount(mount, UnmountFlags::empty())
                .or_else(|_| unmount(mount, UnmountFlags::DETACH))
                .map_err(|e| Error::Io {
                    what: format!("unmounting {}", mount.display()),
                    source: e.into(),
                })?;
        }
    }
    if deployed.mounts.iter().any(|m| mounted(m)) {
        return Err(Error::Io {
            what: format!("{} is still mounted", deployed.dir.display()),
            source: io::ErrorKind::ResourceBusy.into(),
        });
    }
    match fs::remove_dir_all(&deployed.dir) {
        Ok(()) => cgroups.and(copied),
        Err(e) if e.kind() == io::ErrorKind::NotFound => cgroups.and(copied),
        Err(e) => Err(io_error(format!("removing {}", deployed.dir.display()))(e)),
    }
}

/// Stops the process of `record` if it still runs: SIGTERM to its group, SIGKILL after
/// [`STOP_TIMEOUT`].
fn stop_process(record: &ServiceRecord) {
    if !running(record) {
        return;
    }
    signal(record, libc::SIGTERM);
    let started = Instant::now();
    while running(record) && started.elapsed() < STOP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(20));
    }
    if running(record) {
        signal(record, libc::SIGKILL);
        while running(record) && started.elapsed() < 2 * STOP_TIMEOUT {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stops `service` (every instance of it) in the lab of `plan` and starts it again on its
/// node, as [`start`] did (in its node's cgroup, if it has one), waiting until it is ready.
pub fn restart(
    deploy: &[Deployment],
    topology: &Topology,
    plan: &Plan,
    states: &StateDir,
    runtime: &tokio::runtime::Handle,
    service: Service,
) -> Result<(), Error> {
    let mut ctx = context(deploy, topology, plan, states, runtime)?;
    let (stopped, kept): (Vec<ServiceRecord>, Vec<ServiceRecord>) =
        std::mem::take(&mut ctx.deployed().services)
            .into_iter()
            .partition(|r| r.service == service);
    for record in &stopped {
        stop_process(record);
    }
    ctx.deployed().services = kept;
    ctx.save()?;
    for record in stopped {
        start_one(&mut ctx, service, &record.node)?;
    }
    Ok(())
}

/// Stops what the state file of lab `lab` records (see [`stop`], which copies the logs into
/// `logs`) and clears the record.
pub fn stop_recorded(
    states: &StateDir,
    prefix: &str,
    lab: &str,
    logs: Option<&Path>,
) -> Result<(), Error> {
    let Some(mut state) = states
        .read(prefix, lab)
        .map_err(io_error("reading the lab's state file"))?
    else {
        return Ok(());
    };
    let Some(deployed) = state.deployed.take() else {
        return Ok(());
    };
    stop(&deployed, logs)?;
    states
        .write(&state)
        .map_err(io_error("writing the lab's state file"))
}

/// Copies the services' logs into `out` (made if missing).
fn collect_logs(deployed: &Deployed, out: &Path) -> Result<(), Error> {
    fs::create_dir_all(out).map_err(io_error(format!("creating {}", out.display())))?;
    for record in &deployed.services {
        if let Some(name) = record.log.file_name() {
            match fs::copy(&record.log, out.join(name)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(format!("copying {}", record.log.display()))(e)),
            }
        }
    }
    Ok(())
}

/// 128 random bits in hex.
fn random_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to `path`, readable by the owner only.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_error(format!("writing {}", path.display())))
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(6);
    format!("{}: {}", path.display(), lines[start..].join(" | "))
}
