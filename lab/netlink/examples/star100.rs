//! Builds star-100 with this crate (100 namespaces, each with one veth on one bridge in the
//! host namespace and an IPv4 address), prints the time, then tears it down by deleting the
//! namespaces and waits until every veth is gone. Run as root:
//! `cargo run --release -p lab-netlink --example star100`.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use lab_netlink::{Netlink, Netns, Result, Veth};

const HOSTS: u32 = 100;

/// The namespaces made so far, deleted on drop (also when a step fails).
struct Lab(Vec<Netns>);

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.0.drain(..) {
            let name = ns.name().to_owned();
            if let Err(e) = ns.delete() {
                eprintln!("star100: delete netns {name}: {e}");
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let prefix = format!("s{}", std::process::id());
    let bridge = format!("{prefix}br");
    let host = Netlink::current()?;
    let mut lab = Lab(Vec::new());

    let start = Instant::now();
    host.add_bridge(&bridge).await?;
    let built = build(&host, &prefix, &bridge, &mut lab).await;
    let up = start.elapsed();
    // The bridge lives in the host namespace: delete it whatever happened.
    let removed = host.delete_link(bridge.as_str()).await;
    built?;
    println!("star-{HOSTS} up:   {:.3} s", up.as_secs_f64());

    let start = Instant::now();
    drop(lab);
    let ports = |links: Vec<lab_netlink::LinkInfo>| {
        links.iter().filter(|l| l.name.starts_with(&prefix)).count()
    };
    while ports(host.links().await?) > 0 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("star-{HOSTS} down: {:.3} s", start.elapsed().as_secs_f64());
    removed
}

async fn build(host: &Netlink, prefix: &str, bridge: &str, lab: &mut Lab) -> Result<()> {
    let bridge_index = host.link_index(bridge).await?;
    for i in 0..HOSTS {
        lab.0.push(Netns::create(&format!("{prefix}h{i}"))?);
    }
    stream::iter(lab.0.iter().enumerate())
        .map(|(i, ns)| async move {
            let port = format!("{prefix}p{i}");
            host.add_veth(
                &Veth::new(&port, "eth0")
                    .peer_netns(ns)
                    .master(bridge_index)
                    .up(),
            )
            .await?;
            let inside = ns.connect()?;
            let (lo, eth0) = futures_util::join!(inside.set_up("lo"), inside.set_up("eth0"));
            lo?;
            eth0?;
            let index = inside.link_index("eth0").await?;
            let [a, b] = (i as u16 + 1).to_be_bytes();
            let address = IpAddr::V4(Ipv4Addr::new(10, 99, a, b));
            inside.add_address(index, address, 16).await
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
}
