//! The DisGraFS eBPF Lab harness: topology files, nodes, scenarios, measurements, reports.

pub mod topology;
