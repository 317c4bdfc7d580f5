//! AF_XDP fast path: an XDP program hands UDP datagrams to chosen ports to one AF_XDP socket
//! per receive queue (map layout: `ebpf_common::afxdp`); a thread per queue echoes or forwards
//! them from user space ([`packet`]) and sends them back out of the same queue. Everything
//! else passes to the kernel stack.
//!
//! # Rings
//! Each queue has its own UMEM of [`FRAMES`] frames of [`FRAME_SIZE`] bytes and the four rings
//! (fill, completion, RX, TX; [`RING`] entries each), bound with `XDP_USE_NEED_WAKEUP`. A frame
//! goes fill → RX → rewritten in place → TX → completion → fill; the loop moves up to
//! [`BATCH`] descriptors per ring per round and sleeps in `poll` when nothing arrives. The
//! queue threads can be pinned ([`Config::cpus`]); their CPU time is in the statistics.
//!
//! # Tuning (copy mode on a veth, the queue thread sharing a CPU with the NAPI thread)
//! The kernel's NAPI fills the RX ring while the queue thread waits for its turn on the CPU,
//! so rings of 4096 and batches of 256 lose fewer frames at a full RX ring than 2048 / 64
//! did, and one `sendto` sends the whole TX ring where the kernel lets it
//! (`XDP_MAX_TX_SKB_BUDGET`), not 32 frames. Busy polling would let the queue thread run
//! NAPI itself, but since Linux 6.13 an AF_XDP socket gets the NAPI id it busy-polls only
//! when bound in zero-copy mode, which a veth does not offer.
//!
//! # Zero-copy and copy mode
//! Binding tries zero-copy first (`XDP_ZEROCOPY`, native XDP drivers with AF_XDP support);
//! when the driver refuses (veth answers `EOPNOTSUPP`) it logs the reason and binds in copy
//! mode. A queue whose previous socket was closed moments ago answers `EBUSY` until the
//! kernel has released it: binding retries for up to [`BIND_RETRY`].
//!
//! # Life cycle
//! [`AfXdp::start`] attaches the program and starts the threads; [`AfXdp::stop`] (or drop)
//! detaches the program, stops the threads and closes the sockets. Nothing is pinned: the fast
//! path lives exactly as long as its process.

pub mod packet;

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    num::NonZeroU32,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, XskMap},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use ebpf_common::afxdp::{COUNTERS_MAP, Counters, MAX_QUEUES, PORTS_MAP, PROGRAM, SOCKETS_MAP};
use serde::Serialize;
use xdpilone::{IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, xdp::XdpDesc};

use self::packet::Drop as DropReason;
pub use self::packet::{NextHop, Rewrite};
use crate::{
    AttachMode, Error, Result,
    object::{self, map_error, program_error},
};

/// The accelerator's name in messages.
pub const ACCELERATOR: &str = "afxdp";
/// Bytes per UMEM frame (a whole Ethernet frame fits, with the kernel's headroom).
pub const FRAME_SIZE: u32 = 2048;
/// Entries of each of the four rings.
pub const RING: u32 = 4096;
/// UMEM frames per queue: a full fill ring and as many in flight.
pub const FRAMES: u32 = 2 * RING;
/// Descriptors moved per ring per round.
pub const BATCH: u32 = 256;
/// How long binding retries a queue that is still `EBUSY`.
pub const BIND_RETRY: Duration = Duration::from_secs(2);
/// Frames the kernel sends per `sendto` wake-up in copy mode unless told otherwise
/// (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17, raises it to the TX ring's size).
const TX_KICK_BUDGET: u32 = 32;
const SOL_XDP: i32 = 283;
const XDP_MAX_TX_SKB_BUDGET: i32 = 9;
/// How long an idle queue sleeps in `poll` before looking at its stop flag again.
const IDLE_POLL_MS: i32 = 50;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/afxdp"));

