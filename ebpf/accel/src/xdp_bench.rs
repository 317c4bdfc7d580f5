//! Benchmark helpers at XDP: a traffic generator inside the kernel and an XDP_DROP sink.
//!
//! [`TrafficGen`] runs a tiny XDP program through `BPF_PROG_TEST_RUN` in live-frames mode
//! (Linux 5.18+): the kernel builds a frame from the given bytes `count` times, in batches,
//! and the program redirects each one out of an interface (`bpf_redirect`). Out of a veth, the
//! frames land in the peer's receive ring like frames a NIC delivers: the peer's NAPI poll runs
//! its XDP program, or builds an skb for the stack, on the same CPU as soon as a batch is
//! flushed. The kernel's test timer covers all of it, so [`TrafficGen::send`] returns the CPU
//! time per frame of generating, transferring and receiving; [`TrafficGen::discard`] times the
//! generator alone (the program drops each frame in place), to subtract.

use std::time::Duration;

use aya::{
    Ebpf,
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};

use crate::{
    AttachMode, Error, Result,
    object::{self, map_error, program_error},
};

const OBJECT_NAME: &str = "xdp_bench";
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_bench"));
const GEN_PROGRAM: &str = "xdp_bench_gen";
const DROP_PROGRAM: &str = "xdp_bench_drop";
const TARGET_MAP: &str = "XB_TARGET";

/// Frames per batch: the kernel flushes redirected frames (and the receiver polls them) after
/// each batch, as a NIC driver does after a NAPI poll of up to 64 frames.
pub const BATCH: u32 = 64;

/// The generator program, loaded (not attached).
#[derive(Debug)]
pub struct TrafficGen {
    ebpf: Ebpf,
}

impl TrafficGen {
    /// Loads the generator.
    pub fn new() -> Result<Self> {
        let mut ebpf = object::load(OBJECT_NAME, OBJECT)?;
        let xdp: &mut Xdp = object::program(&mut ebpf, OBJECT_NAME, GEN_PROGRAM)?;
        xdp.load().map_err(program_error("load", GEN_PROGRAM))?;
        Ok(Self { ebpf })
    }

    /// Sends `count` copies of `frame` out of interface `iface` (in the calling thread's
    /// network namespace): the kernel's mean time per frame. The receiving end must take XDP
    /// frames — a veth whose peer has an XDP program or GRO on.
    pub fn send(&mut self, iface: &str, frame: &[u8], count: u32) -> Result<Duration> {
        let ifindex = object::ifindex(iface).ok_or_else(|| Error::NoInterface(iface.to_owned()))?;
        self.run(ifindex, frame, count)
    }

    /// Builds and drops `count` copies of `frame` in the generator: its own mean time per
    /// frame.
    pub fn discard(&mut self, frame: &[u8], count: u32) -> Result<Duration> {
        self.run(0, frame, count)
    }

    fn run(&mut self, ifindex: u32, frame: &[u8], count: u32) -> Result<Duration> {
        let mut target: Array<_, u32> =
            Array::try_from(object::map_mut(&mut self.ebpf, OBJECT_NAME, TARGET_MAP)?)
                .map_err(map_error(TARGET_MAP))?;
        target.set(0, ifindex, 0).map_err(map_error(TARGET_MAP))?;
        let xdp: &mut Xdp = object::program(&mut self.ebpf, OBJECT_NAME, GEN_PROGRAM)?;
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::default()
        };
        let result = xdp.test_run(options).map_err(program_error(
            &format!(
                "BPF_PROG_TEST_RUN (live frames, {} byte frame) of",
                frame.len()
            ),
            GEN_PROGRAM,
        ))?;
        Ok(result.duration)
    }
}

/// An XDP program that drops every frame, attached to an interface: dropping it detaches.
#[derive(Debug)]
pub struct DropSink {
    ebpf: Ebpf,
}

impl DropSink {
    /// Attaches the drop program to `iface` (in the calling thread's network namespace).
    pub fn attach(iface: &str, mode: AttachMode) -> Result<Self> {
        let mut ebpf = object::load(OBJECT_NAME, OBJECT)?;
        let xdp: &mut Xdp = object::program(&mut ebpf, OBJECT_NAME, DROP_PROGRAM)?;
        xdp.load().map_err(program_error("load", DROP_PROGRAM))?;
        object::attach_xdp(xdp, DROP_PROGRAM, iface, mode)?;
        Ok(Self { ebpf })
    }

    /// How many times the kernel has run the drop program, while BPF run-time statistics
    /// were on (`aya::sys::enable_stats`).
    pub fn runs(&self) -> Result<u64> {
        let program = self.ebpf.program(DROP_PROGRAM).ok_or(Error::WrongType {
            object: OBJECT_NAME,
            name: DROP_PROGRAM,
        })?;
        Ok(program
            .info()
            .map_err(program_error("query", DROP_PROGRAM))?
            .run_count())
    }
}
