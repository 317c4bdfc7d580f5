//! Root tests through the kernel: every namespace is a `testkit::NetNs` (or guarded), so
//! nothing is left behind when a test fails; no link is made in the host namespace.
//!
//! The netem tests need a kernel with `sch_netem`; they are ignored in a plain run, and
//! `netem_tests_pass_on_a_kernel_with_netem` runs them — here, or in one QEMU guest with a
//! Debian kernel when this kernel has no netem.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use lab_netlink::{Error, Netem, Netlink, Netns, Probability, Route, Veth};
use testkit::unique_name;

/// A namespace made by the code under test, deleted on drop.
struct Owned(Option<Netns>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            ns.delete().expect("delete test namespace");
        }
    }
}

/// A testkit namespace with a netlink connection into it.
struct Node {
    ns: testkit::NetNs,
    netns: Netns,
    nl: Netlink,
}

impl Node {
    fn new() -> anyhow::Result<Self> {
        let ns = testkit::NetNs::new()?;
        let netns = Netns::open(ns.name())?;
        let nl = netns.connect()?;
        Ok(Self { ns, netns, nl })
    }

    /// Brings lo and `link` up and adds `addrs` to `link`.
    async fn addresses(&self, link: &str, addrs: &[(IpAddr, u8)]) -> anyhow::Result<()> {
        self.nl.set_up("lo").await?;
        self.nl.set_up(link).await?;
        let index = self.nl.link_index(link).await?;
        for &(addr, len) in addrs {
            self.nl.add_address(index, addr, len).await?;
        }
        Ok(())
    }

    /// Runs a command inside; returns its stdout, fails with its stderr.
    fn cmd(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .ns
            .run(|| Command::new(program).args(args).output())??;
        ensure!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().expect("test address"))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("test address"))
}

/// Sends a UDP datagram from `from` to `to` at `addr`, which echoes it; returns the round trip.
fn udp_round_trip(from: &Node, to: &Node, addr: IpAddr) -> anyhow::Result<Duration> {
    let (ready, bound) = mpsc::channel();
    thread::scope(|scope| {
        let server = scope.spawn(|| {
            to.ns.run(|| -> io::Result<()> {
                let socket = UdpSocket::bind((addr, 7777))?;
                socket.set_read_timeout(Some(Duration::from_secs(3)))?;
                let _ = ready.send(());
                let mut buf = [0; 64];
                let (n, peer) = socket.recv_from(&mut buf)?;
                socket.send_to(&buf[..n], peer)?;
                Ok(())
            })
        });
        bound
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("echo server at {addr} did not start"))?;
        let rtt = from.ns.run(|| -> io::Result<Duration> {
            let any: IpAddr = if addr.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            let socket = UdpSocket::bind((any, 0))?;
            socket.set_read_timeout(Some(Duration::from_secs(3)))?;
            let start = Instant::now();
            socket.send_to(b"ping", (addr, 7777))?;
            let mut buf = [0; 64];
            let (n, _) = socket.recv_from(&mut buf)?;
            if &buf[..n] != b"ping" {
                return Err(io::Error::other("wrong echo"));
            }
            Ok(start.elapsed())
        })?;
        let served = server.join().map_err(|_| anyhow!("echo server panicked"))?;
        served?.with_context(|| format!("echo server at {addr}"))?;
        rtt.with_context(|| format!("UDP round trip to {addr}"))
    })
}

