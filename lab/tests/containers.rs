//! Container nodes and lab images against a real container engine (root). Each test prints a
//! reason and returns early only when no engine can be reached; `./setup` starts one, so in
//! CI they run.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lab::node::container::{Engine, LABEL_PREFIX};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The engine, or `None` (with the reason printed) when none can be reached.
fn engine_or_skip(test: &str) -> anyhow::Result<Option<Engine>> {
    match runtime()?.block_on(Engine::connect()) {
        Ok(engine) => Ok(Some(engine)),
        Err(e) => {
            println!("SKIPPED {test}: {e}");
            eprintln!("SKIPPED {test}: {e}");
            Ok(None)
        }
    }
}

/// Runs `lab SUBCOMMAND --state-dir D --prefix P REST...` for `args` = [SUBCOMMAND, REST...].
fn lab(args: &[&str], state_dir: &Path, prefix: &str) -> anyhow::Result<Output> {
    let (subcommand, rest) = args.split_first().context("no subcommand")?;
    Ok(Command::new(env!("CARGO_BIN_EXE_lab"))
        .arg(subcommand)
        .args(["--state-dir", state_dir.to_str().context("utf-8 path")?])
        .args(["--prefix", prefix])
        .args(rest)
        .output()?)
}

fn ok(out: Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn images_build(names: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["images", "build"])
        .args(names)
        .output()?;
    ok(out, &format!("lab images build {names:?}"))
}

/// A topology file in a directory of its own, with its own state directory and prefix;
/// `Drop` runs `lab down --all` for the prefix and removes the directory.
struct TestLab {
    name: String,
    prefix: String,
    dir: PathBuf,
    file: PathBuf,
}

