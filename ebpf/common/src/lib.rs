//! Types and constants shared by the eBPF programs (`ebpf-programs`, built for
//! `bpfel-unknown-none`) and user space (`accel`, with the `user` feature).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into maps, user space
//! reads the same bytes back.
#![no_std]

pub mod afxdp;
pub mod cpu_balance;
pub mod http_filter;
pub mod monitor;
pub mod sock_redirect;
pub mod udp_gen;