#[tokio::test]
async fn netns_is_created_entered_listed_and_deleted() -> anyhow::Result<()> {
    let name = unique_name();
    let ns = Owned(Some(Netns::create(&name)?));
    let netns = ns.0.as_ref().context("namespace")?;
    assert!(Netns::list()?.contains(&name));
    let ip_list = String::from_utf8(Command::new("ip").args(["netns", "list"]).output()?.stdout)?;
    assert!(
        ip_list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&name)),
        "{ip_list}"
    );

    use std::os::unix::fs::MetadataExt as _;
    let host = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    let inside = netns
        .run(|| std::fs::metadata("/proc/thread-self/ns/net"))??
        .ino();
    assert_ne!(host, inside);
    assert_eq!(std::fs::metadata(netns.path())?.ino(), inside);

    // A fresh namespace holds only a loopback device, down.
    let nl = netns.connect()?;
    let links = nl.links().await?;
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!((links[0].name.as_str(), links[0].up), ("lo", false));
    nl.set_up("lo").await?;
    assert!(nl.link("lo").await?.up);
    drop(nl);

    let taken = Netns::create(&name).expect_err("a taken name was accepted");
    assert_eq!(taken.raw_os_error(), Some(17), "{taken}");
    assert!(taken.to_string().contains(&name), "{taken}");

    let mut ns = ns;
    ns.0.take().context("namespace")?.delete()?;
    assert!(!Netns::list()?.contains(&name));
    assert!(Netns::open(&name).is_err());
    Ok(())
}

#[tokio::test]
async fn bad_names_are_rejected_without_touching_the_kernel() -> anyhow::Result<()> {
    for bad in ["", ".", "a/b", "x\0y"] {
        let err = Netns::create(bad).expect_err("bad netns name accepted");
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
    }
    let node = Node::new()?;
    let err = node
        .nl
        .add_veth(&Veth::new("name-longer-than-15", "p"))
        .await
        .expect_err("long name accepted");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    let err = node
        .nl
        .link("nosuchlink")
        .await
        .expect_err("found a missing link");
    assert!(matches!(err, Error::NoSuchLink { .. }), "{err}");
    assert!(err.to_string().contains(node.ns.name()), "{err}");
    Ok(())
}

#[tokio::test]
async fn veth_pair_goes_straight_into_namespaces_and_carries_v4_and_v6() -> anyhow::Result<()> {
    let (a, b) = (Node::new()?, Node::new()?);
    let host = Netlink::current()?;
    let (end_a, end_b) = (unique_name(), unique_name());
    host.add_veth(
        &Veth::new(&end_a, &end_b)
            .netns(&a.netns)
            .peer_netns(&b.netns)
            .mtu(1400)
            .up(),
    )
    .await?;
    // Nothing in the host namespace.
    let host_links = host.links().await?;
    assert!(
        !host_links
            .iter()
            .any(|l| l.name == end_a || l.name == end_b)
    );

    // Only the first end can be up at creation.
    assert!(a.nl.link(end_a.as_str()).await?.up);
    assert!(!b.nl.link(end_b.as_str()).await?.up);
    for (node, end) in [(&a, &end_a), (&b, &end_b)] {
        let link = node.nl.link(end.as_str()).await?;
        assert_eq!((link.mtu, link.master), (1400, None), "{link:?}");
        let shown: serde_json::Value =
            serde_json::from_str(&node.cmd("ip", &["-j", "link", "show", end])?)?;
        assert_eq!(shown[0]["mtu"], 1400, "{shown}");
    }
    a.addresses(&end_a, &[(v4("10.9.0.1"), 24), (v6("fd09::1"), 64)])
        .await?;
    b.addresses(&end_b, &[(v4("10.9.0.2"), 24), (v6("fd09::2"), 64)])
        .await?;
    // IPv6 works at once: no tentative address (DAD off).
    assert!(
        !a.cmd("ip", &["-6", "addr", "show", "tentative"])?
            .contains("fd09")
    );
    udp_round_trip(&a, &b, v4("10.9.0.2"))?;
    udp_round_trip(&b, &a, v4("10.9.0.1"))?;
    udp_round_trip(&a, &b, v6("fd09::2"))?;
    udp_round_trip(&b, &a, v6("fd09::1"))?;

    // Down on one end stops traffic.
    a.nl.set_down(end_a.as_str()).await?;
    assert!(!a.nl.link(end_a.as_str()).await?.up);
    assert!(udp_round_trip(&a, &b, v4("10.9.0.2")).is_err());
    Ok(())
}

