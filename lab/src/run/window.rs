//! One measured window: the variant's link settings and accelerators, the workloads run
//! together, the events fired on a timer thread, and the counters read around it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use accel::afxdp::{self, AfXdp};
use accel::http_filter::HttpFilter;
use accel::monitor::{Monitor, Stats};
use hdrhistogram::Histogram;

use super::balance::{self, Balancer};
use crate::apply::{self, LinkChange};
use crate::deploy::{self, Deployed, Service};
use crate::measure::{
    CpuTimes, LatencySummary, TcpCounters, busy_shares, cpu_seconds, cpu_seconds_per_gb, jain,
    per_second, process_cpu_time,
};
use crate::node::Node as _;
use crate::node::vm::{self, VmNode};
use crate::rps::Rps;
use crate::scenario::{
    AcceleratorKind, EventAction, MonitorMode, Scenario, Variant, Workload, WorkloadKind,
};
use crate::state::StateDir;
use crate::topology::{Impairment, Netns, Plan, Step, VethEnd};
use crate::workloads::remote::{Served, ServerSpec};
use crate::workloads::{
    self, Http, HttpOp, HttpResult, Site, Stop, TcpRr, TcpRrResult, TcpStream, TcpStreamResult,
    UdpEcho, UdpEchoResult,
};

/// A lab that is up, as the runner sees it: where each node lives and each link's ends.
pub(super) struct Lab<'a> {
    scenario: &'a Scenario,
    plan: &'a Plan,
    runtime: &'a tokio::runtime::Handle,
    /// The namespace of each node that has one (host nodes live in the root namespace).
    netns: HashMap<&'a str, &'a str>,
    /// The veth ends of each of the topology's links, in the topology's order.
    ends: Vec<[&'a VethEnd; 2]>,
    /// Links whose settings a variant or an event changes: reset before every window.
    touched: Vec<usize>,
    /// The label of each workload in metric names.
    labels: Vec<String>,
    /// How many CPUs `/proc/stat` lists.
    cpus: usize,
    /// The write token of the deployed DisGraFS server, if one is deployed.
    token: Option<String>,
    /// The VM nodes that serve a workload: its server runs in the guest
    /// ([`ServerSpec`], started through the agent), its client here.
    vms: HashMap<&'a str, VmNode>,
    /// The cgroup the deployed services of a node run in, for nodes that have one.
    service_cgroups: BTreeMap<String, PathBuf>,
    /// Where the lab's state file is, when the DisGraFS server is restarted every window.
    restart_server: Option<&'a StateDir>,
}

/// What one window measured.
#[derive(Debug)]
pub(super) struct Measured {
    /// Metric values, named with their units.
    pub metrics: BTreeMap<String, f64>,
    /// Busy share of each CPU.
    pub cpu_busy: Vec<f64>,
    /// Each CPU's share of the packets the first monitor counted (empty: no monitor).
    pub cpu_packets: Vec<f64>,
    /// Share of the window each CPU spent in NET_RX softirqs, from the first monitor.
    pub cpu_softirq: Vec<f64>,
    /// Round-trip latencies of the first workload that measures them.
    pub latency: Option<Histogram<u64>>,
    /// A short summary for the progress line.
    pub summary: String,
}

/// One workload's run: what it measured, and the CPU time the runner's process used
/// meanwhile.
struct Ran {
    outcome: Outcome,
    cpu: Duration,
}

/// What one workload measured.
enum Outcome {
    Rr(TcpRrResult),
    Stream(TcpStreamResult),
    Udp(UdpEchoResult),
    Http(HttpResult),
}

/// An accelerator attached for one window; dropping it detaches.
struct Attached {
    /// `KIND.NODE-IFACE` (`sock_redirect.NODE`), the start of its metric names.
    label: String,
    handle: Handle,
}

/// The handle of one attached accelerator.
enum Handle {
    Monitor(Monitor),
    SockRedirect(super::sock_redirect::Redirect),
    CpuBalance(Box<Balancer>),
    Afxdp(AfXdp),
    HttpFilter(Box<HttpFilter>),
    Rps {
        /// Restores the previous masks when dropped.
        _restore: Rps,
    },
    Offloads {
        /// Restores the previous settings when dropped.
        _restore: balance::Offloads,
    },
}

/// An attached accelerator's counters at one moment.
enum Counters {
    Monitor(Stats),
    SockRedirect(accel::sock_redirect::Stats),
    CpuBalance(accel::cpu_balance::Stats),
    Afxdp(afxdp::Stats),
    HttpFilter(accel::http_filter::Totals),
    None,
}

impl Attached {
    fn counters(&self) -> Result<Counters, String> {
        match &self.handle {
            Handle::Monitor(m) => m
                .stats()
                .map(Counters::Monitor)
                .map_err(|e| format!("{}: {e}", self.label)),
            Handle::SockRedirect(r) => r.stats().map(Counters::SockRedirect),
            Handle::CpuBalance(b) => b.stats().map(Counters::CpuBalance),
            Handle::Afxdp(a) => a
                .stats()
                .map(Counters::Afxdp)
                .map_err(|e| format!("{}: {e}", self.label)),
            Handle::HttpFilter(f) => f
                .stats()
                .map(|s| Counters::HttpFilter(s.total()))
                .map_err(|e| format!("{}: {e}", self.label)),
            Handle::Rps { .. } | Handle::Offloads { .. } => Ok(Counters::None),
        }
    }
}