/// What the fast path does, and for which ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// UDP destination ports handled in user space (at least one, never 0).
    pub ports: Vec<u16>,
    /// Echo, or forward to a next hop.
    pub mode: Mode,
    /// How the XDP program is attached.
    pub attach: AttachMode,
    /// Try zero-copy before copy mode.
    pub zero_copy: bool,
    /// CPUs the queue threads run on, round robin by queue (empty: wherever the scheduler
    /// puts them).
    pub cpus: Vec<usize>,
}

/// Echo or forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Send each datagram back (MAC, IP addresses and ports swapped).
    Echo,
    /// Send each datagram to this next hop (destination MAC and IP rewritten).
    Forward {
        /// The next hop's MAC address.
        mac: [u8; 6],
        /// The new IPv4 destination.
        v4: Option<Ipv4Addr>,
        /// The new IPv6 destination.
        v6: Option<Ipv6Addr>,
    },
}

impl Config {
    /// A checked configuration.
    pub fn new(ports: &[u16], mode: Mode) -> Result<Self> {
        if ports.is_empty() {
            return Err(config("no UDP port given".into()));
        }
        if ports.contains(&0) {
            return Err(config("UDP port 0 cannot be redirected".into()));
        }
        if let Mode::Forward { mac, v4, v6 } = mode {
            if v4.is_none() && v6.is_none() {
                return Err(config(
                    "forwarding needs a next hop IPv4 or IPv6 address".into(),
                ));
            }
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(config(format!(
                    "next hop MAC {} is not a unicast address",
                    format_mac(&mac)
                )));
            }
        }
        let mut ports = ports.to_vec();
        ports.sort_unstable();
        ports.dedup();
        Ok(Self {
            ports,
            mode,
            attach: AttachMode::Auto,
            zero_copy: true,
            cpus: Vec::new(),
        })
    }
}

/// Parses a MAC address written `02:00:00:00:00:0a`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bad = || {
        config(format!(
            "{text:?} is not a MAC address like 02:00:00:00:00:0a"
        ))
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// `02:00:00:00:00:0a`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn config(message: String) -> Error {
    Error::Config {
        accelerator: ACCELERATOR,
        message,
    }
}

/// What one queue's thread counted.
#[derive(Debug, Default)]
struct QueueCounters {
    rx: AtomicU64,
    tx: AtomicU64,
    malformed: AtomicU64,
    bad_checksum: AtomicU64,
    ttl_expired: AtomicU64,
    no_route: AtomicU64,
    tx_ring_full: AtomicU64,
    fill_ring_empty: AtomicU64,
    kernel_rx_dropped: AtomicU64,
    kernel_rx_ring_full: AtomicU64,
    kernel_fill_ring_empty: AtomicU64,
    kernel_invalid_descs: AtomicU64,
    /// The thread's CPU time, last read.
    cpu_ns: AtomicU64,
}

/// One queue's socket and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// The receive queue.
    pub queue: u32,
    /// Whether the socket is bound in zero-copy mode (else copy mode).
    pub zero_copy: bool,
    /// Frames taken from the RX ring.
    pub rx_packets: u64,
    /// Frames put on the TX ring.
    pub tx_packets: u64,
    /// Frames dropped in user space, all reasons.
    pub dropped: u64,
    /// Dropped: not a whole UDP datagram over IPv4/IPv6.
    pub dropped_malformed: u64,
    /// Dropped: IPv4 header or UDP checksum wrong.
    pub dropped_bad_checksum: u64,
    /// Dropped (forward): TTL or hop limit exhausted.
    pub dropped_ttl_expired: u64,
    /// Dropped (forward): no next hop of the datagram's family.
    pub dropped_no_route: u64,
    /// Frames dropped because the TX ring was full.
    pub tx_ring_full: u64,
    /// Rounds that found no free frame to give the fill ring.
    pub fill_ring_empty: u64,
    /// Kernel: frames dropped on receive (`XDP_STATISTICS` rx_dropped).
    pub kernel_rx_dropped: u64,
    /// Kernel: frames dropped because the RX ring was full.
    pub kernel_rx_ring_full: u64,
    /// Kernel: frames that found the fill ring empty.
    pub kernel_fill_ring_empty: u64,
    /// Kernel: invalid RX and TX descriptors.
    pub kernel_invalid_descs: u64,
    /// CPU time of the queue's thread so far, in ns (its system time includes the sends:
    /// in copy mode the kernel transmits from the `sendto` wake-up).
    pub cpu_ns: u64,
}

