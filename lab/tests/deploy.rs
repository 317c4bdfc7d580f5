//! `[deploy]` against the real kernel and real services (root): `lab up` starts Redis,
//! FalkorDB, JuiceFS, the DisGraFS server and a tagger inside the lab's nodes, the HTTP
//! workloads talk to that server from the client node, and `lab down` — run as after a crash
//! of whatever started them, from the state file alone — stops every process and leaves no
//! mount behind. Needs the disgrafs binaries: the tests build them first (`cargo build`).

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use common::TestLab;
use std::os::unix::fs::MetadataExt as _;

use lab::deploy::{Deployed, Service};
use lab::node::container::Engine;
use lab::state::StateDir;
use lab::workloads::{Http, HttpOp, Site, Stop, http};

/// Builds disgrafs-server and disgrafs-tagger into this test's target directory (the lab finds
/// them next to its own binary).
fn build_disgrafs() -> anyhow::Result<()> {
    let mut command = Command::new(env!("CARGO"));
    command.args([
        "build",
        "--quiet",
        "-p",
        "disgrafs-server",
        "-p",
        "disgrafs-tagger",
    ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let status = command.status().context("running cargo build")?;
    ensure!(
        status.success(),
        "cargo build of the disgrafs binaries: {status}"
    );
    Ok(())
}

const PREFIX: &str = "dglt";

/// The lab's state directory.
fn states(lab: &TestLab) -> StateDir {
    StateDir::new(lab.state_dir())
}

/// The services its state file records.
fn deployed(lab: &TestLab) -> anyhow::Result<Deployed> {
    states(lab)
        .read(PREFIX, &lab.name)?
        .context("no state file")?
        .deployed
        .context("no services recorded")
}

/// The bind mount of `node`'s namespace.
fn netns(lab: &TestLab, node: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{}", lab.ns(node)))
}

/// Client, server and tagger on one bridge, addresses from the pool.
const TOPOLOGY: &str = r#"
[nodes.lan]
kind = "bridge"
[nodes.client]
[nodes.server]
[nodes.tagger]
[[links]]
endpoints = ["client:eth0", "lan:p1"]
[[links]]
endpoints = ["server:eth0", "lan:p2"]
[[links]]
endpoints = ["tagger:eth0", "lan:p3"]
[deploy]
server = ["redis", "falkordb", "juicefs", "disgrafs-server"]
tagger = ["disgrafs-tagger"]
"#;

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').and_then(|i| s.get(i + 2..i + 3)) != Some("Z"))
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

/// `GET path` from inside namespace `netns`: status and body.
fn get(netns: &Path, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let ns = lab_netlink::Netns::open(
        netns
            .file_name()
            .and_then(|n| n.to_str())
            .context("netns name")?,
    )?;
    let path = path.to_owned();
    ns.run(move || -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let status = text.get(9..12).context("short response")?.parse()?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    })?
}

#[test]
fn deployed_disgrafs_serves_http_workloads_and_lab_down_stops_everything() -> anyhow::Result<()> {
    build_disgrafs()?;
    let lab = TestLab::toml(TOPOLOGY, PREFIX)?;
    let deployed = up_with_services(&lab, "processes")?;
    for s in &deployed.services {
        assert_eq!(s.container, None, "{:?} runs in a container", s.service);
    }
    serves_http_workloads_and_lab_down_stops_everything(&lab, &deployed)
}

/// The same lab with its services in containers of the lab's images: the server and tagger
/// nodes are containers, each service but JuiceFS a container in its node's namespace.
#[test]
fn deployed_disgrafs_in_containers_serves_http_workloads_and_lab_down_stops_everything()
-> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let engine = match runtime.block_on(Engine::connect()) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return Ok(());
        }
    };
    let built = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["images", "build"])
        .output()?;
    common::ok(built, "lab images build")?;
    let lab = TestLab::toml(TOPOLOGY, PREFIX)?;
    let deployed = up_with_services(&lab, "containers")?;
    for s in &deployed.services {
        let Some(container) = &s.container else {
            assert_eq!(
                s.service,
                Service::Juicefs,
                "{:?} is no container",
                s.service
            );
            continue;
        };
        let inspected = runtime.block_on(engine.docker().inspect_container(container, None))?;
        let pid = inspected.state.and_then(|st| st.pid).context("no pid")?;
        assert_eq!(pid, i64::from(s.pid), "{container}");
        assert_eq!(
            std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino(),
            std::fs::metadata(netns(&lab, &s.node))?.ino(),
            "{container} is in node {}'s namespace",
            s.node
        );
    }
    serves_http_workloads_and_lab_down_stops_everything(&lab, &deployed)?;
    let left = runtime.block_on(engine.containers_of(PREFIX, Some(&lab.name)))?;
    assert!(left.is_empty(), "containers left: {left:?}");
    Ok(())
}