#[tokio::test]
async fn bridge_connects_namespaces_v4_and_v6() -> anyhow::Result<()> {
    let (switch, h1, h2) = (Node::new()?, Node::new()?, Node::new()?);
    switch.nl.add_bridge("br0").await?;
    let bridge = switch.nl.link("br0").await?;
    assert!(bridge.up);
    for (i, host) in [&h1, &h2].into_iter().enumerate() {
        let port = format!("p{i}");
        switch
            .nl
            .add_veth(
                &Veth::new(&port, "eth0")
                    .peer_netns(&host.netns)
                    .master(bridge.index)
                    .up(),
            )
            .await?;
        let port = switch.nl.link(port.as_str()).await?;
        assert_eq!((port.master, port.up), (Some(bridge.index), true));
    }
    h1.addresses("eth0", &[(v4("10.8.0.1"), 24), (v6("fd08::1"), 64)])
        .await?;
    h2.addresses("eth0", &[(v4("10.8.0.2"), 24), (v6("fd08::2"), 64)])
        .await?;
    udp_round_trip(&h1, &h2, v4("10.8.0.2"))?;
    udp_round_trip(&h2, &h1, v6("fd08::1"))?;

    // Released from the bridge, h2's port no longer forwards.
    switch.nl.set_nomaster("p1").await?;
    assert_eq!(switch.nl.link("p1").await?.master, None);
    assert!(udp_round_trip(&h1, &h2, v4("10.8.0.2")).is_err());
    switch.nl.set_master("p1", bridge.index).await?;
    udp_round_trip(&h1, &h2, v4("10.8.0.2"))?;
    Ok(())
}