impl QueueCounters {
    fn snapshot(&self, queue: u32, zero_copy: bool) -> QueueStats {
        let malformed = self.malformed.load(Relaxed);
        let bad_checksum = self.bad_checksum.load(Relaxed);
        let ttl_expired = self.ttl_expired.load(Relaxed);
        let no_route = self.no_route.load(Relaxed);
        QueueStats {
            queue,
            zero_copy,
            rx_packets: self.rx.load(Relaxed),
            tx_packets: self.tx.load(Relaxed),
            dropped: malformed + bad_checksum + ttl_expired + no_route,
            dropped_malformed: malformed,
            dropped_bad_checksum: bad_checksum,
            dropped_ttl_expired: ttl_expired,
            dropped_no_route: no_route,
            tx_ring_full: self.tx_ring_full.load(Relaxed),
            fill_ring_empty: self.fill_ring_empty.load(Relaxed),
            kernel_rx_dropped: self.kernel_rx_dropped.load(Relaxed),
            kernel_rx_ring_full: self.kernel_rx_ring_full.load(Relaxed),
            kernel_fill_ring_empty: self.kernel_fill_ring_empty.load(Relaxed),
            kernel_invalid_descs: self.kernel_invalid_descs.load(Relaxed),
            cpu_ns: self.cpu_ns.load(Relaxed),
        }
    }
}

/// What the XDP program did, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProgramStats {
    /// Frames that reached the program.
    pub packets: u64,
    /// Frames redirected to a socket.
    pub redirected: u64,
    /// Frames of a chosen port on a queue without a socket (passed).
    pub no_socket: u64,
    /// Other frames, passed to the stack.
    pub passed: u64,
}

/// A snapshot of the fast path's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The interface.
    pub iface: String,
    /// The XDP program's counters.
    pub program: ProgramStats,
    /// Per queue, in queue order.
    pub queues: Vec<QueueStats>,
}

impl Stats {
    /// The queues' counters summed (`queue` 0, `zero_copy` when all queues are).
    pub fn total(&self) -> QueueStats {
        let mut t = QueueStats {
            zero_copy: !self.queues.is_empty() && self.queues.iter().all(|q| q.zero_copy),
            ..QueueStats::default()
        };
        for q in &self.queues {
            t.rx_packets += q.rx_packets;
            t.tx_packets += q.tx_packets;
            t.dropped += q.dropped;
            t.dropped_malformed += q.dropped_malformed;
            t.dropped_bad_checksum += q.dropped_bad_checksum;
            t.dropped_ttl_expired += q.dropped_ttl_expired;
            t.dropped_no_route += q.dropped_no_route;
            t.tx_ring_full += q.tx_ring_full;
            t.fill_ring_empty += q.fill_ring_empty;
            t.kernel_rx_dropped += q.kernel_rx_dropped;
            t.kernel_rx_ring_full += q.kernel_rx_ring_full;
            t.kernel_fill_ring_empty += q.kernel_fill_ring_empty;
            t.kernel_invalid_descs += q.kernel_invalid_descs;
            t.cpu_ns += q.cpu_ns;
        }
        t
    }
}

/// One running queue thread.
#[derive(Debug)]
struct Worker {
    queue: u32,
    zero_copy: bool,
    /// The thread's kernel id (its CPU time is read from procfs).
    tid: u32,
    counters: Arc<QueueCounters>,
    thread: JoinHandle<Result<()>>,
}

/// The fast path on one interface, owned by this process: dropping it stops it.
#[derive(Debug)]
pub struct AfXdp {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
    mode: XdpMode,
    iface: String,
    stop: Arc<AtomicBool>,
    workers: Vec<Worker>,
}