/// Without an engine, `--services auto` (the default) runs the services as processes.
#[test]
fn without_an_engine_the_services_run_as_processes() -> anyhow::Result<()> {
    build_disgrafs()?;
    let mut lab = TestLab::toml(
        "[nodes.client]\n[nodes.server]\n[[links]]\nendpoints = [\"client:eth0\", \"server:eth0\"]\n\
         [deploy]\nserver = [\"redis\", \"disgrafs-server\"]\n",
        PREFIX,
    )?;
    let socket = lab.dir.join("no-engine.sock");
    lab.env.push((
        "DOCKER_HOST".to_owned(),
        format!("unix://{}", socket.display()),
    ));
    let out = lab.lab(&["up", lab.file_arg()?])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "lab up: {stderr}");
    assert!(
        stderr.contains("run as processes") && stderr.contains("no container engine"),
        "{stderr}"
    );
    let deployed = deployed(&lab)?;
    assert_eq!(deployed.services.len(), 2);
    for s in &deployed.services {
        assert_eq!(s.container, None);
        assert!(running(s.pid), "{:?} is not running", s.service);
    }
    let server = deployed.server.context("no server address")?;
    let (code, _) = get(&netns(&lab, "client"), server, "/healthz")?;
    assert_eq!(code, 200);
    Ok(())
}

