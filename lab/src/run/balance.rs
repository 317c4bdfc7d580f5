//! The CPU-spreading variants of a window: the XDP CPU balancer (`accel::cpu_balance`) and the
//! kernel's RPS ([`crate::rps`]), and the interface offloads that make their comparison fair
//! (`kind = "offloads"`), each set up for one window and undone on drop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use accel::cpu_balance::{self, CpuBalance, Stats, Weights};
use accel::ethtool::{self, Offload};

use crate::measure::{jain, per_second};
use crate::rps::Rps;
use crate::topology::{Netns, VethEnd};

/// Runs `f` on a thread inside `ns`.
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    match ns {
        Netns::Named(name) => lab_netlink::Netns::open(name)
            .and_then(|ns| ns.run(f))
            .map_err(|e| e.to_string()),
        Netns::Root => thread::scope(|s| s.spawn(f).join())
            .map_err(|_| "the attaching thread panicked".to_owned()),
    }
}

/// The nsfs path of `ns` (`None` for the root namespace).
fn netns_path(ns: &Netns) -> Option<PathBuf> {
    match ns {
        Netns::Named(name) => Some(PathBuf::from(format!("/run/netns/{name}"))),
        Netns::Root => None,
    }
}

/// The balancer attached to `end`, with transmit checksum offload off on `peer`, the link's
/// other end (see `accel::cpu_balance`); dropping it detaches and restores the offload.
pub(super) struct Balancer {
    /// `cpu_balance.NODE-IFACE`, the start of its metric names.
    pub label: String,
    balance: Option<CpuBalance>,
    peer: VethEnd,
    /// The peer's transmit checksum offload before, when it had to be changed.
    peer_tx_checksum: Option<bool>,
}

impl Balancer {
    /// Turns transmit checksum offload off on `peer`, then attaches the balancer to `end`
    /// with `weights` (`(cpu, weight)`; empty: every online CPU).
    pub fn attach(end: &VethEnd, peer: &VethEnd, weights: &[(u32, u32)]) -> Result<Self, String> {
        let weights = if weights.is_empty() {
            Weights::online()
        } else {
            Weights::new(weights.iter().copied())
        }
        .map_err(|e| e.to_string())?;
        let dev = peer.dev.clone();
        let before = in_netns(&peer.ns, move || cpu_balance::set_tx_checksum(&dev, false))?
            .map_err(|e| {
                format!(
                    "turn transmit checksum offload off on {}:{}: {e}",
                    peer.node, peer.iface
                )
            })?;
        let mut balancer = Self {
            label: format!("cpu_balance.{}-{}", end.node, end.iface),
            balance: None,
            peer: peer.clone(),
            peer_tx_checksum: before.then_some(true),
        };
        let dev = end.dev.clone();
        let balance = in_netns(&end.ns, move || {
            CpuBalance::attach(&dev, accel::AttachMode::Auto, &weights)
        })?
        .map_err(|e| format!("attach the CPU balancer to {}:{}: {e}", end.node, end.iface))?;
        balancer.balance = Some(balance);
        Ok(balancer)
    }

    /// The balancer's counters now.
    pub fn stats(&self) -> Result<Stats, String> {
        self.balance
            .as_ref()
            .ok_or_else(|| format!("{}: not attached", self.label))?
            .stats()
            .map_err(|e| format!("{}: {e}", self.label))
    }

    /// Its counts over a window, as metrics: frames landed on each of the first `cpus` CPUs,
    /// their Jain index, redirects per second and failed redirects.
    pub fn metrics(
        &self,
        before: &Stats,
        after: &Stats,
        cpus: usize,
        elapsed: Duration,
        metrics: &mut BTreeMap<String, f64>,
    ) {
        let label = &self.label;
        let landed: Vec<f64> = after
            .landed()
            .iter()
            .zip(before.landed().iter().chain(std::iter::repeat(&0)))
            .take(cpus)
            .map(|(a, b)| a.saturating_sub(*b) as f64)
            .collect();
        for (cpu, n) in landed.iter().enumerate() {
            metrics.insert(format!("{label}.cpu{cpu}_landed"), *n);
        }
        if let Some(j) = jain(&landed) {
            metrics.insert(format!("{label}.landed_jain"), j);
        }
        let (a, b) = (after.total(), before.total());
        metrics.insert(
            format!("{label}.redirected_per_s"),
            per_second(a.redirected.saturating_sub(b.redirected) as f64, elapsed),
        );
        metrics.insert(
            format!("{label}.redirect_failed"),
            a.redirect_failed.saturating_sub(b.redirect_failed) as f64,
        );
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        drop(self.balance.take());
        if let Some(on) = self.peer_tx_checksum {
            let dev = self.peer.dev.clone();
            let restored = in_netns(&self.peer.ns, move || {
                cpu_balance::set_tx_checksum(&dev, on)
            })
            .and_then(|r| r.map(drop).map_err(|e| e.to_string()));
            if let Err(e) = restored {
                tracing::warn!(
                    "restoring transmit checksum offload of {}:{}: {e}",
                    self.peer.node,
                    self.peer.iface
                );
            }
        }
    }
}

/// Sets RPS on `end` to `cpus` (restored when the result is dropped).
pub(super) fn rps(end: &VethEnd, cpus: &[usize]) -> Result<Rps, String> {
    Rps::set(netns_path(&end.ns).as_deref(), &end.dev, cpus)
        .map_err(|e| format!("RPS on {}:{}: {e}", end.node, end.iface))
}

/// Offloads of one interface set for a window; dropping it restores those it changed.
pub(super) struct Offloads {
    end: VethEnd,
    /// The previous setting of each offload changed, in the order they were changed.
    changed: Vec<(Offload, bool)>,
}

impl Offloads {
    /// Sets each `(offload, on)` of `settings` on `end`.
    pub fn set(end: &VethEnd, settings: &[(Offload, bool)]) -> Result<Self, String> {
        let mut offloads = Self {
            end: end.clone(),
            changed: Vec::new(),
        };
        for &(offload, on) in settings {
            let dev = end.dev.clone();
            let before = in_netns(&end.ns, move || ethtool::set_offload(&dev, offload, on))?
                .map_err(|e| format!("offloads of {}:{}: {e}", end.node, end.iface))?;
            if before != on {
                offloads.changed.push((offload, before));
            }
        }
        Ok(offloads)
    }
}

impl Drop for Offloads {
    fn drop(&mut self) {
        for &(offload, on) in self.changed.iter().rev() {
            let dev = self.end.dev.clone();
            let restored = in_netns(&self.end.ns, move || {
                ethtool::set_offload(&dev, offload, on)
            })
            .and_then(|r| r.map(drop).map_err(|e| e.to_string()));
            if let Err(e) = restored {
                tracing::warn!(
                    "restoring {offload:?} of {}:{}: {e}",
                    self.end.node,
                    self.end.iface
                );
            }
        }
    }
}