impl AfXdp {
    /// Loads the program, opens one AF_XDP socket per receive queue of `iface` (in the calling
    /// thread's network namespace), starts their threads and attaches the program.
    pub fn start(iface: &str, config: &Config) -> Result<Self> {
        let ifindex = ifindex(iface)?;
        let queues = rx_queues(iface)?;
        if queues > MAX_QUEUES {
            return Err(config_error_queues(iface, queues));
        }
        let rewrite = match config.mode {
            Mode::Echo => Rewrite::Echo,
            Mode::Forward { mac, v4, v6 } => Rewrite::Forward(NextHop {
                mac,
                src_mac: hardware_address(iface)?,
                v4,
                v6,
            }),
        };
        let mut ebpf = object::load(ACCELERATOR, OBJECT)?;
        {
            let mut ports: Array<&mut MapData, u8> =
                Array::try_from(object::map_mut(&mut ebpf, ACCELERATOR, PORTS_MAP)?)
                    .map_err(map_error(PORTS_MAP))?;
            for &port in &config.ports {
                ports
                    .set(u32::from(port), 1, 0)
                    .map_err(map_error(PORTS_MAP))?;
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut this = Self {
            ebpf,
            link: None,
            mode: XdpMode::Skb,
            iface: iface.to_owned(),
            stop: stop.clone(),
            workers: Vec::new(),
        };
        // The program goes first: zero-copy binding needs native XDP on the interface.
        let xdp: &mut Xdp = object::program(&mut this.ebpf, ACCELERATOR, PROGRAM)?;
        xdp.load().map_err(program_error("load", PROGRAM))?;
        let (mode, link) = object::attach_xdp(xdp, PROGRAM, iface, config.attach)?;
        this.mode = mode;
        this.link = Some(link);
        let zero_copy = config.zero_copy && mode == XdpMode::Driver;
        for queue in 0..queues {
            let (ready_tx, ready_rx) = mpsc::channel();
            let counters = Arc::new(QueueCounters::default());
            let (c, s) = (counters.clone(), stop.clone());
            let setup = QueueSetup {
                ifindex,
                queue,
                zero_copy,
                cpu: (!config.cpus.is_empty())
                    .then(|| config.cpus[queue as usize % config.cpus.len()]),
                rewrite,
            };
            let thread = thread::Builder::new()
                .name(format!("afxdp-q{queue}"))
                .spawn(move || run_queue(&setup, &c, &s, ready_tx))
                .map_err(Error::io(format!("spawn the thread of queue {queue}")))?;
            match ready_rx.recv() {
                Ok((fd, zero_copy, tid)) => {
                    this.workers.push(Worker {
                        queue,
                        zero_copy,
                        tid,
                        counters,
                        thread,
                    });
                    let mut sockets: XskMap<&mut MapData> = XskMap::try_from(object::map_mut(
                        &mut this.ebpf,
                        ACCELERATOR,
                        SOCKETS_MAP,
                    )?)
                    .map_err(map_error(SOCKETS_MAP))?;
                    sockets.set(queue, fd, 0).map_err(map_error(SOCKETS_MAP))?;
                }
                // The thread ended before it was ready: its result says why.
                Err(_) => {
                    return Err(thread
                        .join()
                        .unwrap_or_else(|_| {
                            Err(Error::Io {
                                path: format!("AF_XDP queue {queue} of {iface}").into(),
                                source: io::Error::other("its thread panicked"),
                            })
                        })
                        .err()
                        .unwrap_or_else(|| Error::Io {
                            path: format!("AF_XDP queue {queue} of {iface}").into(),
                            source: io::Error::other("its thread ended before binding"),
                        }));
                }
            }
        }
        Ok(this)
    }

    /// The XDP mode the kernel accepted.
    pub fn xdp_mode(&self) -> XdpMode {
        self.mode
    }

    /// The interface.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The kernel's id of the loaded XDP program.
    pub fn program_id(&self) -> Result<u32> {
        Ok(object::program_ids(&self.ebpf, ACCELERATOR, &[PROGRAM])?[0])
    }

    /// Whether a queue thread has ended (by an error); [`AfXdp::stop`] tells which error.
    pub fn failed(&self) -> bool {
        self.workers.iter().any(|w| w.thread.is_finished())
    }

    /// Reads the counters.
    pub fn stats(&self) -> Result<Stats> {
        let counters: PerCpuArray<&MapData, Counters> =
            PerCpuArray::try_from(object::map(&self.ebpf, ACCELERATOR, COUNTERS_MAP)?)
                .map_err(map_error(COUNTERS_MAP))?;
        let per_cpu = counters.get(&0, 0).map_err(map_error(COUNTERS_MAP))?;
        let program = per_cpu.iter().fold(ProgramStats::default(), |mut s, c| {
            s.packets += c.packets;
            s.redirected += c.redirected;
            s.no_socket += c.no_socket;
            s.passed += c.passed;
            s
        });
        Ok(Stats {
            iface: self.iface.clone(),
            program,
            queues: self
                .workers
                .iter()
                .map(|w| {
                    // A thread that has ended left its final CPU time in its counters.
                    if let Some(ns) = thread_cpu_ns(w.tid) {
                        w.counters.cpu_ns.fetch_max(ns, Relaxed);
                    }
                    w.counters.snapshot(w.queue, w.zero_copy)
                })
                .collect(),
        })
    }

    /// Detaches the program, stops the queue threads and closes their sockets; returns the
    /// last counters, or the first error a queue thread ended with.
    pub fn stop(mut self) -> Result<Stats> {
        let stats = self.stats();
        let ended = self.shutdown();
        let mut stats = stats?;
        for (q, w) in stats.queues.iter_mut().zip(&ended) {
            *q = w.0;
        }
        ended.into_iter().try_for_each(|(_, r)| r)?;
        Ok(stats)
    }

    /// Detaches and joins every thread (sockets close as they end): each queue's final
    /// counters and how its thread ended.
    fn shutdown(&mut self) -> Vec<(QueueStats, Result<()>)> {
        if let Some(link) = self.link.take()
            && let Some(xdp) = self
                .ebpf
                .program_mut(PROGRAM)
                .and_then(|p| <&mut Xdp>::try_from(p).ok())
        {
            // Detaching cannot fail in a way left to handle: the link is closed either way.
            let _ = xdp.detach(link);
        }
        self.stop.store(true, Relaxed);
        self.workers
            .drain(..)
            .map(|w| {
                let result = w.thread.join().unwrap_or_else(|_| {
                    Err(Error::Io {
                        path: format!("AF_XDP queue {}", w.queue).into(),
                        source: io::Error::other("its thread panicked"),
                    })
                });
                (w.counters.snapshot(w.queue, w.zero_copy), result)
            })
            .collect()
    }
}

impl Drop for AfXdp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn config_error_queues(iface: &str, queues: u32) -> Error {
    config(format!(
        "{iface} has {queues} receive queues; at most {MAX_QUEUES} are supported"
    ))
}

fn ifindex(iface: &str) -> Result<u32> {
    let name = CString::new(iface).map_err(|_| Error::NoInterface(iface.to_owned()))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(Error::NoInterface(iface.to_owned())),
        index => Ok(index),
    }
}

/// A datagram socket for interface ioctls, in the calling thread's namespace.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(iface: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// `struct ethtool_channels` of `<linux/ethtool.h>`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// The receive queues of `iface` (`ETHTOOL_GCHANNELS`: rx or combined channels); 1 for
/// drivers that do not report channels.
fn rx_queues(iface: &str) -> Result<u32> {
    let socket = ioctl_socket().map_err(Error::io(format!("socket to query {iface}")))?;
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    let mut ifr = ifreq(iface);
    ifr.ifr_ifru.ifru_data = (&raw mut channels).cast();
    // SAFETY: `ifr` names the interface and points at `channels`, both alive during the call;
    // the kernel reads and writes only the ethtool_channels.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut ifr) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(1),
            Some(libc::ENODEV) => Err(Error::NoInterface(iface.to_owned())),
            _ => Err(Error::io(format!("ETHTOOL_GCHANNELS on {iface}"))(e)),
        };
    }
    Ok(channels.rx_count.max(channels.combined_count).max(1))
}