impl<'a> Lab<'a> {
    /// The lab of `plan`, brought up from `scenario`'s topology, with the services `deployed`
    /// (recorded in `states`). When the DisGraFS server runs in a node's service cgroup, it is
    /// restarted at the start of every window (see `run/sock_redirect.rs`).
    pub(super) fn new(
        scenario: &'a Scenario,
        plan: &'a Plan,
        runtime: &'a tokio::runtime::Handle,
        cpus: usize,
        deployed: Option<Deployed>,
        states: &'a StateDir,
        vm_dir: &Path,
    ) -> Result<Self, String> {
        let netns = plan
            .steps
            .iter()
            .filter_map(Step::node_namespace)
            .map(|(ns, node)| (node, ns))
            .collect();
        let veths: Vec<[&VethEnd; 2]> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::CreateVeth { a, b, .. } => Some([a, b]),
                _ => None,
            })
            .collect();
        let ends = scenario
            .topology
            .links
            .iter()
            .map(|link| {
                let first = &link.endpoints[0];
                veths
                    .iter()
                    .find(|[a, _]| a.node == first.node.value && a.iface == first.iface.value)
                    .copied()
                    .ok_or_else(|| {
                        format!(
                            "the plan has no veth for the link {}",
                            super::preflight::link_name(link)
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut touched: Vec<usize> = scenario
            .variants
            .iter()
            .flat_map(|v| v.impair.iter().map(|o| o.link.index))
            .chain(scenario.events.iter().map(|e| e.link.index))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let mut vms = HashMap::new();
        for w in &scenario.workloads {
            let node = w.to.node.value.as_str();
            let spec = plan.steps.iter().find_map(|s| match s {
                Step::StartVm(spec) if spec.node == node => Some(spec),
                _ => None,
            });
            if let Some(spec) = spec
                && !vms.contains_key(node)
            {
                let guest = VmNode::new(node, spec.ns.clone(), vm_dir.join(node));
                vm::install_lab(&guest)?;
                vms.insert(node, guest);
            }
        }
        let (token, service_cgroups) =
            deployed.map_or_else(Default::default, |d| (Some(d.token), d.cgroups));
        let restart_server = deploy::node_of(&scenario.deploy, Service::DisgrafsServer)
            .is_some_and(|node| service_cgroups.contains_key(node))
            .then_some(states);
        Ok(Self {
            scenario,
            plan,
            runtime,
            netns,
            ends,
            touched,
            labels: labels(&scenario.workloads),
            cpus,
            token,
            vms,
            service_cgroups,
            restart_server,
        })
    }

    /// Runs every workload for `duration`, measuring nothing.
    pub(super) fn warm_up(&self, duration: Duration) -> Result<(), String> {
        self.run_workloads(Some(duration)).map(drop)
    }

    /// Measures `variant` over one window.
    pub(super) fn measure(&self, variant: &Variant) -> Result<Measured, String> {
        self.reset_links(variant)?;
        let attached = self.attach(variant)?;
        if let Some(states) = self.restart_server {
            deploy::restart(
                &self.scenario.deploy,
                &self.scenario.topology,
                self.plan,
                states,
                self.runtime,
                Service::DisgrafsServer,
            )
            .map_err(|e| format!("restarting the DisGraFS server: {e}"))?;
        }
        let tcp_before = self.tcp_counters()?;
        let cpu_before = CpuTimes::read().map_err(|e| format!("read /proc/stat: {e}"))?;
        let counters_before: Vec<Counters> = attached
            .iter()
            .map(Attached::counters)
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        let outcomes = thread::scope(|scope| {
            let (done, finished) = mpsc::channel::<()>();
            let timer = scope.spawn(move || self.fire_events(started, &finished));
            let outcomes = self.run_workloads(None);
            drop(done);
            let events = timer
                .join()
                .unwrap_or_else(|_| Err("the event timer thread panicked".to_owned()));
            let outcomes = outcomes?;
            events.map(|()| outcomes)
        })?;
        let elapsed = started.elapsed();
        let cpu_after = CpuTimes::read().map_err(|e| format!("read /proc/stat: {e}"))?;
        let tcp_after = self.tcp_counters()?;
        let mut metrics = BTreeMap::new();
        let mut bytes = 0;
        let mut latency = None;
        for ((ran, workload), label) in outcomes
            .iter()
            .zip(&self.scenario.workloads)
            .zip(&self.labels)
        {
            let outcome = &ran.outcome;
            let moved = workload_metrics(outcome, workload, label, &mut metrics);
            bytes += moved;
            let cpu = ran.cpu.as_secs_f64();
            metrics.insert(format!("{label}.process_cpu_s"), cpu);
            if let Some(cost) = cpu_seconds_per_gb(cpu, moved) {
                metrics.insert(format!("{label}.process_cpu_s_per_gb"), cost);
            }
            if latency.is_none() {
                latency = match outcome {
                    Outcome::Rr(r) => Some(r.latency.clone()),
                    Outcome::Udp(u) => Some(u.latency.clone()),
                    Outcome::Http(h) => Some(h.latency.clone()),
                    Outcome::Stream(_) => None,
                };
            }
        }
        let mut cpu_busy = busy_shares(&cpu_before, &cpu_after);
        cpu_busy.truncate(self.cpus);
        let seconds = cpu_seconds(&cpu_before, &cpu_after);
        metrics.insert("cpu_s".to_owned(), seconds);
        if let Some(cost) = cpu_seconds_per_gb(seconds, bytes) {
            metrics.insert("cpu_s_per_gb".to_owned(), cost);
        }
        if let Some(j) = jain(&cpu_busy) {
            metrics.insert("cpu_jain".to_owned(), j);
        }
        if let (Some(before), Some(after)) = (tcp_before, tcp_after) {
            let counts = after.since(&before);
            metrics.insert("tcp_retrans_segs".to_owned(), counts.retransmits as f64);
            metrics.insert("tcp_ofo_segs".to_owned(), counts.out_of_order as f64);
            metrics.insert("tcp_reorder_events".to_owned(), counts.reordering as f64);
        }
        let (echoes, mut echo_cpu) = echo_totals(&outcomes);
        let (mut cpu_packets, mut cpu_softirq) = (Vec::new(), Vec::new());
        let mut first_monitor = true;
        let counters_after: Vec<Counters> = attached
            .iter()
            .map(Attached::counters)
            .collect::<Result<_, _>>()?;
        // The monitor's sockmap counters: the hits of the window's socket redirects.
        let sockmap_hits: Option<Vec<accel::sock_redirect::CpuStats>> = counters_before
            .iter()
            .zip(&counters_after)
            .filter_map(|pair| match pair {
                (Counters::SockRedirect(before), Counters::SockRedirect(after)) => {
                    Some(after.per_cpu_since(before))
                }
                _ => None,
            })
            .reduce(|mut all, hits| {
                all.extend(hits);
                all
            });
        for ((attached, before), after) in attached.iter().zip(&counters_before).zip(counters_after)
        {
            let label = &attached.label;
            match (before, after) {
                (Counters::Monitor(before), Counters::Monitor(after)) => {
                    let xdp =
                        matches!(&attached.handle, Handle::Monitor(m) if m.xdp_mode().is_some());
                    let mut delta = after.since(before);
                    if let Some(hits) = &sockmap_hits {
                        delta.add_sockmap(hits);
                    }
                    let shares = self.monitor_metrics(
                        label,
                        &delta,
                        xdp,
                        sockmap_hits.is_some(),
                        elapsed,
                        &mut metrics,
                    );
                    if first_monitor {
                        (cpu_packets, cpu_softirq) = shares;
                        first_monitor = false;
                    }
                }
                (Counters::SockRedirect(before), Counters::SockRedirect(after)) => {
                    super::sock_redirect::metrics(label, before, &after, &mut metrics);
                }
                (Counters::CpuBalance(before), Counters::CpuBalance(after)) => {
                    if let Handle::CpuBalance(balancer) = &attached.handle {
                        balancer.metrics(before, &after, self.cpus, elapsed, &mut metrics);
                    }
                }
                (Counters::Afxdp(before), Counters::Afxdp(after)) => {
                    let cpu = afxdp_metrics(label, before, &after, elapsed, &mut metrics);
                    echo_cpu = echo_cpu.map(|c| c + cpu);
                }
                (Counters::HttpFilter(before), Counters::HttpFilter(after)) => {
                    http_filter_metrics(label, before, &after, elapsed, &mut metrics);
                }
                (Counters::None, Counters::None) => {}
                _ => return Err(format!("{label}: its counters changed kind")),
            }
        }
        if let (Some(cpu), true) = (echo_cpu, echoes > 0) {
            metrics.insert(
                "cpu_ns_per_echo".to_owned(),
                cpu.as_secs_f64() * 1e9 / echoes as f64,
            );
        }
        drop(attached);
        let outcomes: Vec<Outcome> = outcomes.into_iter().map(|r| r.outcome).collect();
        let summary = summary(&outcomes, &self.labels);
        Ok(Measured {
            metrics,
            cpu_busy,
            cpu_packets,
            cpu_softirq,
            latency,
            summary,
        })
    }

    /// Puts every link a variant or an event changes into `variant`'s state: up, with the
    /// variant's impairment or else the topology's.
    fn reset_links(&self, variant: &Variant) -> Result<(), String> {
        for &index in &self.touched {
            let link = &self.scenario.topology.links[index];
            let flaps = self.scenario.events.iter().any(|e| {
                e.link.index == index && matches!(e.action, EventAction::Down | EventAction::Up)
            });
            let impair = variant
                .impair
                .iter()
                .find(|o| o.link.index == index)
                .map_or(&link.impair, |o| &o.impair);
            for (end, impairment) in self.ends[index].iter().zip(impair) {
                if flaps {
                    self.change(end, &LinkChange::Up)?;
                }
                self.change(end, &impairment_change(impairment))?;
            }
        }
        Ok(())
    }

    /// Applies `change` to one veth end; removing an impairment that is not there is no error.
    fn change(&self, end: &VethEnd, change: &LinkChange) -> Result<(), String> {
        let result = self
            .runtime
            .block_on(apply::change_link(self.plan, &end.ns, &end.dev, change));
        match result {
            Err(apply::Error::Netlink(e))
                if *change == LinkChange::Clear && e.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("{}:{}: {change:?}: {e}", end.node, end.iface)),
            Ok(()) => Ok(()),
        }
    }

    /// Fires the scenario's events at their times from `start`, until `finished` says the
    /// workloads are done.
    fn fire_events(&self, start: Instant, finished: &mpsc::Receiver<()>) -> Result<(), String> {
        for event in &self.scenario.events {
            let at = start + Duration::from_nanos(event.at.value.0);
            match finished.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let what = |e: String| {
                format!(
                    "event at {} on {}: {e}",
                    event.at.value, event.link.endpoint.value
                )
            };
            let ends = self.ends[event.link.index];
            match &event.action {
                EventAction::Down => ends
                    .iter()
                    .try_for_each(|end| self.change(end, &LinkChange::Down)),
                EventAction::Up => ends
                    .iter()
                    .try_for_each(|end| self.change(end, &LinkChange::Up)),
                EventAction::Impair(pair) => ends
                    .iter()
                    .zip(pair.iter())
                    .try_for_each(|(end, i)| self.change(end, &impairment_change(i))),
            }
            .map_err(what)?;
        }
        Ok(())
    }

    /// Attaches `variant`'s accelerators, each from a thread inside its node's namespace.
    fn attach(&self, variant: &Variant) -> Result<Vec<Attached>, String> {
        let mut attached = Vec::new();
        for accelerator in &variant.accelerators {
            let node = &accelerator.node.value;
            match &accelerator.kind {
                AcceleratorKind::Monitor { iface, xdp } => {
                    let [end, _] = self.link_of(variant, node, &iface.value)?;
                    let xdp = xdp.map(attach_mode);
                    let monitor = in_namespace(&end.ns, || Monitor::attach(&end.dev, xdp))?
                        .map_err(|e| attach_failed(variant, "the monitor", end, e))?;
                    attached.push(Attached {
                        label: format!("monitor.{node}-{}", iface.value),
                        handle: Handle::Monitor(monitor),
                    });
                }
                AcceleratorKind::SockRedirect { ports, min_size } => {
                    let cgroup = format!("{}-{}.sock-redirect", self.plan.prefix, self.plan.lab);
                    let redirect =
                        super::sock_redirect::Redirect::attach(&cgroup, ports, *min_size)
                            .map_err(|e| format!("variant `{}`: {e}", variant.name.value))?;
                    attached.push(Attached {
                        label: format!("sock_redirect.{node}"),
                        handle: Handle::SockRedirect(redirect),
                    });
                    if let Some(dir) = self.service_cgroups.get(node) {
                        let services =
                            super::sock_redirect::Redirect::attach_services(dir, ports, *min_size)
                                .map_err(|e| format!("variant `{}`: {e}", variant.name.value))?;
                        attached.push(Attached {
                            label: format!("sock_redirect.{node}-services"),
                            handle: Handle::SockRedirect(services),
                        });
                    }
                }
                AcceleratorKind::Afxdp { iface, ports, cpus } => {
                    let [end, _] = self.link_of(variant, node, &iface.value)?;
                    let mut config = afxdp::Config::new(ports, afxdp::Mode::Echo)
                        .map_err(|e| attach_failed(variant, "afxdp", end, e))?;
                    config.cpus.clone_from(cpus);
                    let afxdp = in_namespace(&end.ns, || AfXdp::start(&end.dev, &config))?
                        .map_err(|e| attach_failed(variant, "afxdp", end, e))?;
                    attached.push(Attached {
                        label: format!("afxdp.{node}-{}", iface.value),
                        handle: Handle::Afxdp(afxdp),
                    });
                }
                AcceleratorKind::HttpFilter {
                    iface,
                    mode,
                    policy,
                    ..
                } => {
                    let [end, _] = self.link_of(variant, node, &iface.value)?;
                    let mode = attach_mode(*mode);
                    let filter =
                        in_namespace(&end.ns, || HttpFilter::attach(&end.dev, mode, policy))?
                            .map_err(|e| attach_failed(variant, "the http_filter", end, e))?;
                    attached.push(Attached {
                        label: format!("http_filter.{node}-{}", iface.value),
                        handle: Handle::HttpFilter(Box::new(filter)),
                    });
                }
                AcceleratorKind::CpuBalance { iface, weights } => {
                    let [end, peer] = self.link_of(variant, node, &iface.value)?;
                    let balancer = Balancer::attach(end, peer, weights)
                        .map_err(|e| format!("variant `{}`: {e}", variant.name.value))?;
                    attached.push(Attached {
                        label: format!("cpu_balance.{node}-{}", iface.value),
                        handle: Handle::CpuBalance(Box::new(balancer)),
                    });
                }
                AcceleratorKind::Rps { iface, cpus } => {
                    let [end, _] = self.link_of(variant, node, &iface.value)?;
                    let rps = balance::rps(end, cpus)
                        .map_err(|e| format!("variant `{}`: {e}", variant.name.value))?;
                    attached.push(Attached {
                        label: format!("rps.{node}-{}", iface.value),
                        handle: Handle::Rps { _restore: rps },
                    });
                }
                AcceleratorKind::Offloads { iface, settings } => {
                    let [end, _] = self.link_of(variant, node, &iface.value)?;
                    let offloads = balance::Offloads::set(end, settings)
                        .map_err(|e| format!("variant `{}`: {e}", variant.name.value))?;
                    attached.push(Attached {
                        label: format!("offloads.{node}-{}", iface.value),
                        handle: Handle::Offloads { _restore: offloads },
                    });
                }
            }
        }
        Ok(attached)
    }

    /// The veth end `node:iface` and the other end of its link.
    fn link_of(&self, variant: &Variant, node: &str, iface: &str) -> Result<[&VethEnd; 2], String> {
        self.ends
            .iter()
            .find_map(|[a, b]| {
                if a.node == node && a.iface == iface {
                    Some([*a, *b])
                } else if b.node == node && b.iface == iface {
                    Some([*b, *a])
                } else {
                    None
                }
            })
            .ok_or_else(|| {
                format!(
                    "variant `{}`: node {node} has no interface {iface}",
                    variant.name.value
                )
            })
    }

    /// The monitor's counts over the window (`delta`): per CPU (the CPUs `/proc/stat`
    /// lists), totals and rates (XDP frames with `xdp`, socket redirect hits with `sockmap`),
    /// the Jain index of packets over CPUs. Returns each CPU's share of the packets and the
    /// share of the window it spent in NET_RX softirqs.
    fn monitor_metrics(
        &self,
        label: &str,
        delta: &Stats,
        xdp: bool,
        sockmap: bool,
        elapsed: Duration,
        metrics: &mut BTreeMap<String, f64>,
    ) -> (Vec<f64>, Vec<f64>) {
        let listed = Stats {
            iface: delta.iface.clone(),
            per_cpu: delta.per_cpu.iter().take(self.cpus).copied().collect(),
        };
        let (cpus, total) = (&listed.per_cpu, listed.total());
        let packets: Vec<f64> = cpus
            .iter()
            .map(|c| c.counters.kernel.rx_packets as f64)
            .collect();
        let softirq: Vec<f64> = cpus
            .iter()
            .map(|c| c.counters.kernel.net_rx_softirq_ns as f64 / 1e9 / elapsed.as_secs_f64())
            .collect();
        for (cpu, (p, s)) in cpus.iter().zip(packets.iter().zip(&softirq)) {
            metrics.insert(format!("{label}.cpu{}_rx_packets", cpu.cpu), *p);
            metrics.insert(format!("{label}.cpu{}_net_rx_share", cpu.cpu), *s);
        }
        let rate = |n: u64| per_second(n as f64, elapsed);
        metrics.insert(
            format!("{label}.rx_packets_per_s"),
            rate(total.kernel.rx_packets),
        );
        metrics.insert(
            format!("{label}.rx_bytes_per_s"),
            rate(total.kernel.rx_bytes),
        );
        metrics.insert(
            format!("{label}.net_rx_softirq_s"),
            total.kernel.net_rx_softirq_ns as f64 / 1e9,
        );
        metrics.insert(
            format!("{label}.tcp_retransmits"),
            total.kernel.tcp_retransmits as f64,
        );
        metrics.insert(
            format!("{label}.xdp_redirects"),
            total.kernel.xdp_redirects as f64,
        );
        metrics.insert(
            format!("{label}.cpumap_packets"),
            total.kernel.cpumap_packets as f64,
        );
        if xdp {
            metrics.insert(format!("{label}.xdp_frames_per_s"), rate(total.xdp_frames));
        }
        if sockmap {
            for cpu in cpus {
                metrics.insert(
                    format!("{label}.cpu{}_sockmap_redirects", cpu.cpu),
                    cpu.counters.sockmap_redirects as f64,
                );
            }
            metrics.insert(
                format!("{label}.sockmap_redirects_per_s"),
                rate(total.sockmap_redirects),
            );
        }
        if let Some(j) = jain(&packets) {
            metrics.insert(format!("{label}.rx_jain"), j);
        }
        let sum: f64 = packets.iter().sum();
        let shares = if sum > 0.0 {
            packets.iter().map(|p| p / sum).collect()
        } else {
            Vec::new()
        };
        (shares, softirq)
    }

    /// The TCP counters summed over every namespace a TCP workload runs in (retransmits count
    /// at senders, out-of-order segments at receivers); `None` without TCP workloads.
    fn tcp_counters(&self) -> Result<Option<TcpCounters>, String> {
        let mut nodes: Vec<&str> = self
            .scenario
            .workloads
            .iter()
            .filter(|w| !matches!(w.kind, WorkloadKind::UdpEcho { .. }))
            .flat_map(|w| [w.from.value.as_str(), w.to.node.value.as_str()])
            .map(|node| self.netns.get(node).copied().unwrap_or(""))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.is_empty() {
            return Ok(None);
        }
        let mut sum = TcpCounters::default();
        for ns in nodes {
            let read = if ns.is_empty() {
                TcpCounters::read().map_err(|e| format!("TCP counters of the host: {e}"))
            } else {
                lab_netlink::Netns::open(ns)
                    .and_then(|n| n.run(TcpCounters::read))
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("TCP counters of {ns}: {e}"))
            }?;
            sum.retransmits += read.retransmits;
            sum.out_of_order += read.out_of_order;
        }
        Ok(Some(sum))
    }

    /// Runs every workload at once, each for `duration` or else its own.
    fn run_workloads(&self, duration: Option<Duration>) -> Result<Vec<Ran>, String> {
        thread::scope(|scope| {
            let running: Vec<_> = self
                .scenario
                .workloads
                .iter()
                .map(|w| {
                    let stop = Stop::After(duration.unwrap_or(Duration::from_nanos(w.duration.0)));
                    let start = if duration.is_some() {
                        Duration::ZERO
                    } else {
                        Duration::from_nanos(w.start.0)
                    };
                    scope.spawn(move || {
                        thread::sleep(start);
                        let before = process_cpu_time();
                        let outcome = self.run_workload(w, stop)?;
                        let cpu = process_cpu_time()
                            .and_then(|after| Ok(after.saturating_sub(before?)))
                            .map_err(|e| format!("read the runner's CPU time: {e}"))?;
                        Ok(Ran { outcome, cpu })
                    })
                })
                .collect();
            running
                .into_iter()
                .zip(&self.labels)
                .map(|(handle, label)| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(format!("workload {label}: its thread panicked")))
                })
                .collect()
        })
    }

    fn run_workload(&self, w: &Workload, stop: Stop) -> Result<Outcome, String> {
        let client = self.site(&w.from.value, &w.from_cpus);
        let server = self.site(&w.to.node.value, &w.to_cpus);
        let addr = w.to.addr;
        let failed = |e: workloads::Error| {
            format!(
                "workload {} from {} to {}: {e}",
                w.kind.name(),
                w.from.value,
                w.to.node.value
            )
        };
        if let Some(guest) = self.vms.get(w.to.node.value.as_str()) {
            return self.run_in_guest(guest, w, &client, stop);
        }
        match w.kind {
            WorkloadKind::TcpRr {
                request,
                response,
                connections,
            } => workloads::tcp_rr(
                &server,
                &client,
                &TcpRr {
                    addr,
                    request,
                    response,
                    connections,
                    stop,
                },
            )
            .map(Outcome::Rr),
            WorkloadKind::TcpStream {
                message,
                write,
                connections,
            } => workloads::tcp_stream(
                &server,
                &client,
                &TcpStream {
                    addr,
                    message,
                    write,
                    connections,
                    stop,
                },
            )
            .map(Outcome::Stream),
            WorkloadKind::UdpEcho {
                pps,
                size,
                generator,
            } => workloads::udp_echo(
                &server,
                &client,
                &UdpEcho {
                    generator,
                    addr,
                    pps,
                    size,
                    stop,
                },
            )
            .map(Outcome::Udp),
            WorkloadKind::HttpUpload {
                size,
                files,
                connections,
            } => self.http(
                &client,
                w,
                HttpOp::Upload { size, files },
                connections,
                stop,
            ),
            WorkloadKind::HttpDownload { size, connections } => {
                self.http(&client, w, HttpOp::Download { size }, connections, stop)
            }
            WorkloadKind::HttpSearch {
                ref query,
                connections,
            } => self.http(
                &client,
                w,
                HttpOp::Search {
                    query: query.clone(),
                },
                connections,
                stop,
            ),
        }
        .map_err(failed)
    }

    /// Runs `w`'s server as `lab workload-server` in `guest` (through its agent) and its
    /// client here, at `client`; the scenario reader allows only `tcp_rr` and `tcp_stream`.
    fn run_in_guest(
        &self,
        guest: &VmNode,
        w: &Workload,
        client: &Site,
        stop: Stop,
    ) -> Result<Outcome, String> {
        let addr = w.to.addr;
        let cpus = w.to_cpus.clone();
        let what = format!(
            "workload {} from {} to VM node {}",
            w.kind.name(),
            w.from.value,
            w.to.node.value
        );
        let spec = match w.kind {
            WorkloadKind::TcpRr {
                request,
                response,
                connections,
            } => ServerSpec::TcpRr {
                addr,
                request,
                response,
                connections,
                cpus,
            },
            WorkloadKind::TcpStream {
                message,
                connections,
                ..
            } => ServerSpec::TcpStream {
                addr,
                message,
                connections,
                cpus,
            },
            _ => {
                return Err(format!(
                    "{what}: only tcp_rr and tcp_stream serve from a VM"
                ));
            }
        };
        let argv = spec.argv(vm::GUEST_LAB);
        thread::scope(|scope| {
            let serving = scope.spawn(|| -> Result<Served, String> {
                let out = guest
                    .run(&argv[0], &argv[1..])
                    .map_err(|e| format!("{what}: starting its server: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "{what}: its server in the guest failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                serde_json::from_slice(&out.stdout).map_err(|e| {
                    format!(
                        "{what}: its server printed {:?}: {e}",
                        String::from_utf8_lossy(&out.stdout)
                    )
                })
            });
            let measured = match w.kind {
                WorkloadKind::TcpRr {
                    request,
                    response,
                    connections,
                } => workloads::tcp_rr_client(
                    client,
                    &TcpRr {
                        addr,
                        request,
                        response,
                        connections,
                        stop,
                    },
                )
                .map(Some),
                WorkloadKind::TcpStream {
                    message,
                    write,
                    connections,
                } => workloads::tcp_stream_client(
                    client,
                    &TcpStream {
                        addr,
                        message,
                        write,
                        connections,
                        stop,
                    },
                )
                .map(|()| None),
                _ => Ok(None),
            }
            .map_err(|e| format!("{what}: {e}"));
            let served = serving
                .join()
                .unwrap_or_else(|_| Err(format!("{what}: its server thread panicked")));
            match (measured?, served?) {
                (Some(rr), _) => Ok(Outcome::Rr(rr)),
                (None, served) => Ok(Outcome::Stream(served.stream_result())),
            }
        })
    }

    /// Runs an HTTP workload against the deployed server.
    fn http(
        &self,
        client: &Site,
        w: &Workload,
        op: HttpOp,
        connections: usize,
        stop: Stop,
    ) -> Result<Outcome, workloads::Error> {
        let token = self.token.clone().unwrap_or_default();
        workloads::http(
            client,
            &Http {
                addr: w.to.addr,
                token,
                op,
                connections,
                stop,
            },
        )
        .map(Outcome::Http)
    }

    fn site(&self, node: &str, cpus: &[usize]) -> Site {
        Site {
            netns: self
                .netns
                .get(node)
                .map(|ns| PathBuf::from(format!("/run/netns/{ns}"))),
            cpus: cpus.to_vec(),
        }
    }
}

/// The change that gives an interface `impairment` (none: remove it).
fn impairment_change(impairment: &Impairment) -> LinkChange {
    if impairment.is_none() {
        LinkChange::Clear
    } else {
        LinkChange::Impair(impairment.clone())
    }
}

/// Each workload's label in metric names: its kind, numbered from 1 when several share it.
fn labels(workloads: &[Workload]) -> Vec<String> {
    workloads
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let kind = w.kind.name();
            let same = workloads.iter().filter(|o| o.kind.name() == kind).count();
            if same == 1 {
                kind.to_owned()
            } else {
                let n = workloads[..i]
                    .iter()
                    .filter(|o| o.kind.name() == kind)
                    .count()
                    + 1;
                format!("{kind}-{n}")
            }
        })
        .collect()
}