#[tokio::test]
async fn link_settings_are_read_back_and_links_deleted() -> anyhow::Result<()> {
    let node = Node::new()?;
    node.nl.add_veth(&Veth::new("a0", "b0")).await?;
    let a0 = node.nl.link("a0").await?;
    assert_eq!((a0.mtu, a0.up), (1500, false));
    node.nl.set_mtu(a0.index, 9000).await?;
    node.nl.set_up(a0.index).await?;
    let a0 = node.nl.link(a0.index).await?;
    assert_eq!((a0.mtu, a0.up, a0.name.as_str()), (9000, true, "a0"));
    let shown: serde_json::Value =
        serde_json::from_str(&node.cmd("ip", &["-j", "link", "show", "a0"])?)?;
    assert_eq!(shown[0]["mtu"], 9000, "{shown}");

    let err = node
        .nl
        .set_mtu("a0", 10)
        .await
        .expect_err("MTU 10 accepted");
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert!(err.to_string().contains("a0") && err.to_string().contains(node.ns.name()));

    // Deleting one end removes the pair.
    node.nl.delete_link("b0").await?;
    assert!(matches!(
        node.nl.link("a0").await,
        Err(Error::NoSuchLink { .. })
    ));
    assert_eq!(node.nl.links().await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn router_forwards_v4_and_v6_between_subnets() -> anyhow::Result<()> {
    let (client, router, server) = (Node::new()?, Node::new()?, Node::new()?);
    router
        .nl
        .add_veth(&Veth::new("r0", "eth0").peer_netns(&client.netns).up())
        .await?;
    router
        .nl
        .add_veth(&Veth::new("r1", "eth0").peer_netns(&server.netns).up())
        .await?;
    client
        .addresses("eth0", &[(v4("10.1.0.2"), 24), (v6("fd01::2"), 64)])
        .await?;
    server
        .addresses("eth0", &[(v4("10.2.0.2"), 24), (v6("fd02::2"), 64)])
        .await?;
    router
        .addresses("r0", &[(v4("10.1.0.1"), 24), (v6("fd01::1"), 64)])
        .await?;
    router
        .addresses("r1", &[(v4("10.2.0.1"), 24), (v6("fd02::1"), 64)])
        .await?;
    for (node, gw4, gw6) in [
        (&client, "10.1.0.1", "fd01::1"),
        (&server, "10.2.0.1", "fd02::1"),
    ] {
        let eth0 = node.nl.link_index("eth0").await?;
        node.nl
            .add_route(&Route::new(v4("0.0.0.0"), 0).via(v4(gw4)))
            .await?;
        node.nl
            .add_route(&Route::new(v6("::"), 0).via(v6(gw6)).dev(eth0))
            .await?;
    }
    // Without forwarding the router drops transit traffic. (A new namespace copies the host's
    // IPv4 setting, so it is switched off explicitly.)
    router.netns.set_forwarding(false)?;
    assert!(udp_round_trip(&client, &server, v4("10.2.0.2")).is_err());

    let router_before = router.netns.forwarding()?;
    let host_forwarding = |knob| std::fs::read_to_string(knob).map(|s| s.trim().to_owned());
    let host4 = host_forwarding("/proc/sys/net/ipv4/ip_forward")?;
    let host6 = host_forwarding("/proc/sys/net/ipv6/conf/all/forwarding")?;
    router.netns.set_forwarding(true)?;
    assert_eq!(router.netns.forwarding()?, (true, true));
    // Per namespace: the others and the host are untouched.
    assert_eq!(client.netns.forwarding()?, (false, false));
    assert_eq!(router_before, (false, false));
    assert_eq!(host_forwarding("/proc/sys/net/ipv4/ip_forward")?, host4);
    assert_eq!(
        host_forwarding("/proc/sys/net/ipv6/conf/all/forwarding")?,
        host6
    );

    udp_round_trip(&client, &server, v4("10.2.0.2"))?;
    udp_round_trip(&server, &client, v6("fd01::2"))?;

    // A dev-only route (scope link) and deletion.
    let route = Route::new(v4("10.3.0.0"), 24).dev(router.nl.link_index("r1").await?);
    router.nl.add_route(&route).await?;
    let err = router
        .nl
        .add_route(&route)
        .await
        .expect_err("duplicate route");
    assert_eq!(err.raw_os_error(), Some(17), "{err}");
    assert!(
        router
            .cmd("ip", &["route", "show", "10.3.0.0/24"])?
            .contains("dev r1")
    );
    router.nl.delete_route(&route).await?;
    assert!(
        router
            .cmd("ip", &["route", "show", "10.3.0.0/24"])?
            .is_empty()
    );
    Ok(())
}

/// `tc -j qdisc show dev DEV` inside `node`, the root qdisc's entry.
fn tc_root_qdisc(node: &Node, dev: &str) -> anyhow::Result<serde_json::Value> {
    let shown: serde_json::Value =
        serde_json::from_str(&node.cmd("tc", &["-j", "qdisc", "show", "dev", dev])?)?;
    let qdiscs = shown.as_array().context("tc output")?;
    qdiscs
        .iter()
        .find(|q| q["root"] == true)
        .cloned()
        .ok_or_else(|| anyhow!("no root qdisc on {dev}: {shown}"))
}

/// Needs a kernel with `sch_netem`: run by [`netem_tests_pass_on_a_kernel_with_netem`].
#[tokio::test]
#[ignore = "needs sch_netem: netem_tests_pass_on_a_kernel_with_netem runs it (in a VM if need be)"]
async fn netem_is_set_read_back_replaced_and_deleted() -> anyhow::Result<()> {
    let node = Node::new()?;
    node.nl.add_veth(&Veth::new("a0", "b0").up()).await?;
    node.nl.set_up("b0").await?;
    let a0 = node.nl.link_index("a0").await?;
    assert_eq!(node.nl.netem(a0).await?, None);

    let netem = Netem {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(1),
        loss: Probability::from_percent(1.5)?,
        duplicate: Probability::from_percent(2.0)?,
        reorder: Probability::from_percent(25.0)?,
        corrupt: Probability::from_percent(0.5)?,
        rate: Some(125_000_000),
        limit: 500,
    };
    node.nl.set_netem(a0, &netem).await?;
    assert_eq!(node.nl.netem(a0).await?, Some(netem));
    let tc = tc_root_qdisc(&node, "a0")?;
    let options = &tc["options"];
    assert_eq!(tc["kind"], "netem", "{tc}");
    assert_eq!(options["limit"], 500, "{tc}");
    assert_eq!(options["delay"]["delay"].as_f64(), Some(0.010), "{tc}");
    assert_eq!(options["delay"]["jitter"].as_f64(), Some(0.001), "{tc}");
    let close =
        |v: &serde_json::Value, want: f64| v.as_f64().is_some_and(|x| (x - want).abs() < 1e-6);
    assert!(close(&options["loss-random"]["loss"], 0.015), "{tc}");
    assert!(close(&options["duplicate"]["duplicate"], 0.02), "{tc}");
    assert!(close(&options["reorder"]["reorder"], 0.25), "{tc}");
    assert!(close(&options["corrupt"]["corrupt"], 0.005), "{tc}");
    assert_eq!(options["rate"]["rate"], 125_000_000, "{tc}");

    // Replacing keeps nothing of the old settings; a 64-bit rate goes through RATE64.
    let faster = Netem {
        delay: Duration::from_millis(20),
        rate: Some(10_000_000_000),
        ..Netem::default()
    };
    node.nl.set_netem(a0, &faster).await?;
    assert_eq!(node.nl.netem(a0).await?, Some(faster));
    let tc = tc_root_qdisc(&node, "a0")?;
    assert_eq!(
        tc["options"]["delay"]["delay"].as_f64(),
        Some(0.020),
        "{tc}"
    );
    assert_eq!(tc["options"]["rate"]["rate"], 10_000_000_000_u64, "{tc}");
    assert!(tc["options"].get("loss-random").is_none(), "{tc}");
    let plain = Netem {
        delay: Duration::from_millis(5),
        ..Netem::default()
    };
    node.nl.set_netem(a0, &plain).await?;
    assert_eq!(node.nl.netem(a0).await?, Some(plain));
    assert!(tc_root_qdisc(&node, "a0")?["options"].get("rate").is_none());

    node.nl.delete_root_qdisc(a0).await?;
    assert_eq!(node.nl.netem(a0).await?, None);
    assert_eq!(tc_root_qdisc(&node, "a0")?["kind"], "noqueue");
    let err = node
        .nl
        .delete_root_qdisc(a0)
        .await
        .expect_err("deleted noqueue");
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    Ok(())
}

/// Needs a kernel with `sch_netem`: run by [`netem_tests_pass_on_a_kernel_with_netem`].
#[tokio::test]
#[ignore = "needs sch_netem: netem_tests_pass_on_a_kernel_with_netem runs it (in a VM if need be)"]
async fn netem_delay_shows_in_the_round_trip() -> anyhow::Result<()> {
    let (a, b) = (Node::new()?, Node::new()?);
    a.nl.add_veth(&Veth::new("eth0", "eth0").peer_netns(&b.netns).up())
        .await?;
    a.addresses("eth0", &[(v4("10.7.0.1"), 24)]).await?;
    b.addresses("eth0", &[(v4("10.7.0.2"), 24)]).await?;
    // Resolve neighbours first so the timed exchange is one round trip.
    udp_round_trip(&a, &b, v4("10.7.0.2"))?;
    let before = udp_round_trip(&a, &b, v4("10.7.0.2"))?;
    let delay = Netem {
        delay: Duration::from_millis(10),
        ..Netem::default()
    };
    for node in [&a, &b] {
        let eth0 = node.nl.link_index("eth0").await?;
        node.nl.set_netem(eth0, &delay).await?;
    }
    let after = udp_round_trip(&a, &b, v4("10.7.0.2"))?;
    if after < Duration::from_millis(20) {
        bail!("round trip {after:?} (was {before:?}) with 10 ms each way");
    }
    Ok(())
}

/// The tests that need `sch_netem` (ignored in a plain run).
const NETEM_TESTS: [&str; 2] = [
    "netem_is_set_read_back_replaced_and_deleted",
    "netem_delay_shows_in_the_round_trip",
];

/// The Debian kernel the netem tests boot when this one has no netem.
const NETEM_KERNEL: &str = "6.12";

/// Longest wait for the guest's boot and for the tests in it (TCG on a loaded machine).
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether this kernel can make a netem qdisc (tried on a veth in a scratch namespace).
fn kernel_has_netem() -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let node = Node::new()?;
        node.nl.add_veth(&Veth::new("a0", "b0")).await?;
        let a0 = node.nl.link_index("a0").await?;
        match node.nl.set_netem(a0, &Netem::default()).await {
            Ok(()) => Ok(true),
            Err(Error::Unsupported { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    })
}

/// The shared libraries (and loader) `bin` needs, from `ldd`.
fn shared_libraries(bin: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let out = Command::new("ldd").arg(bin).output()?;
    ensure!(
        out.status.success(),
        "ldd {}: {}",
        bin.display(),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let target = line.split_once("=>").map_or(line, |(_, t)| t).trim();
            let path = target.split_whitespace().next()?;
            path.starts_with('/').then(|| path.into())
        })
        .collect())
}