/// `lab up --services SERVICES` of `lab`, checking its status output; the services recorded.
fn up_with_services(lab: &TestLab, services: &str) -> anyhow::Result<Deployed> {
    let out = lab.lab(&["up", lab.file_arg()?, "--services", services])?;
    ensure!(
        out.status.success(),
        "lab up --services {services}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8(out.stdout)?;
    assert!(status.contains("DisGraFS UI: http://"), "{status}");
    deployed(lab)
}

/// Checks the services of `TOPOLOGY` (up, recorded in `deployed`) with HTTP workloads from the
/// client node, then `lab down` and that nothing of them is left.
fn serves_http_workloads_and_lab_down_stops_everything(
    lab: &TestLab,
    deployed: &Deployed,
) -> anyhow::Result<()> {
    let services: Vec<(Service, &str)> = deployed
        .services
        .iter()
        .map(|s| (s.service, s.node.as_str()))
        .collect();
    assert_eq!(
        services,
        [
            (Service::Redis, "server"),
            (Service::Falkordb, "server"),
            (Service::Juicefs, "server"),
            (Service::DisgrafsServer, "server"),
            (Service::DisgrafsTagger, "tagger"),
        ]
    );
    for s in &deployed.services {
        assert!(
            running(s.pid),
            "{:?} (pid {}) is not running",
            s.service,
            s.pid
        );
        assert!(s.log.exists(), "{} is missing", s.log.display());
    }
    let mount = deployed.dir.join("jfs");
    assert!(
        mounted(&mount),
        "JuiceFS is not mounted on {}",
        mount.display()
    );
    let server = deployed.server.context("no server address")?;
    assert_eq!(server.port(), 8080);

    let client = Site {
        netns: Some(netns(lab, "client")),
        cpus: Vec::new(),
    };
    let run = |op: HttpOp, connections: usize, count: u64| {
        http(
            &client,
            &Http {
                addr: server,
                token: deployed.token.clone(),
                op,
                connections,
                stop: Stop::Count(count),
            },
        )
    };
    let up = run(
        HttpOp::Upload {
            size: 5000,
            files: 2,
        },
        2,
        3,
    )?;
    assert_eq!((up.requests, up.bytes), (6, 30_000));
    assert_eq!(up.latency.len(), 6);
    let down = run(HttpOp::Download { size: 70_000 }, 2, 4)?;
    assert_eq!((down.requests, down.bytes), (8, 8 * 70_000));
    // The files live on the JuiceFS mount.
    let stored = mount.join("disgrafs/files/lab-download-70000.bin");
    assert_eq!(std::fs::metadata(&stored)?.len(), 70_000);
    let found = run(
        HttpOp::Search {
            query: "name=lab-search".to_owned(),
        },
        1,
        3,
    )?;
    assert_eq!(found.requests, 3);
    assert!(found.bytes > 0);

    // The tagger on its own node tags through Redis and FalkorDB on the server node.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = get(
            &netns(lab, "client"),
            server,
            "/api/files/lab-search-0.txt/tags",
        )?;
        if code == 200 && body.contains("\"tag\"") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no tags for lab-search-0.txt after 60 s ({code}: {body}); tagger log: {}",
            std::fs::read_to_string(&deployed.services[4].log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A wrong token is refused, and the workload says so.
    let refused = http(
        &client,
        &Http {
            addr: server,
            token: "wrong".to_owned(),
            op: HttpOp::Upload { size: 10, files: 1 },
            connections: 1,
            stop: Stop::Count(1),
        },
    )
    .expect_err("a wrong token must fail the workload");
    assert!(refused.to_string().contains("401"), "{refused}");

    // `lab down` works from the state file alone, as after a crash of whatever started them.
    let out = lab.lab(&["down", &lab.name])?;
    ensure!(
        out.status.success(),
        "lab down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in &deployed.services {
        assert!(
            !running(s.pid),
            "{:?} (pid {}) still runs",
            s.service,
            s.pid
        );
    }
    assert!(!mounted(&mount), "{} is still mounted", mount.display());
    assert!(!deployed.dir.exists(), "{} is left", deployed.dir.display());
    assert!(!netns(lab, "server").exists());
    Ok(())
}

#[test]
fn a_service_that_fails_its_check_takes_the_lab_down() -> anyhow::Result<()> {
    let mut lab = TestLab::toml(
        "[nodes.client]\n[nodes.server]\n[[links]]\nendpoints = [\"client:eth0\", \"server:eth0\"]\n\
         [deploy]\nserver = [\"redis\", \"disgrafs-server\"]\n",
        PREFIX,
    )?;
    let bin = lab.dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let fake = bin.join("disgrafs-server");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'cannot open the data directory' >&2\nexit 3\n",
    )?;
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    lab.env
        .push(("DISGRAFS_LAB_BIN".to_owned(), bin.display().to_string()));
    let out = lab.lab(&["up", lab.file_arg()?, "--services", "processes"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lab up succeeded: {stderr}");
    assert!(
        stderr.contains("disgrafs-server on node server: exited with exit status: 3")
            && stderr.contains("cannot open the data directory"),
        "{stderr}"
    );
    assert!(
        states(&lab).read(PREFIX, &lab.name)?.is_none(),
        "state left"
    );
    assert!(!netns(&lab, "server").exists(), "namespace left");
    let run_dir = states(&lab).run_dir(PREFIX, &lab.name);
    assert!(!run_dir.exists(), "run directory left");
    // Redis, started before the server failed, is stopped too.
    let run_dir = run_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc")? {
        let cmdline = std::fs::read(entry?.path().join("cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&run_dir),
            "a process of the lab still runs: {}",
            String::from_utf8_lossy(&cmdline)
        );
    }
    Ok(())
}

/// A socket redirect on a node that runs services covers the services' connections to each
/// other: they run in a cgroup of their node, the DisGraFS server is restarted every window so
/// that its connections to Redis and FalkorDB are new, and they are redirected in the windows
/// with the redirect only. Everything is gone afterwards, the cgroup too.
#[test]
fn a_socket_redirect_covers_the_connections_between_deployed_services() -> anyhow::Result<()> {
    build_disgrafs()?;
    let lab = TestLab::toml(
        r#"seed = 3
repetitions = 2
warmup = "300ms"
window = "1500ms"
[topology]
name = "t"
[topology.nodes.client]
[topology.nodes.server]
[[topology.links]]
endpoints = ["client:eth0", "server:eth0"]
[deploy]
server = ["redis", "falkordb", "disgrafs-server"]
[[variants]]
name = "off"
[[variants]]
name = "on"
accelerators = [{ kind = "sock_redirect", node = "server", ports = [6379, 6380] }]
[[workloads]]
kind = "http_upload"
from = "client"
to = "server:8080"
size = 2000
files = 2
connections = 1
[[workloads]]
kind = "http_search"
from = "client"
to = "server:8080"
query = "name=lab"
connections = 1
"#,
        PREFIX,
    )?;
    let out_dir = lab.dir.join("out");
    let out = lab.lab(&[
        "run",
        lab.file.to_str().context("utf-8")?,
        "--out",
        out_dir.to_str().context("utf-8")?,
    ])?;
    ensure!(
        out.status.success(),
        "lab run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = lab::report::Report::read(&out_dir)?;
    ensure!(report.complete, "{report:?}");
    let [off, on] = &report.variants[..] else {
        anyhow::bail!("{:?}", report.variants);
    };
    let metric = |name: &str| format!("sock_redirect.server-services.{name}");
    ensure!(off.values(&metric("established")).is_empty(), "{off:?}");
    for rep in &on.repetitions {
        let get = |name: &str| rep.get(&metric(name)).copied().unwrap_or(-1.0);
        // The restarted server's connections to Redis and FalkorDB (made before the window's
        // counters are read) carry the uploads' and searches' queries, redirected.
        ensure!(get("redirected_msgs") > 10.0, "{rep:?}");
        ensure!(get("redirected_share") > 0.5, "{rep:?}");
        ensure!(
            rep.get("http_upload.requests_per_s") > Some(&0.0),
            "{rep:?}"
        );
    }
    // Started once, then again at the start of each of the four windows.
    let log = std::fs::read_to_string(out_dir.join("services/disgrafs-server-server.log"))?;
    assert_eq!(
        log.matches("disgrafs-server listening on").count(),
        5,
        "{log}"
    );
    let cgroup = testkit::own_cgroup2_dir()?.join(format!("{PREFIX}-{}.server", lab.name));
    ensure!(!cgroup.exists(), "{} is left", cgroup.display());
    ensure!(!netns(&lab, "server").exists(), "namespace left");
    Ok(())
}
