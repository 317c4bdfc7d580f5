//! Interface offloads through `accel::ethtool` (root): each offload of a veth in a fresh
//! namespace is switched, seen switched by `ethtool -k`, and switched back; the previous
//! setting comes back from every call; an unknown interface is named in the error.

use std::process::Command;

use accel::{
    Error,
    ethtool::{self, Offload},
};
use anyhow::{Context as _, ensure};
use testkit::NetNs;

/// Whether `ethtool -k` (run inside `ns`) shows every one of `features` of `iface` on (`Some`
/// only when they agree).
fn shown_on(ns: &NetNs, iface: &str, features: &[&str]) -> anyhow::Result<Option<bool>> {
    let out = ns.run(|| Command::new("ethtool").args(["-k", iface]).output())??;
    ensure!(out.status.success(), "ethtool -k {iface}: {out:?}");
    let text = String::from_utf8(out.stdout)?;
    let states = features
        .iter()
        .map(|feature| {
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with(&format!("{feature}:")))
                .with_context(|| format!("no {feature} in {text}"))?;
            Ok(line.split_whitespace().nth(1) == Some("on"))
        })
        .collect::<anyhow::Result<Vec<bool>>>()?;
    Ok((states.iter().all(|s| *s) || states.iter().all(|s| !*s)).then(|| states[0]))
}

#[test]
fn offloads_switch_and_switch_back() -> anyhow::Result<()> {
    let ns = NetNs::new()?;
    let (a, b) = (format!("{}a", ns.name()), format!("{}b", ns.name()));
    ns.ip(&format!("link add {a} type veth peer name {b}"))?;
    // The legacy TSO switch covers TCP over IPv4 and IPv6 (not the AccECN segmentation that
    // Linux 6.18 lists too).
    for (offload, features) in [
        (Offload::TxChecksum, &["tx-checksumming"][..]),
        (
            Offload::Tso,
            &["tx-tcp-segmentation", "tx-tcp6-segmentation"][..],
        ),
        (Offload::Gso, &["generic-segmentation-offload"][..]),
        (Offload::Gro, &["generic-receive-offload"][..]),
    ] {
        let initial = ns.run(|| ethtool::offload(&a, offload))??;
        ensure!(
            shown_on(&ns, &a, features)? == Some(initial),
            "{features:?}"
        );
        let before = ns.run(|| ethtool::set_offload(&a, offload, !initial))??;
        ensure!(before == initial, "{features:?}: previous {before}");
        ensure!(
            shown_on(&ns, &a, features)? == Some(!initial),
            "{features:?} not switched"
        );
        ensure!(ns.run(|| ethtool::offload(&a, offload))?? == !initial);
        // Setting what is already set changes nothing and says so.
        ensure!(ns.run(|| ethtool::set_offload(&a, offload, !initial))?? == !initial);
        ns.run(|| ethtool::set_offload(&a, offload, initial))??;
        ensure!(
            shown_on(&ns, &a, features)? == Some(initial),
            "{features:?} not back"
        );
    }
    let missing = format!("{}x", ns.name());
    match ns.run(|| ethtool::set_offload(&missing, Offload::Gro, true))? {
        Err(Error::NoInterface(name)) => ensure!(name == missing),
        other => anyhow::bail!("an unknown interface gave {other:?}"),
    }
    Ok(())
}