/// Adds one workload's metrics, named `LABEL.metric`; returns the payload bytes it delivered.
fn workload_metrics(
    outcome: &Outcome,
    workload: &Workload,
    label: &str,
    metrics: &mut BTreeMap<String, f64>,
) -> u64 {
    let mut put = |name: &str, value: f64| {
        metrics.insert(format!("{label}.{name}"), value);
    };
    match (outcome, &workload.kind) {
        (
            Outcome::Rr(r),
            WorkloadKind::TcpRr {
                request, response, ..
            },
        ) => {
            let bytes = r.round_trips * (request + response) as u64;
            put("rr_per_s", r.rate());
            put("bytes_per_s", per_second(bytes as f64, r.elapsed));
            latency_metrics(&mut put, &r.latency);
            bytes
        }
        (Outcome::Stream(s), _) => {
            put("bytes_per_s", s.rate());
            put("messages_per_s", per_second(s.messages as f64, s.elapsed));
            s.bytes
        }
        (Outcome::Udp(u), WorkloadKind::UdpEcho { size, .. }) => {
            put("echo_per_s", u.rate());
            put("sent_per_s", per_second(u.sent as f64, u.elapsed));
            if let Some(cpu) = u.server_cpu {
                put("server_cpu_s", cpu.as_secs_f64());
            }
            if u.sent > 0 {
                put("lost_fraction", u.lost() as f64 / u.sent as f64);
            }
            latency_metrics(&mut put, &u.latency);
            // Each echo crosses the link twice.
            2 * u.received * *size as u64
        }
        (Outcome::Http(h), _) => {
            put("requests_per_s", h.rate());
            put("bytes_per_s", h.byte_rate());
            latency_metrics(&mut put, &h.latency);
            h.bytes
        }
        _ => 0,
    }
}

