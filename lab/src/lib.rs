//! The DisGraFS eBPF Lab harness: topology files, nodes, scenarios, measurements, reports.

pub mod apply;
mod cgroup;
pub mod deploy;
pub mod images;
pub mod measure;
pub mod napi;
pub mod node;
pub mod report;
mod rng;
pub mod rps;
pub mod run;
pub mod scenario;
pub mod state;
pub mod topology;
pub mod workloads;
