//! RPS through `lab::rps` (root): the `rps_cpus` mask of a veth in a fresh namespace is set,
//! seen by an independent reader (`ip netns exec`, which mounts the namespace's sysfs), and
//! restored on drop; interfaces of the host with the same name are untouched.

use std::process::Command;

use anyhow::{Context as _, ensure};
use testkit::NetNs;

/// `cat` of the interface's first receive queue mask, read inside `ns` by iproute2.
fn mask_seen_by_ip(ns: &NetNs, iface: &str) -> anyhow::Result<Vec<usize>> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "cat"])
        .arg(format!("/sys/class/net/{iface}/queues/rx-0/rps_cpus"))
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab::rps::parse_mask(&String::from_utf8(out.stdout)?).map_err(anyhow::Error::msg)
}

#[test]
fn rps_is_set_in_the_namespace_and_restored() -> anyhow::Result<()> {
    let ns = NetNs::new()?;
    // A name the host does not have: reading it from the host's sysfs would fail.
    let (a, b) = (format!("{}a", ns.name()), format!("{}b", ns.name()));
    ns.ip(&format!("link add {a} type veth peer name {b}"))?;
    let cpus: Vec<usize> = (0..std::thread::available_parallelism()?.get()).collect();
    let before = mask_seen_by_ip(&ns, &a)?;
    ensure!(before.is_empty(), "a new veth steers nowhere: {before:?}");
    let rps = lab::rps::Rps::set(Some(ns.path()), &a, &cpus).map_err(anyhow::Error::msg)?;
    ensure!(mask_seen_by_ip(&ns, &a)? == cpus);
    let read = lab::rps::read(Some(ns.path()), &a).map_err(anyhow::Error::msg)?;
    ensure!(
        lab::rps::parse_mask(read.first().context("no queue")?).map_err(anyhow::Error::msg)?
            == cpus,
        "{read:?}"
    );
    ensure!(
        mask_seen_by_ip(&ns, &b)?.is_empty(),
        "the peer is untouched"
    );
    rps.restore().map_err(anyhow::Error::msg)?;
    ensure!(mask_seen_by_ip(&ns, &a)?.is_empty(), "restored");
    // Dropping restores too.
    drop(lab::rps::Rps::set(Some(ns.path()), &a, &[0]).map_err(anyhow::Error::msg)?);
    ensure!(mask_seen_by_ip(&ns, &a)?.is_empty(), "restored on drop");
    Ok(())
}

#[test]
fn rps_errors_name_the_interface_and_cpu() -> anyhow::Result<()> {
    let ns = NetNs::new()?;
    let err = lab::rps::Rps::set(Some(ns.path()), "nosuch0", &[0]).unwrap_err();
    ensure!(err.contains("nosuch0"), "{err}");
    let cpus = std::thread::available_parallelism()?.get();
    let err = lab::rps::Rps::set(Some(ns.path()), "lo", &[cpus]).unwrap_err();
    ensure!(err.contains(&format!("CPU {cpus}")), "{err}");
    Ok(())
}
