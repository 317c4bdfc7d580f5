//! Real service processes for DisGraFS tests: Redis and FalkorDB, each on 127.0.0.1 with a
//! free port and its own temporary directory, and a FUSE-mounted JuiceFS volume ([`JuiceFs`]).
//! Redis and FalkorDB also run from the lab's own storage image (`lab images build storage`),
//! in a container started through testcontainers ([`RedisServer::redis_in_storage_image`]).
//!
//! Every handle stops what it started when dropped (also when a test panics): servers are
//! killed and reaped or their containers removed, mounts unmounted. FalkorDB and JuiceFS are
//! looked up under the directory that `./setup` installs them to, `/opt/disgrafs-lab`, or under
//! `$DISGRAFS_LAB_TOOLS`.

mod juicefs;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use testcontainers::{
    Container, GenericImage, ImageExt as _, core::Mount, runners::SyncRunner as _,
};

pub use juicefs::{JuiceFs, Unmounted, juicefs_bin, mount_type};

/// How long a started service may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The directory holding `bin/falkordb-server`, `bin/juicefs` and `lib/falkordb.so`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("DISGRAFS_LAB_TOOLS")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("/opt/disgrafs-lab"), PathBuf::from)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 for a port")?;
    Ok(listener
        .local_addr()
        .context("reading the bound port")?
        .port())
}

/// Which server a [`RedisServer`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Debian's `redis-server`.
    Redis,
    /// FalkorDB: the `falkordb-server` (a redis-server) with the FalkorDB module loaded.
    FalkorDb,
}

/// The lab's storage image (Redis and FalkorDB), as `lab images build storage` tags it.
pub const STORAGE_IMAGE: (&str, &str) = ("disgrafs-lab/storage", "latest");

/// A Redis (or FalkorDB) server on 127.0.0.1, killed (or its container removed) when dropped.
///
/// It writes an append-only file with `fsync` on every write into its temporary directory, so
/// [`RedisServer::stop`] followed by [`RedisServer::restart`] models an outage that loses
/// nothing that was acknowledged.
#[derive(Debug)]
pub struct RedisServer {
    flavor: Flavor,
    port: u16,
    dir: tempfile::TempDir,
    /// Whether it runs in a container of [`STORAGE_IMAGE`].
    in_image: bool,
    running: Option<Running>,
}

/// A started server: a child process, or a container.
#[derive(Debug)]
enum Running {
    Process(Child),
    Container(Box<Container<GenericImage>>),
}

