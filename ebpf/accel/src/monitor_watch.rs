//! `accel monitor watch`: a per-second view of the pinned monitor's per-CPU rates, and
//! optionally its counters in Prometheus text format on `/metrics`.

use std::{
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use accel::monitor::{PinnedMonitor, Stats};
use anyhow::Context as _;
use axum::{Router, http::header, response::IntoResponse, routing::get};

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Shows rates every second (`count` times, or until interrupted) while serving `/metrics` on
/// `listen`.
pub fn run(
    monitor: PinnedMonitor,
    listen: Option<SocketAddr>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("start the async runtime")?;
    let monitor = Arc::new(monitor);
    runtime.block_on(async {
        if let Some(addr) = listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen on {addr}"))?;
            let app = Router::new().route(
                "/metrics",
                get({
                    let monitor = Arc::clone(&monitor);
                    move || metrics(Arc::clone(&monitor))
                }),
            );
            eprintln!(
                "serving Prometheus metrics on http://{}/metrics",
                listener.local_addr()?
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        let terminal = std::io::stdout().is_terminal();
        let mut before = monitor.stats()?;
        let mut at = Instant::now();
        let mut shown = 0;
        while count.is_none_or(|n| shown < n) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = monitor.stats()?;
            let elapsed = at.elapsed();
            at = Instant::now();
            let mut out = std::io::stdout().lock();
            if terminal {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            write!(out, "{}", view(&now.since(&before), elapsed))?;
            out.flush()?;
            before = now;
            shown += 1;
        }
        Ok(())
    })
}

async fn metrics(monitor: Arc<PinnedMonitor>) -> axum::response::Response {
    match monitor.stats() {
        Ok(stats) => (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            stats.prometheus(),
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("read the monitor's counters: {e}\n"),
        )
            .into_response(),
    }
}

/// One refresh: per-CPU rates over `elapsed`, sorted by CPU, with each CPU's share of the
/// received packets and NET_RX time.
fn view(delta: &Stats, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let total = delta.total();
    let share = |part: u64, all: u64| {
        if all == 0 {
            0.0
        } else {
            100.0 * part as f64 / all as f64
        }
    };
    let mut out = format!(
        "monitor on {} — per second over {:.2} s\n{:>5} {:>12} {:>10} {:>7} {:>10} {:>7} {:>9} {:>10} {:>10} {:>10}\n",
        delta.iface,
        secs,
        "cpu",
        "rx_pkt/s",
        "rx_MB/s",
        "pkt_%",
        "net_rx_%",
        "rx_t_%",
        "retrans/s",
        "redir/s",
        "cpumap/s",
        "sockmap/s"
    );
    let mut cpus = delta.per_cpu.clone();
    cpus.sort_by_key(|c| c.cpu);
    let mut row = |cpu: &str, c: &accel::monitor::Counters| {
        out.push_str(&format!(
            "{cpu:>5} {:>12.0} {:>10.2} {:>7.1} {:>10.1} {:>7.1} {:>9.0} {:>10.0} {:>10.0} {:>10.0}\n",
            c.kernel.rx_packets as f64 / secs,
            c.kernel.rx_bytes as f64 / secs / 1e6,
            share(c.kernel.rx_packets, total.kernel.rx_packets),
            // Share of this second spent in NET_RX softirqs.
            100.0 * c.kernel.net_rx_softirq_ns as f64 / 1e9 / secs,
            share(c.kernel.net_rx_softirq_ns, total.kernel.net_rx_softirq_ns),
            c.kernel.tcp_retransmits as f64 / secs,
            c.kernel.xdp_redirects as f64 / secs,
            c.kernel.cpumap_packets as f64 / secs,
            c.sockmap_redirects as f64 / secs,
        ));
    };
    for c in &cpus {
        row(&c.cpu.to_string(), &c.counters);
    }
    row("all", &total);
    out
}