/// The MAC address of `iface` (`SIOCGIFHWADDR`).
fn hardware_address(iface: &str) -> Result<[u8; 6]> {
    let socket = ioctl_socket().map_err(Error::io(format!("socket to query {iface}")))?;
    let mut ifr = ifreq(iface);
    // SAFETY: `ifr` names the interface; the kernel fills its hardware address.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut ifr) };
    if ret < 0 {
        return Err(Error::io(format!("SIOCGIFHWADDR on {iface}"))(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: SIOCGIFHWADDR filled the sockaddr variant of the union.
    let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// An anonymous, page-aligned mapping for a UMEM, unmapped on drop.
struct Area {
    ptr: NonNull<[u8]>,
}

impl Area {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(std::ptr::slice_from_raw_parts_mut(addr.cast::<u8>(), len))
            .ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { ptr })
    }

    /// The frame bytes at `addr..addr + len`, if inside the area.
    fn frame(&mut self, addr: u64, len: u32) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len as usize)?;
        if end > self.ptr.len() {
            return None;
        }
        // SAFETY: in bounds (checked); the kernel does not touch a frame between handing it
        // over on the RX ring and getting it back on the TX or fill ring, and only this thread
        // uses the area.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.ptr.cast::<u8>().as_ptr().add(start), end - start)
        })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; the rings and the UMEM socket that
        // referenced it are dropped before (field order of `Queue`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.ptr.len()) };
    }
}