/// Runs `f` on a thread of its own: testcontainers' blocking API runs a Tokio runtime of its
/// own, which must not happen on a thread that is inside one (as in `#[tokio::test]`s).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl RedisServer {
    /// Starts Debian's `redis-server` (found on `PATH`).
    pub fn redis() -> anyhow::Result<Self> {
        Self::start(Flavor::Redis)
    }

    /// Starts FalkorDB from [`tools_dir`].
    pub fn falkordb() -> anyhow::Result<Self> {
        Self::start(Flavor::FalkorDb)
    }

    /// Starts Redis from the lab's storage image (host network, so on 127.0.0.1), building
    /// the image first when the engine has none; `None` (saying why) when no container engine
    /// answers.
    pub fn redis_in_storage_image() -> anyhow::Result<Option<Self>> {
        Self::start_in_image(Flavor::Redis)
    }

    /// Starts FalkorDB from the lab's storage image, like
    /// [`RedisServer::redis_in_storage_image`].
    pub fn falkordb_in_storage_image() -> anyhow::Result<Option<Self>> {
        Self::start_in_image(Flavor::FalkorDb)
    }

    fn start_in_image(flavor: Flavor) -> anyhow::Result<Option<Self>> {
        if !build_storage_image()? {
            return Ok(None);
        }
        Self::start_as(flavor, true).map(Some)
    }

    fn start(flavor: Flavor) -> anyhow::Result<Self> {
        Self::start_as(flavor, false)
    }

    fn start_as(flavor: Flavor, in_image: bool) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("disgrafs-redis-")
            .tempdir()
            .context("creating the server's data directory")?;
        let mut server = Self {
            flavor,
            port: 0,
            dir,
            in_image,
            running: None,
        };
        // Another process may take the free port before the server binds it: try a few.
        let mut last = None;
        for _ in 0..3 {
            server.port = free_port()?;
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the server did not start")))
    }

    /// The URL clients connect to, `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL, no shutdown save; a container is removed), as in a crash
    /// or an outage.
    pub fn stop(&mut self) {
        match self.running.take() {
            Some(Running::Process(mut child)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Some(Running::Container(container)) => {
                if let Err(e) = off_runtime(|| container.rm()) {
                    eprintln!("removing the storage container: {e}");
                }
            }
            None => {}
        }
    }

    /// Starts the server again on the same port with the same data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        if self.in_image {
            return self.spawn_container();
        }
        let log = self.dir.path().join("server.log");
        let mut command = match self.flavor {
            Flavor::Redis => Command::new("redis-server"),
            Flavor::FalkorDb => Command::new(tools_dir().join("bin/falkordb-server")),
        };
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log);
        if self.flavor == Flavor::FalkorDb {
            command
                .arg("--loadmodule")
                .arg(tools_dir().join("lib/falkordb.so"));
        }
        let program = format!("{:?}", command.get_program());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} (run ./setup to install it)"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().context("polling the server")? {
                bail!(
                    "{program} on port {} exited with {status}: {}",
                    self.port,
                    tail(&log)
                );
            }
            if ping(self.port) {
                self.running = Some(Running::Process(child));
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{program} on port {} did not answer PING within {READY_TIMEOUT:?}: {}",
                    self.port,
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RedisServer {
    /// Starts the server in a container of [`STORAGE_IMAGE`] on the host's network, its data
    /// directory mounted at `/data`.
    fn spawn_container(&mut self) -> anyhow::Result<()> {
        let (program, module) = match self.flavor {
            Flavor::Redis => ("/usr/bin/redis-server", None),
            Flavor::FalkorDb => (
                "/opt/falkordb/redis-server",
                Some("/opt/falkordb/falkordb.so"),
            ),
        };
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            "/data",
            "--logfile",
            "/data/server.log",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(module) = module {
            args.extend(["--loadmodule".to_owned(), module.to_owned()]);
        }
        let data = self.dir.path().to_str().context("utf-8 data directory")?;
        let request = GenericImage::new(STORAGE_IMAGE.0, STORAGE_IMAGE.1)
            .with_entrypoint(program)
            .with_network("host")
            .with_mount(Mount::bind_mount(data, "/data"))
            .with_cmd(args);
        let container = off_runtime(|| request.start())
            .with_context(|| format!("starting {program} from {}", STORAGE_IMAGE.0))?;
        let log = self.dir.path().join("server.log");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ping(self.port) {
                self.running = Some(Running::Container(Box::new(container)));
                return Ok(());
            }
            let running = off_runtime(|| container.is_running()).unwrap_or(false);
            if !running || Instant::now() > deadline {
                let _ = off_runtime(|| container.rm());
                bail!(
                    "{program} in {} on port {} {}: {}",
                    STORAGE_IMAGE.0,
                    self.port,
                    if running {
                        format!("did not answer PING within {READY_TIMEOUT:?}")
                    } else {
                        "exited".to_owned()
                    },
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Makes sure the engine has [`STORAGE_IMAGE`], running `lab images build storage` when it
/// does not; `false`, saying why, when no container engine answers.
fn build_storage_image() -> anyhow::Result<bool> {
    let reference = format!("{}:{}", STORAGE_IMAGE.0, STORAGE_IMAGE.1);
    let present = off_runtime(|| -> anyhow::Result<Result<bool, String>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let docker = match testcontainers::bollard::Docker::connect_with_local_defaults() {
                Ok(docker) => docker,
                Err(e) => return Ok(Err(e.to_string())),
            };
            if let Err(e) = docker.ping().await {
                return Ok(Err(e.to_string()));
            }
            Ok(Ok(docker.inspect_image(&reference).await.is_ok()))
        })
    })?;
    match present {
        Err(why) => {
            eprintln!("SKIPPED (needs a container engine for {reference}): {why}");
            Ok(false)
        }
        Ok(true) => Ok(true),
        Ok(false) => {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let out = Command::new(env!("CARGO"))
                .current_dir(&workspace)
                .args([
                    "run", "--quiet", "-p", "lab", "--", "images", "build", "storage",
                ])
                .output()
                .context("running `cargo run -p lab -- images build storage`")?;
            anyhow::ensure!(
                out.status.success(),
                "lab images build storage: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(true)
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a server on `port` answers `PING` with `PONG` (not while it is loading its data).
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

/// The last lines of a log file, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(8);
    format!("{}: {}", path.display(), lines[start..].join(" | "))
}