/// The HTTP filter's counts over the window, as rates.
fn http_filter_metrics(
    label: &str,
    before: &accel::http_filter::Totals,
    after: &accel::http_filter::Totals,
    elapsed: Duration,
    metrics: &mut BTreeMap<String, f64>,
) {
    for (name, was, now) in [
        ("packets_per_s", before.packets, after.packets),
        (
            "http_requests_per_s",
            before.http_requests,
            after.http_requests,
        ),
        ("dropped_per_s", before.dropped, after.dropped),
        ("monitored_per_s", before.monitored, after.monitored),
        (
            "parse_failures_per_s",
            before.parse_failures,
            after.parse_failures,
        ),
    ] {
        metrics.insert(
            format!("{label}.{name}"),
            per_second(now.saturating_sub(was) as f64, elapsed),
        );
    }
}

/// The latency summary of `histogram` as metrics.
fn latency_metrics(put: &mut impl FnMut(&str, f64), histogram: &Histogram<u64>) {
    let s = LatencySummary::of(histogram);
    put("latency_mean_us", s.mean_us);
    put("p50_us", s.p50_us);
    put("p90_us", s.p90_us);
    put("p99_us", s.p99_us);
    put("p999_us", s.p999_us);
    put("max_us", s.max_us);
}

/// One line about a window: each workload's headline number.
fn summary(outcomes: &[Outcome], labels: &[String]) -> String {
    outcomes
        .iter()
        .zip(labels)
        .map(|(outcome, label)| match outcome {
            Outcome::Rr(r) => format!(
                "{label} {:.0} rr/s p99 {:.1} µs",
                r.rate(),
                LatencySummary::of(&r.latency).p99_us
            ),
            Outcome::Stream(s) => format!("{label} {:.1} MB/s", s.rate() / 1e6),
            Outcome::Udp(u) => format!("{label} {:.0} echoes/s, {} lost", u.rate(), u.lost()),
            Outcome::Http(h) => format!(
                "{label} {:.0} req/s p99 {:.0} µs",
                h.rate(),
                LatencySummary::of(&h.latency).p99_us
            ),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The XDP attach mode a scenario's `MonitorMode` names.
fn attach_mode(mode: MonitorMode) -> accel::AttachMode {
    match mode {
        MonitorMode::Auto => accel::AttachMode::Auto,
        MonitorMode::Native => accel::AttachMode::Native,
        MonitorMode::Generic => accel::AttachMode::Generic,
    }
}

/// "variant `V`: attach WHAT to NODE:IFACE: ERROR".
fn attach_failed(
    variant: &Variant,
    what: &str,
    end: &VethEnd,
    error: impl std::fmt::Display,
) -> String {
    format!(
        "variant `{}`: attach {what} to {}:{}: {error}",
        variant.name.value, end.node, end.iface
    )
}

/// Runs `f` on a thread inside `ns` (the root namespace: a plain thread).
fn in_namespace<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    match ns {
        Netns::Named(name) => lab_netlink::Netns::open(name)
            .and_then(|n| n.run(f))
            .map_err(|e| e.to_string()),
        Netns::Root => thread::scope(|s| s.spawn(f).join())
            .map_err(|_| "the attaching thread panicked".to_owned()),
    }
}

/// Echoes received by every udp_echo workload, and the CPU their server sides used: `None`
/// unless every one measured it ([`UdpEchoResult::server_cpu`]).
fn echo_totals(outcomes: &[Ran]) -> (u64, Option<Duration>) {
    let mut echoes = 0;
    let mut cpu = Some(Duration::ZERO);
    for ran in outcomes {
        if let Outcome::Udp(u) = &ran.outcome {
            echoes += u.received;
            cpu = cpu.zip(u.server_cpu).map(|(a, b)| a + b);
        }
    }
    (echoes, cpu)
}

/// The AF_XDP echo's counts over the window: frames echoed per second and what it dropped;
/// returns the CPU time its queue threads used.
fn afxdp_metrics(
    label: &str,
    before: &afxdp::Stats,
    after: &afxdp::Stats,
    elapsed: Duration,
    metrics: &mut BTreeMap<String, f64>,
) -> Duration {
    let (b, a) = (before.total(), after.total());
    let cpu = Duration::from_nanos(a.cpu_ns.saturating_sub(b.cpu_ns));
    metrics.insert(format!("{label}.cpu_s"), cpu.as_secs_f64());
    let diff = |x: u64, y: u64| y.saturating_sub(x) as f64;
    metrics.insert(
        format!("{label}.rx_per_s"),
        per_second(diff(b.rx_packets, a.rx_packets), elapsed),
    );
    metrics.insert(
        format!("{label}.tx_per_s"),
        per_second(diff(b.tx_packets, a.tx_packets), elapsed),
    );
    metrics.insert(format!("{label}.dropped"), diff(b.dropped, a.dropped));
    metrics.insert(
        format!("{label}.tx_ring_full"),
        diff(b.tx_ring_full, a.tx_ring_full),
    );
    metrics.insert(
        format!("{label}.kernel_rx_dropped"),
        diff(b.kernel_rx_dropped, a.kernel_rx_dropped),
    );
    cpu
}