/// Runs this test binary's [`NETEM_TESTS`] (`--ignored --exact`) inside a QEMU guest booting
/// Debian's [`NETEM_KERNEL`], which has netem: the binary comes over 9p, its shared libraries
/// and iproute2's `tc` (the tests read the qdisc back through it too) go into the initramfs.
/// Returns the exit code and the output; `None` (saying why) when the kernel cannot be fetched.
fn run_netem_tests_in_a_guest(args: &[&str]) -> anyhow::Result<Option<(i32, String)>> {
    use lab_vm::{Cache, InitramfsSpec, Matrix, Vm, VmConfig, initramfs};
    let fetched = Matrix::builtin().and_then(|m| Cache::from_env()?.fetch(m.kernel(NETEM_KERNEL)?));
    let kernel = match fetched {
        Ok(kernel) => kernel,
        Err(e) => {
            eprintln!("SKIPPED: kernel {NETEM_KERNEL} cannot be fetched: {e}");
            return Ok(None);
        }
    };
    let exe = std::env::current_exe()?;
    let tc = ["/usr/sbin/tc", "/sbin/tc"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .context("iproute2's tc is missing (./setup installs it)")?;
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("initramfs.cpio");
    let mut extra = shared_libraries(&exe)?;
    extra.push(tc);
    let spec = InitramfsSpec {
        modules: [
            "virtio_pci",
            "virtio_console",
            "9pnet_virtio",
            "9p",
            "veth",
            "sch_netem",
        ]
        .map(String::from)
        .to_vec(),
        extra_binaries: extra,
        ..InitramfsSpec::default()
    };
    initramfs::build(&kernel, &spec, &image)?;
    let config = VmConfig {
        cpus: 1,
        memory_mib: 512,
        share: Some(
            exe.parent()
                .context("the test binary's directory")?
                .to_owned(),
        ),
        boot_timeout: GUEST_TIMEOUT,
        ..VmConfig::new(&kernel.vmlinux, &image)
    };
    let mut vm = Vm::boot(&config)?;
    eprintln!(
        "kernel {}: agent ready after {} ms",
        kernel.release,
        vm.ready_after().as_millis()
    );
    let guest_exe = format!(
        "/host/{}",
        exe.file_name()
            .and_then(|n| n.to_str())
            .context("the test binary's name")?
    );
    let mut argv = vec![guest_exe.as_str()];
    argv.extend_from_slice(args);
    let out = vm.run(&argv, GUEST_TIMEOUT)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some((out.exit_code, text)))
}

/// Runs the ignored [`NETEM_TESTS`] of this binary where there is netem: as a child process
/// when this kernel has it, otherwise in one QEMU guest (see [`run_netem_tests_in_a_guest`]),
/// and checks that each of them ran and passed.
#[test]
fn netem_tests_pass_on_a_kernel_with_netem() -> anyhow::Result<()> {
    let mut args = vec!["--ignored", "--exact", "--test-threads", "1"];
    args.extend(NETEM_TESTS);
    let started = Instant::now();
    let (code, output) = if kernel_has_netem()? {
        let out = Command::new(std::env::current_exe()?)
            .args(&args)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    } else {
        match run_netem_tests_in_a_guest(&args)? {
            Some(result) => result,
            None => return Ok(()),
        }
    };
    eprintln!("netem tests: {:?}\n{output}", started.elapsed());
    ensure!(code == 0, "the netem tests exited with {code}:\n{output}");
    for name in NETEM_TESTS {
        ensure!(
            output.contains(&format!("test {name} ... ok")),
            "{name} did not pass:\n{output}"
        );
    }
    ensure!(
        output.contains(&format!("test result: ok. {} passed", NETEM_TESTS.len())),
        "{output}"
    );
    Ok(())
}