impl TestLab {
    /// `tag` (a letter per test) keeps the prefixes of tests in one process apart.
    fn new(tag: char, topology: &str) -> anyhow::Result<Self> {
        let name = testkit::unique_name();
        // A prefix of its own: `down --all` must not touch labs of parallel tests.
        let prefix = format!("c{tag}{:02}", std::process::id() % 100);
        let dir = std::env::temp_dir().join(format!("lab-test-{name}"));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("topology.toml");
        std::fs::write(&file, format!("name = \"{name}\"\n{topology}"))?;
        Ok(Self {
            name,
            prefix,
            dir,
            file,
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn lab(&self, args: &[&str]) -> anyhow::Result<Output> {
        lab(args, &self.state_dir(), &self.prefix)
    }

    fn ns(&self, node: &str) -> String {
        format!("{}-{}.{node}", self.prefix, self.name)
    }

    fn namespaces_left(&self) -> anyhow::Result<Vec<String>> {
        let start = format!("{}-", self.prefix);
        Ok(lab_netlink::Netns::list()?
            .into_iter()
            .filter(|n| n.starts_with(&start))
            .collect())
    }

    fn containers_left(&self, engine: &Engine) -> anyhow::Result<Vec<String>> {
        Ok(runtime()?.block_on(engine.containers_of(&self.prefix, None))?)
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        match self.lab(&["down", "--all"]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup of lab {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cleanup of lab {}: {e}", self.name),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// client (netns) — router (netns) — web (container running busybox httpd), routed v4.
const MIXED: &str = r#"
[nodes.client]
routes = [{ to = "default", via = "10.231.1.2" }]
[nodes.router]
forwarding = true
[nodes.web]
kind = "container"
image = "disgrafs-lab/base"
cmd = "/bin/busybox httpd -f -p 8080 -h /"
routes = [{ to = "default", via = "10.231.2.1" }]
[[links]]
endpoints = ["client:eth0", "router:eth0"]
addresses = ["10.231.1.1/24", "10.231.1.2/24"]
[[links]]
endpoints = ["router:eth1", "web:eth0"]
addresses = ["10.231.2.1/24", "10.231.2.2/24"]
"#;

/// Fetches `path` over HTTP/1.0 from `addr`, from inside namespace `ns`; returns the body.
fn http_get(ns: &str, addr: SocketAddr, path: &str) -> anyhow::Result<Vec<u8>> {
    let path = path.to_owned();
    lab_netlink::Netns::open(ns)?.run(move || -> anyhow::Result<Vec<u8>> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of HTTP headers")?;
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        ensure!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "GET {path}: {head}"
        );
        Ok(response[split + 4..].to_vec())
    })?
}

#[test]
fn container_and_netns_nodes_pass_traffic_both_ways() -> anyhow::Result<()> {
    let Some(engine) = engine_or_skip("container_and_netns_nodes_pass_traffic_both_ways")? else {
        return Ok(());
    };
    images_build(&["base"])?;
    let lab = TestLab::new('m', MIXED)?;
    let started = Instant::now();
    let up = ok(
        lab.lab(&["up", lab.file.to_str().context("utf-8")?])?,
        "lab up",
    )?;
    println!(
        "lab up with a container node: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(up.contains(&lab.ns("web")), "{up}");

    // The node's namespace is the container's own.
    let name = lab.ns("web");
    let inspected = runtime()?.block_on(engine.docker().inspect_container(&name, None))?;
    let pid = inspected
        .state
        .and_then(|s| s.pid)
        .context("container has no pid")?;
    let container_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
    let named_ns = std::fs::metadata(format!("/run/netns/{name}"))?.ino();
    assert_eq!(
        container_ns, named_ns,
        "the node's netns is the container's"
    );
    let labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(labels.get(LABEL_PREFIX), Some(&lab.prefix), "{labels:?}");

    // netns → container: the container's httpd serves its own /bin/sh (busybox) to the client.
    let body = http_get(&lab.ns("client"), "10.231.2.2:8080".parse()?, "/bin/sh")?;
    let host_busybox = std::fs::read("/bin/busybox")?;
    assert!(
        body == host_busybox,
        "served {} bytes, busybox has {}",
        body.len(),
        host_busybox.len()
    );

    // container → netns: from the container's namespace, through the router, to the client.
    let ping = ok(
        lab.lab(&["exec", "web", "--", "ping", "-c1", "-W3", "10.231.1.1"])?,
        "ping from the container node",
    )?;
    assert!(ping.contains("1 received"), "{ping}");

    ok(lab.lab(&["down", &lab.name])?, "lab down")?;
    assert!(lab.containers_left(&engine)?.is_empty(), "container left");
    assert!(
        lab.namespaces_left()?.is_empty(),
        "{:?}",
        lab.namespaces_left()?
    );
    Ok(())
}

#[test]
fn down_all_removes_containers_after_kill_of_up() -> anyhow::Result<()> {
    let Some(engine) = engine_or_skip("down_all_removes_containers_after_kill_of_up")? else {
        return Ok(());
    };
    images_build(&["base"])?;
    let mut topology = String::from(MIXED);
    for i in 0..3 {
        topology.push_str(&format!(
            "[nodes.more{i}]\nkind = \"container\"\nimage = \"disgrafs-lab/base\"\n\
             [[links]]\nendpoints = [\"router:m{i}\", \"more{i}:eth0\"]\n"
        ));
    }
    let lab = TestLab::new('k', &topology)?;
    let state_dir = lab.state_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["up", lab.file.to_str().context("utf-8")?])
        .args(["--state-dir", state_dir.to_str().context("utf-8")?])
        .args(["--prefix", &lab.prefix])
        .spawn()?;
    // Kill it (SIGKILL) as soon as the engine has a container of the lab.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.containers_left(&engine)?.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    child.kill()?;
    child.wait()?;
    ensure!(
        !lab.containers_left(&engine)?.is_empty(),
        "no container was started within 30 s"
    );

    ok(lab.lab(&["down", "--all"])?, "lab down --all")?;
    assert!(
        lab.containers_left(&engine)?.is_empty(),
        "containers left: {:?}",
        lab.containers_left(&engine)?
    );
    assert!(
        lab.namespaces_left()?.is_empty(),
        "{:?}",
        lab.namespaces_left()?
    );
    let host_links = Command::new("ip").args(["-j", "link", "show"]).output()?;
    assert!(
        !String::from_utf8_lossy(&host_links.stdout).contains(&format!("\"{}", lab.prefix)),
        "host links of prefix {} left",
        lab.prefix
    );
    assert!(!state_dir.join(&lab.prefix).exists(), "state left");
    Ok(())
}

#[test]
fn images_build_twice_rebuilds_nothing_the_second_time() -> anyhow::Result<()> {
    let Some(engine) = engine_or_skip("images_build_twice_rebuilds_nothing_the_second_time")?
    else {
        return Ok(());
    };
    let started = Instant::now();
    let first = images_build(&[])?;
    println!(
        "first build:\n{first}({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let ids = |engine: &Engine| -> anyhow::Result<Vec<String>> {
        let rt = runtime()?;
        lab::images::IMAGES
            .iter()
            .map(|name| {
                let image = rt.block_on(
                    engine
                        .docker()
                        .inspect_image(&format!("{}/{name}:latest", lab::images::REPOSITORY)),
                )?;
                image.id.context("image without id")
            })
            .collect()
    };
    let before = ids(&engine)?;
    let started = Instant::now();
    let second = images_build(&[])?;
    println!(
        "second build:\n{second}({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    for name in lab::images::IMAGES {
        let line = second
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .with_context(|| format!("no line for {name} in\n{second}"))?;
        assert!(line.contains(" unchanged "), "{line}");
    }
    assert!(second.contains(", 0 built,"), "{second}");
    assert_eq!(before, ids(&engine)?, "image ids changed");

    // An unknown image name is invalid input (exit 2), naming the images there are.
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["images", "build", "nosuch"])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown image `nosuch`") && stderr.contains("storage"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn storage_image_runs_redis_and_falkordb() -> anyhow::Result<()> {
    let Some(_engine) = engine_or_skip("storage_image_runs_redis_and_falkordb")? else {
        return Ok(());
    };
    images_build(&["storage"])?;
    let lab = TestLab::new(
        's',
        "[nodes.client]\n[nodes.store]\nkind = \"container\"\nimage = \"disgrafs-lab/storage\"\n\
         [[links]]\nendpoints = [\"client:eth0\", \"store:eth0\"]\n\
         addresses = [\"10.232.0.1/24\", \"10.232.0.2/24\"]\n",
    )?;
    ok(
        lab.lab(&["up", lab.file.to_str().context("utf-8")?])?,
        "lab up",
    )?;
    let client = lab.ns("client");
    // Redis (6379) and FalkorDB (6380) answer RESP from the netns node; both start in the
    // background, so retry for a few seconds.
    for (port, command, expect) in [
        (6379, "PING\r\n", "+PONG"),
        (6380, "GRAPH.QUERY g \"RETURN 1\"\r\n", "*"),
    ] {
        let addr: SocketAddr = format!("10.232.0.2:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = loop {
            let command = command.to_owned();
            let attempt =
                lab_netlink::Netns::open(&client)?.run(move || -> std::io::Result<String> {
                    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    stream.write_all(command.as_bytes())?;
                    let mut buf = [0u8; 512];
                    let n = stream.read(&mut buf)?;
                    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
                })?;
            match attempt {
                Ok(reply) => break reply,
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!("port {port}: {e}")
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        };
        assert!(reply.starts_with(expect), "port {port}: {reply:?}");
        assert!(!reply.starts_with("-ERR"), "port {port}: {reply:?}");
    }
    Ok(())
}