/// One queue's socket: rings, UMEM and its memory. Field order is drop order: the rings and
/// sockets close before the memory is unmapped.
struct Queue {
    rx: RingRx,
    tx: RingTx,
    fill: xdpilone::DeviceQueue,
    user: xdpilone::User,
    _umem: Umem,
    area: Area,
    zero_copy: bool,
    /// Frames user space holds: neither in a ring nor being rewritten.
    free: Vec<u64>,
    /// Frames one `sendto` sends in copy mode.
    tx_budget: u32,
}

impl Queue {
    /// Binds a socket to `queue`, zero-copy first when asked, retrying `EBUSY` for
    /// [`BIND_RETRY`].
    fn open(ifindex: u32, queue: u32, zero_copy: bool) -> Result<Self> {
        let what = |mode: &str| format!("bind an AF_XDP socket to queue {queue} ({mode} mode)");
        if zero_copy {
            match Self::open_retrying(ifindex, queue, true) {
                Ok(q) => return Ok(q),
                Err(e) => tracing::warn!(
                    "afxdp: zero-copy not available on queue {queue} ({e}); falling back to \
                     copy mode"
                ),
            }
        }
        Self::open_retrying(ifindex, queue, false).map_err(Error::io(what("copy")))
    }

    fn open_retrying(ifindex: u32, queue: u32, zero_copy: bool) -> io::Result<Self> {
        let deadline = Instant::now() + BIND_RETRY;
        loop {
            match Self::open_once(ifindex, queue, zero_copy) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    tracing::debug!("afxdp: queue {queue} busy, retrying the bind");
                    thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn open_once(ifindex: u32, queue: u32, zero_copy: bool) -> io::Result<Self> {
        let errno = |e: xdpilone::Errno| io::Error::from_raw_os_error(e.get_raw().abs());
        let area = Area::new((FRAMES * FRAME_SIZE) as usize)?;
        let umem_config = UmemConfig {
            fill_size: RING,
            complete_size: RING,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: the area is page aligned (mmap) and outlives the UMEM (field order).
        let umem = unsafe { Umem::new(umem_config, area.ptr) }.map_err(errno)?;
        let mut info = IfInfo::invalid();
        info.from_ifindex(ifindex).map_err(errno)?;
        info.set_queue(queue);
        let socket = Socket::with_shared(&info, &umem).map_err(errno)?;
        let fill = umem.fq_cq(&socket).map_err(errno)?;
        let mode = if zero_copy {
            SocketConfig::XDP_BIND_ZEROCOPY
        } else {
            SocketConfig::XDP_BIND_COPY
        };
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: NonZeroU32::new(RING),
                    tx_size: NonZeroU32::new(RING),
                    bind_flags: SocketConfig::XDP_BIND_NEED_WAKEUP | mode,
                },
            )
            .map_err(errno)?;
        let rx = user.map_rx().map_err(errno)?;
        let tx = user.map_tx().map_err(errno)?;
        umem.bind(&user).map_err(errno)?;
        Ok(Self {
            rx,
            tx,
            fill,
            user,
            _umem: umem,
            area,
            zero_copy,
            free: (0..FRAMES).map(|i| u64::from(i * FRAME_SIZE)).collect(),
            tx_budget: TX_KICK_BUDGET,
        })
    }

    /// Lets one `sendto` send the whole TX ring where the kernel allows it (copy mode).
    fn raise_tx_budget(&mut self) {
        if self.zero_copy {
            return;
        }
        match setsockopt(self.fd(), SOL_XDP, XDP_MAX_TX_SKB_BUDGET, RING as i32) {
            Ok(()) => self.tx_budget = RING,
            Err(e) => tracing::debug!(
                "afxdp: sendto budget stays {TX_KICK_BUDGET} (XDP_MAX_TX_SKB_BUDGET: {e})"
            ),
        }
    }

    fn fd(&self) -> RawFd {
        self.user.as_raw_fd()
    }
}

/// What a queue thread is to do.
#[derive(Clone, Copy, Debug)]
struct QueueSetup {
    ifindex: u32,
    queue: u32,
    zero_copy: bool,
    cpu: Option<usize>,
    rewrite: Rewrite,
}

/// A queue thread: pins itself, opens the socket, reports (fd, zero-copy, thread id) on
/// `ready`, then moves frames until `stop`.
fn run_queue(
    setup: &QueueSetup,
    counters: &QueueCounters,
    stop: &AtomicBool,
    ready: mpsc::Sender<(RawFd, bool, u32)>,
) -> Result<()> {
    let queue = setup.queue;
    if let Some(cpu) = setup.cpu {
        pin_to(cpu).map_err(Error::io(format!(
            "pin the thread of queue {queue} to CPU {cpu}"
        )))?;
    }
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    let mut q = Queue::open(setup.ifindex, queue, setup.zero_copy)?;
    q.raise_tx_budget();
    // Frames must be on the fill ring before the socket enters the XSKMAP, or the first
    // datagrams find none and are dropped.
    q.refill(counters);
    if ready.send((q.fd(), q.zero_copy, tid)).is_err() {
        return Ok(());
    }
    drop(ready);
    let served = q.serve(setup.rewrite, counters, stop);
    if let Some(ns) = thread_cpu_ns(tid) {
        counters.cpu_ns.fetch_max(ns, Relaxed);
    }
    served
}

fn setsockopt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: an int option value, alive during the call.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// CPU time of thread `tid` of this process in ns (`/proc/self/task/TID/schedstat`), or
/// `None` once it has ended.
fn thread_cpu_ns(tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Queue {
    fn serve(
        &mut self,
        rewrite: Rewrite,
        counters: &QueueCounters,
        stop: &AtomicBool,
    ) -> Result<()> {
        let mut out: Vec<XdpDesc> = Vec::with_capacity(BATCH as usize);
        let mut drops = [0u64; 4];
        let mut rounds = 0u32;
        while !stop.load(Relaxed) {
            // Sent frames come back on the completion ring.
            {
                let mut done = self.fill.complete(RING);
                self.free.extend(done.by_ref());
                done.release();
            }
            self.refill(counters);
            if self.fill.needs_wakeup() {
                self.fill.wake();
            }
            // Received frames are rewritten in place and queued for sending.
            let mut received = 0u64;
            {
                let mut rx = self.rx.receive(BATCH);
                for desc in rx.by_ref() {
                    received += 1;
                    let frame_start = desc.addr - desc.addr % u64::from(FRAME_SIZE);
                    match self.area.frame(desc.addr, desc.len) {
                        Some(frame) => match packet::rewrite(frame, &rewrite) {
                            Ok(len) => out.push(XdpDesc {
                                addr: desc.addr,
                                len: len as u32,
                                options: 0,
                            }),
                            Err(reason) => {
                                drops[reason as usize] += 1;
                                self.free.push(frame_start);
                            }
                        },
                        None => {
                            drops[DropReason::Malformed as usize] += 1;
                            self.free.push(frame_start);
                        }
                    }
                }
                rx.release();
            }
            if !out.is_empty() {
                let mut tx = self.tx.transmit(out.len() as u32);
                let sent = tx.insert(out.iter().copied()) as usize;
                tx.commit();
                if sent < out.len() {
                    counters
                        .tx_ring_full
                        .fetch_add((out.len() - sent) as u64, Relaxed);
                    self.free.extend(
                        out[sent..]
                            .iter()
                            .map(|d| d.addr - d.addr % u64::from(FRAME_SIZE)),
                    );
                }
                counters.tx.fetch_add(sent as u64, Relaxed);
                out.clear();
            }
            self.kick_tx();
            if received > 0 {
                counters.rx.fetch_add(received, Relaxed);
                rounds = rounds.wrapping_add(1);
                if rounds.is_multiple_of(1024) {
                    self.publish(counters, &mut drops);
                }
            } else if self.tx.pending() == 0 {
                self.publish(counters, &mut drops);
                let mut poll = libc::pollfd {
                    fd: self.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                let ret = unsafe { libc::poll(&mut poll, 1, IDLE_POLL_MS) };
                if ret < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(Error::io("poll on an AF_XDP socket")(e));
                    }
                }
            }
        }
        self.publish(counters, &mut drops);
        Ok(())
    }

    /// Asks the kernel to send what the TX ring holds. In copy mode one `sendto` sends at most
    /// `tx_budget` frames, so it is repeated until the ring is drained (bounded, so a stalled
    /// device cannot hold the loop).
    fn kick_tx(&mut self) {
        let mut kicks = self.tx.pending() / self.tx_budget + 1;
        while kicks > 0 && self.tx.pending() > 0 && self.tx.needs_wakeup() {
            self.tx.wake();
            kicks -= 1;
        }
    }

    /// Gives the fill ring every free frame it has room for.
    fn refill(&mut self, counters: &QueueCounters) {
        if self.free.is_empty() {
            counters.fill_ring_empty.fetch_add(1, Relaxed);
            return;
        }
        let mut fill = self.fill.fill(self.free.len() as u32);
        let from = self.free.len() - fill.capacity() as usize;
        let inserted = fill.insert(self.free[from..].iter().copied()) as usize;
        fill.commit();
        self.free.truncate(self.free.len() - inserted);
    }

    /// Moves the drop tallies into `counters` and reads the kernel's socket statistics.
    fn publish(&self, counters: &QueueCounters, drops: &mut [u64; 4]) {
        for (reason, counter) in [
            (DropReason::Malformed, &counters.malformed),
            (DropReason::BadChecksum, &counters.bad_checksum),
            (DropReason::TtlExpired, &counters.ttl_expired),
            (DropReason::NoRoute, &counters.no_route),
        ] {
            counter.fetch_add(std::mem::take(&mut drops[reason as usize]), Relaxed);
        }
        if let Ok(s) = self.user.statistics_v2() {
            counters.kernel_rx_dropped.store(s.rx_dropped, Relaxed);
            counters.kernel_rx_ring_full.store(s.rx_ring_full, Relaxed);
            counters
                .kernel_fill_ring_empty
                .store(s.rx_fill_ring_empty_descs, Relaxed);
            counters
                .kernel_invalid_descs
                .store(s.rx_invalid_descs + s.tx_invalid_descs, Relaxed);
        }
    }
}
