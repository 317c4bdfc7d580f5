//! Prometheus counters, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Bytes received by committed uploads.
    pub upload_bytes: AtomicU64,
    /// Bytes sent in download bodies.
    pub download_bytes: AtomicU64,
    /// Tag jobs whose tags were written to the graph.
    pub tag_jobs_done: AtomicU64,
    /// Tag jobs skipped because the file was removed or replaced meanwhile.
    pub tag_jobs_stale: AtomicU64,
    /// Tag jobs whose file could not be analysed (stored with no tags).
    pub tag_jobs_unreadable: AtomicU64,
    /// Tag job attempts that failed and were left for redelivery.
    pub tag_jobs_failed: AtomicU64,
    /// Whether the startup reconciliation of the graph with the stored files has finished
    /// (until then it adds load: a graph lookup per stored file).
    pub reconciled: AtomicBool,
}

/// Gauges read from the stores at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Files in the graph.
    pub files: u64,
    /// Tags in the graph.
    pub tags: u64,
    /// Unacknowledged tag jobs.
    pub queue: u64,
}

impl Metrics {
    /// Counts one answered request.
    pub fn record_request(&self, method: &str, route: &str, status: u16) {
        let mut requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    /// Renders all metrics in the Prometheus text format.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP disgrafs_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE disgrafs_http_requests_total counter\n");
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for ((method, route, status), count) in requests.iter() {
            let route = route.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "disgrafs_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        drop(requests);
        let counters = [
            (
                "upload_bytes_total",
                "Bytes received by committed uploads.",
                &self.upload_bytes,
            ),
            (
                "download_bytes_total",
                "Bytes sent in download bodies.",
                &self.download_bytes,
            ),
            (
                "tag_jobs_done_total",
                "Tag jobs written to the graph.",
                &self.tag_jobs_done,
            ),
            (
                "tag_jobs_stale_total",
                "Tag jobs for removed or replaced files.",
                &self.tag_jobs_stale,
            ),
            (
                "tag_jobs_unreadable_total",
                "Tag jobs whose file could not be analysed.",
                &self.tag_jobs_unreadable,
            ),
            (
                "tag_jobs_failed_total",
                "Tag job attempts left for redelivery.",
                &self.tag_jobs_failed,
            ),
        ];
        for (name, help, value) in counters {
            let value = value.load(Ordering::Relaxed);
            let _ = write!(
                out,
                "# HELP disgrafs_{name} {help}\n# TYPE disgrafs_{name} counter\ndisgrafs_{name} {value}\n"
            );
        }
        let gauges = [
            ("files", "Files in the graph.", gauges.files),
            ("tags", "Tags in the graph.", gauges.tags),
            ("tag_queue_length", "Unacknowledged tag jobs.", gauges.queue),
            (
                "startup_reconciled",
                "1 once the startup reconciliation of graph and stored files has finished.",
                u64::from(self.reconciled.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = write!(
                out,
                "# HELP disgrafs_{name} {help}\n# TYPE disgrafs_{name} gauge\ndisgrafs_{name} {value}\n"
            );
        }
        out
    }
}
