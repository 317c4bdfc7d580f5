//! Real service processes for DisGraFS tests: Redis and FalkorDB, each on 127.0.0.1 with a
//! free port and its own temporary directory, and a FUSE-mounted JuiceFS volume ([`JuiceFs`]).
//!
//! Every handle stops what it started when dropped (also when a test panics): servers are
//! killed and reaped, mounts unmounted. FalkorDB and JuiceFS are looked up under the directory
//! that `./setup` installs them to, `/opt/disgrafs-lab`, or under `$DISGRAFS_LAB_TOOLS`.

mod juicefs;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

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

/// A Redis (or FalkorDB) server process on 127.0.0.1, killed when dropped.
///
/// It writes an append-only file with `fsync` on every write into its temporary directory, so
/// [`RedisServer::stop`] followed by [`RedisServer::restart`] models an outage that loses
/// nothing that was acknowledged.
#[derive(Debug)]
pub struct RedisServer {
    flavor: Flavor,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
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

    fn start(flavor: Flavor) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("disgrafs-redis-")
            .tempdir()
            .context("creating the server's data directory")?;
        let mut server = Self {
            flavor,
            port: 0,
            dir,
            child: None,
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

    /// Kills the server (SIGKILL, no shutdown save), as in a crash or an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
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
                self.child = Some(child);
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
