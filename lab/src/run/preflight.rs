//! What a scenario needs from this machine, checked before anything is created.

use lab_netlink::{Netem, Netlink};
use rustix::thread::{UnshareFlags, unshare_unsafe};

use crate::scenario::{AcceleratorKind, EventAction, Scenario, Service, WorkloadKind};
use crate::topology::{Impairment, Link};

/// Everything in `scenario` that this machine cannot run, one sentence each naming the
/// variant, event, workload or service and the reason; empty when it can run. `netem` says
/// whether the kernel has netem (asked only when something needs it) and `cpus` is how many
/// CPUs the machine has.
pub fn problems(
    scenario: &Scenario,
    netem: impl FnOnce() -> Result<bool, String>,
    cpus: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    let needs = netem_needs(scenario);
    if !needs.is_empty() {
        match netem() {
            Ok(true) => {}
            Ok(false) => problems.extend(needs.into_iter().map(|need| {
                format!("{need} needs netem, which this kernel lacks (CONFIG_NET_SCH_NETEM)")
            })),
            Err(e) => problems.push(format!(
                "{} needs netem, and probing the kernel for it failed: {e}",
                needs.join(", ")
            )),
        }
    }
    for (i, workload) in scenario.workloads.iter().enumerate() {
        let http = matches!(
            workload.kind,
            WorkloadKind::HttpUpload { .. }
                | WorkloadKind::HttpDownload { .. }
                | WorkloadKind::HttpSearch { .. }
        );
        let server = crate::deploy::node_of(&scenario.deploy, Service::DisgrafsServer);
        if http && server != Some(workload.to.node.value.as_str()) {
            problems.push(format!(
                "workload {} ({} to {}) needs disgrafs-server deployed on node {} ([deploy])",
                i + 1,
                workload.kind.name(),
                workload.to.node.value,
                workload.to.node.value
            ));
        }
        if http && workload.to.addr.port() != crate::deploy::SERVER_PORT {
            problems.push(format!(
                "workload {} ({} to {}) must use port {}, where the deployed server listens",
                i + 1,
                workload.kind.name(),
                workload.to.node.value,
                crate::deploy::SERVER_PORT
            ));
        }
        // A VM server's CPUs are the guest's (checked when the scenario is read).
        let server_here = !matches!(
            scenario
                .topology
                .node(&workload.to.node.value)
                .map(|n| &n.kind.value),
            Some(crate::topology::NodeKind::Vm { .. })
        );
        let sides = [
            ("from_cpus", &workload.from_cpus),
            ("to_cpus", &workload.to_cpus),
        ];
        for (side, list) in sides.into_iter().take(if server_here { 2 } else { 1 }) {
            if let Some(cpu) = list.iter().find(|&&cpu| cpu >= cpus) {
                problems.push(format!(
                    "workload {} pins to CPU {cpu} (`{side}`), but this machine has {cpus} CPUs \
                     (0 to {})",
                    i + 1,
                    cpus.saturating_sub(1)
                ));
            }
        }
    }
    for variant in &scenario.variants {
        for accelerator in &variant.accelerators {
            if let Some(cpu) = accelerator_cpus(&accelerator.kind).find(|&cpu| cpu >= cpus) {
                problems.push(format!(
                    "variant `{}` spreads packets to CPU {cpu}, but this machine has {cpus} CPUs \
                     (0 to {})",
                    variant.name.value,
                    cpus.saturating_sub(1)
                ));
            }
        }
    }
    let mut programs: Vec<&str> = Vec::new();
    for deployment in &scenario.deploy {
        for service in &deployment.services {
            programs.extend(match service.value {
                Service::Redis => &["redis-server"][..],
                Service::Falkordb => &["falkordb-server"],
                Service::Juicefs => &["juicefs"],
                Service::DisgrafsServer => &["disgrafs-server"],
                Service::DisgrafsTagger => &["disgrafs-tagger"],
            });
        }
    }
    programs.sort_unstable();
    programs.dedup();
    for program in programs {
        if let Err(e) = crate::deploy::binary(program) {
            problems.push(format!("[deploy]: {e}"));
        }
    }
    problems
}

/// The CPUs an accelerator names.
fn accelerator_cpus(kind: &AcceleratorKind) -> Box<dyn Iterator<Item = usize> + '_> {
    match kind {
        AcceleratorKind::CpuBalance { weights, .. } => {
            Box::new(weights.iter().map(|(cpu, _)| *cpu as usize))
        }
        AcceleratorKind::Rps { cpus, .. } => Box::new(cpus.iter().copied()),
        AcceleratorKind::Monitor { .. }
        | AcceleratorKind::SockRedirect { .. }
        | AcceleratorKind::Afxdp { .. }
        | AcceleratorKind::HttpFilter { .. }
        | AcceleratorKind::Offloads { .. } => Box::new(std::iter::empty()),
    }
}

/// What in `scenario` needs netem: the topology's impaired links, variants that impair a
/// link, events that set an impairment.
pub fn netem_needs(scenario: &Scenario) -> Vec<String> {
    let impaired = |pair: &[Impairment; 2]| pair.iter().any(|i| !i.is_none());
    let mut needs = Vec::new();
    for link in &scenario.topology.links {
        if impaired(&link.impair) {
            needs.push(format!("the topology's link {}", link_name(link)));
        }
    }
    for variant in &scenario.variants {
        for over in &variant.impair {
            if impaired(&over.impair) {
                needs.push(format!(
                    "variant `{}` (impairment on {})",
                    variant.name.value, over.link.endpoint.value
                ));
            }
        }
    }
    for event in &scenario.events {
        if let EventAction::Impair(pair) = &event.action
            && impaired(pair)
        {
            needs.push(format!(
                "the event at {} (impairment on {})",
                event.at.value, event.link.endpoint.value
            ));
        }
    }
    needs
}

/// `a:eth0 — b:eth0`.
pub(super) fn link_name(link: &Link) -> String {
    let [a, b] = &link.endpoints;
    format!(
        "{}:{} — {}:{}",
        a.node.value, a.iface.value, b.node.value, b.iface.value
    )
}

/// Whether the kernel has netem: sets a netem qdisc on the loopback device of a fresh,
/// unnamed network namespace (gone as soon as the probe's socket closes; nothing is left).
/// The kernel loads the `sch_netem` module on demand when it is built as one.
pub fn netem_available(runtime: &tokio::runtime::Handle) -> Result<bool, String> {
    let handle = runtime.clone();
    let conn = std::thread::spawn(move || -> Result<Netlink, String> {
        // SAFETY: only the network namespace is unshared, and only for this thread, which
        // opens one socket there and ends.
        unsafe { unshare_unsafe(UnshareFlags::NEWNET) }
            .map_err(|e| format!("unshare a network namespace: {e}"))?;
        let _entered = handle.enter();
        Netlink::current().map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the netem probe thread panicked".to_owned())??;
    let netem = Netem {
        delay: std::time::Duration::from_millis(1),
        ..Netem::default()
    };
    runtime.block_on(async move {
        let lo = conn.link_index("lo").await.map_err(|e| e.to_string())?;
        match conn.set_netem(lo, &netem).await {
            Ok(()) => Ok(true),
            Err(lab_netlink::Error::Unsupported { .. }) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    })
}
