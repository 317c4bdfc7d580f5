//! Container nodes and lab images against a real container engine (root). Each test prints a
//! reason and returns early only when no engine can be reached; `./setup` starts one, so in
//! CI they run.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::fs::MetadataExt as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use common::{TestLab, ok};
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

fn images_build(names: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["images", "build"])
        .args(names)
        .output()?;
    ok(out, &format!("lab images build {names:?}"))
}

/// A prefix of the test's own (`tag`, a letter per test, keeps the tests of one process apart):
/// `lab down --all` must not touch labs of parallel tests.
fn prefix(tag: char) -> String {
    format!("c{tag}{:02}", std::process::id() % 100)
}

/// The lab's containers (of its prefix) that exist now.
fn containers_left(lab: &TestLab, engine: &Engine) -> anyhow::Result<Vec<String>> {
    Ok(runtime()?.block_on(engine.containers_of(&lab.prefix, None))?)
}

/// The lab's namespaces (of its prefix) that exist now.
fn namespaces_left(lab: &TestLab) -> anyhow::Result<Vec<String>> {
    let start = format!("{}-", lab.prefix);
    Ok(lab_netlink::Netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&start))
        .collect())
}

/// Asserts that neither a container nor a namespace of the lab's prefix is left.
fn assert_nothing_left(lab: &TestLab, engine: &Engine) -> anyhow::Result<()> {
    let containers = containers_left(lab, engine)?;
    assert!(containers.is_empty(), "containers left: {containers:?}");
    let namespaces = namespaces_left(lab)?;
    assert!(namespaces.is_empty(), "namespaces left: {namespaces:?}");
    Ok(())
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
    let lab = TestLab::toml(MIXED, &prefix('m'))?;
    let started = Instant::now();
    let up = ok(lab.lab(&["up", lab.file_arg()?])?, "lab up")?;
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
    assert_nothing_left(&lab, &engine)?;
    Ok(())
}

/// The shipped containerlab topology: its `linux` nodes (with an `image`) run as containers,
/// node b with its `cmd` given as a list.
#[test]
fn two_linux_clab_runs_its_linux_nodes_as_containers() -> anyhow::Result<()> {
    let Some(engine) = engine_or_skip("two_linux_clab_runs_its_linux_nodes_as_containers")? else {
        return Ok(());
    };
    images_build(&["base"])?;
    let lab = TestLab::shipped_with_prefix("two-linux.clab.yml", &prefix('l'))?;
    lab.up()?;
    let rt = runtime()?;
    for node in ["a", "b"] {
        let name = lab.ns(node);
        let inspected = rt.block_on(engine.docker().inspect_container(&name, None))?;
        let pid = inspected
            .state
            .and_then(|s| s.pid)
            .with_context(|| format!("container {name} has no pid"))?;
        assert_eq!(
            std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino(),
            std::fs::metadata(format!("/run/netns/{name}"))?.ino(),
            "node {node}'s netns is its container's"
        );
        let image = inspected.config.and_then(|c| c.image).unwrap_or_default();
        assert_eq!(image, "disgrafs-lab/base:latest", "node {node}");
    }
    // b runs httpd (its `cmd`), reached from a over the 9000-byte link the `exec` steps addressed.
    let body = http_get(&lab.ns("a"), "192.168.50.2:8080".parse()?, "/bin/sh")?;
    assert!(
        body == std::fs::read("/bin/busybox")?,
        "b served {} bytes",
        body.len()
    );
    let link: serde_json::Value =
        serde_json::from_str(&lab.exec("a", &["ip", "-j", "link", "show", "eth1"])?)?;
    assert_eq!(link[0]["mtu"], 9000, "{link}");

    lab.lab_ok(&["down", &lab.name])?;
    assert_nothing_left(&lab, &engine)?;
    Ok(())
}

/// Without an engine, `lab up` of a topology with containers stops before making anything and
/// says how to get one.
#[test]
fn without_an_engine_up_says_what_to_do_and_creates_nothing() -> anyhow::Result<()> {
    let mut lab = TestLab::shipped_with_prefix("two-linux.clab.yml", &prefix('n'))?;
    let socket = lab.dir.join("no-engine.sock");
    lab.env.push((
        "DOCKER_HOST".to_owned(),
        format!("unix://{}", socket.display()),
    ));
    let out = lab.lab(&["up", lab.file_arg()?])?;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no container engine can be reached") && stderr.contains("./setup"),
        "{stderr}"
    );
    assert!(
        namespaces_left(&lab)?.is_empty(),
        "{:?}",
        namespaces_left(&lab)?
    );
    assert!(
        !lab.state_dir()
            .join(&lab.prefix)
            .join(format!("{}.json", lab.name))
            .exists()
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
    let lab = TestLab::toml(&topology, &prefix('k'))?;
    let state_dir = lab.state_dir();
    let mut child = lab.command(&["up", lab.file_arg()?])?.spawn()?;
    // Kill it (SIGKILL) as soon as the engine has a container of the lab.
    let deadline = Instant::now() + Duration::from_secs(30);
    while containers_left(&lab, &engine)?.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    child.kill()?;
    child.wait()?;
    ensure!(
        !containers_left(&lab, &engine)?.is_empty(),
        "no container was started within 30 s"
    );

    ok(lab.lab(&["down", "--all"])?, "lab down --all")?;
    assert_nothing_left(&lab, &engine)?;
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
    let lab = TestLab::toml(
        "[nodes.client]\n[nodes.store]\nkind = \"container\"\nimage = \"disgrafs-lab/storage\"\n\
         [[links]]\nendpoints = [\"client:eth0\", \"store:eth0\"]\n\
         addresses = [\"10.232.0.1/24\", \"10.232.0.2/24\"]\n",
        &prefix('s'),
    )?;
    ok(lab.lab(&["up", lab.file_arg()?])?, "lab up")?;
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
