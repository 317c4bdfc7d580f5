//! The DisGraFS eBPF Lab harness: topology files, nodes, scenarios, measurements, reports.

pub mod apply;
pub mod state;
pub mod topology;
