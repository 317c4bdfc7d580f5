//! Socket redirect for same-host TCP: a sock_ops program records established sockets of the
//! attached cgroup in a sockhash keyed by their 4-tuple and network namespace, and an sk_msg
//! program hands each message straight to the peer socket's receive queue when the peer is
//! recorded too. The per-socket gate that keeps small-write streams on TCP, why it never
//! reorders bytes, and how a switched socket leaves the sockhash without losing any are
//! described in `ebpf_common::sock_redirect`.
#![no_std]
#![no_main]

use core::{
    ffi::c_void,
    ptr::{self, read_volatile},
};

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE, sk_action,
    },
    helpers::generated::{bpf_get_netns_cookie, bpf_map_delete_elem},
    macros::{map, sk_msg, sock_ops},
    maps::{HashMap, PerCpuArray, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};
use ebpf_common::sock_redirect::{
    CLAIM_INCOMING, CLAIM_LEAVING, Counters, MAX_PORTS, MAX_SOCKETS, MODE_LEFT, MODE_REDIRECT,
    MODE_TCP, MODE_TCP_STAYS, PortConfig, SMALL_RUN_LIMIT, SockKey, SockState, v4_mapped,
};
use ebpf_programs::with_percpu_slot;

#[map]
static SR_SOCKETS: SockHash<SockKey> = SockHash::with_max_entries(MAX_SOCKETS, 0);

#[map]
static SR_STATES: HashMap<SockKey, SockState> = HashMap::with_max_entries(MAX_SOCKETS, 0);

#[map]
static SR_CLAIMS: HashMap<SockKey, u32> = HashMap::with_max_entries(MAX_SOCKETS, 0);

#[map]
static SR_PORTS: HashMap<u16, PortConfig> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map]
static SR_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// The address and port fields both program contexts share (`bpf_sock_ops`, `sk_msg_md`),
/// read before anything branches on them.
struct Endpoints {
    family: u32,
    local_ip4: u32,
    remote_ip4: u32,
    local_ip6: [u32; 4],
    remote_ip6: [u32; 4],
    local_port: u32,
    remote_port: u32,
}

/// Reads the [`Endpoints`] of a context pointer. Every field is a separate 4-byte volatile
/// load at a constant offset: the verifier accepts only such context loads, and rejects
/// context pointers the compiler would otherwise merge across branches or widen.
macro_rules! endpoints {
    ($ctx:expr) => {{
        let ctx = $ctx;
        // SAFETY: `ctx` is the program's context, valid for its run; each load reads one u32
        // field of it.
        unsafe {
            Endpoints {
                family: read_volatile(&raw const (*ctx).family),
                local_ip4: read_volatile(&raw const (*ctx).local_ip4),
                remote_ip4: read_volatile(&raw const (*ctx).remote_ip4),
                local_ip6: [
                    read_volatile(&raw const (*ctx).local_ip6[0]),
                    read_volatile(&raw const (*ctx).local_ip6[1]),
                    read_volatile(&raw const (*ctx).local_ip6[2]),
                    read_volatile(&raw const (*ctx).local_ip6[3]),
                ],
                remote_ip6: [
                    read_volatile(&raw const (*ctx).remote_ip6[0]),
                    read_volatile(&raw const (*ctx).remote_ip6[1]),
                    read_volatile(&raw const (*ctx).remote_ip6[2]),
                    read_volatile(&raw const (*ctx).remote_ip6[3]),
                ],
                local_port: read_volatile(&raw const (*ctx).local_port),
                remote_port: read_volatile(&raw const (*ctx).remote_port),
            }
        }
    }};
}

/// This socket's key, or `None` for a family other than IPv4 and IPv6.
#[inline(always)]
fn key_of(e: &Endpoints, netns: u64) -> Option<SockKey> {
    let (local_ip, remote_ip) = match e.family {
        AF_INET => (v4_mapped(e.local_ip4), v4_mapped(e.remote_ip4)),
        AF_INET6 => (e.local_ip6, e.remote_ip6),
        _ => return None,
    };
    Some(SockKey {
        netns,
        local_ip,
        remote_ip,
        local_port: e.local_port,
        // The context holds the network-order port in the first two bytes of the word.
        remote_port: u32::from_be(e.remote_port),
    })
}

/// The scope's configuration for this connection: its local port's, else its remote port's.
#[inline(always)]
fn port_config(key: &SockKey) -> Option<PortConfig> {
    let config = SR_PORTS
        .get_ptr(key.local_port as u16)
        .or_else(|| SR_PORTS.get_ptr(key.remote_port as u16))?;
    // SAFETY: a map value, valid for the program's run; PortConfig is plain data.
    Some(unsafe { *config })
}

/// Records established sockets of ports in scope, lets switched sockets leave the sockhash,
/// and drops the gate state of closing ones.
#[sock_ops]
pub fn sock_redirect_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    let is_close = op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == BPF_TCP_CLOSE;
    if !is_close
        && op != BPF_SOCK_OPS_RTT_CB
        && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
    {
        return 1;
    }
    let ops = ctx.ops;
    let fields = endpoints!(ops);
    // SAFETY: the helper reads the context it is given.
    let netns = unsafe { bpf_get_netns_cookie(ops.cast::<c_void>()) };
    let Some(mut key) = key_of(&fields, netns) else {
        return 1;
    };
    if is_close {
        remove(&ctx, &key);
    } else if op == BPF_SOCK_OPS_RTT_CB {
        try_leave(&ctx, &key);
    } else if port_config(&key).is_some() {
        record(&ctx, &mut key);
    }
    1
}

/// Adds an established socket to the sockhash with a fresh gate state.
#[inline(always)]
fn record(ctx: &SockOpsContext, key: &mut SockKey) {
    // Without the state callback the entry would outlive the socket: record nothing then. The
    // RTT callback (on acknowledgements) is where a switched socket leaves the sockhash.
    if ctx
        .set_cb_flags(
            (ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG) as i32,
        )
        .is_err()
    {
        with_percpu_slot(&SR_COUNTERS, |c| c.record_failed += 1);
        return;
    }
    // SAFETY: a context field, valid for the program's run.
    let sent_before = unsafe { read_volatile(&raw const (*ctx.ops).data_segs_out) } != 0;
    // Data already sent through TCP (TCP Fast Open) must not be overtaken by redirects.
    let state = SockState {
        mode: if sent_before { MODE_TCP } else { MODE_REDIRECT },
        ..SockState::default()
    };
    let recorded = SR_STATES.insert(*key, state, u64::from(BPF_ANY)).is_ok()
        // SAFETY: the context of a sock_ops program, valid for its run.
        && SR_SOCKETS
            .update(&mut *key, unsafe { &mut *ctx.ops }, u64::from(BPF_ANY))
            .is_ok();
    if recorded {
        with_percpu_slot(&SR_COUNTERS, |c| c.established += 1);
    } else {
        // Without a sockhash entry the sk_msg program never runs for it; drop the state too.
        let _ = SR_STATES.remove(*key);
        with_percpu_slot(&SR_COUNTERS, |c| c.record_failed += 1);
    }
}

/// A switched socket ([`MODE_TCP`]) leaves the sockhash if it wins [`CLAIM_LEAVING`] on
/// itself, and stays for good if its peer's [`CLAIM_INCOMING`] came first. Either way the RTT
/// callback is no longer needed.
///
/// Runs under the socket's lock (as its sk_msg program does), so nothing else changes its
/// mode meanwhile.
#[inline(always)]
fn try_leave(ctx: &SockOpsContext, key: &SockKey) {
    let Some(state) = SR_STATES.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: this socket's map value, valid for the program's run; its mode is written only
    // under the socket's lock.
    let state = unsafe { &mut *state };
    if state.mode == MODE_REDIRECT {
        return;
    }
    if state.mode == MODE_TCP {
        if claim(key, CLAIM_LEAVING) == Some(CLAIM_LEAVING) && delete_socket(key) {
            state.mode = MODE_LEFT;
            // SAFETY: a context field, valid for the program's run.
            state.acked_at_leave = unsafe { read_volatile(&raw const (*ctx.ops).bytes_acked) };
            with_percpu_slot(&SR_COUNTERS, |c| c.left += 1);
        } else {
            state.mode = MODE_TCP_STAYS;
            with_percpu_slot(&SR_COUNTERS, |c| c.stayed += 1);
        }
    }
    let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
}

/// The claim on `key` in force after trying to make it `value`: inserts `value` if there is
/// none (the bucket lock lets exactly one insert win), else reads the one that won. The claim
/// of a live socket never changes, so the value read is final. `None`: the map is full.
#[inline(always)]
fn claim(key: &SockKey, value: u32) -> Option<u32> {
    if SR_CLAIMS.insert(key, value, u64::from(BPF_NOEXIST)).is_ok() {
        return Some(value);
    }
    // SAFETY: a map value, valid for the program's run; u32 is plain data.
    SR_CLAIMS.get_ptr(key).map(|c| unsafe { *c })
}

/// Deletes this socket from the sockhash (only sock_ops programs may): the kernel drops its
/// sk_msg state and gives it back plain TCP.
#[inline(always)]
fn delete_socket(key: &SockKey) -> bool {
    // SAFETY: the map is this program's sockhash (the symbol's address is what the loader
    // relocates to the map) and the key a valid SockKey.
    unsafe {
        bpf_map_delete_elem(
            (&raw const SR_SOCKETS).cast_mut().cast(),
            ptr::from_ref(key).cast(),
        ) == 0
    }
}

/// Removes a closing socket's gate state and claim; for a socket that left, counts the bytes
/// it sent through TCP since. Its sockhash entry (if it did not leave) stays until the
/// application closes the socket, when the kernel unlinks it (`sock_map_close`): deleting it
/// at `TCP_CLOSE` would drop the socket's queue of redirected bytes not yet read (a socket
/// enters `TCP_CLOSE` at TIME_WAIT or on a reset while its reader is still draining it).
#[inline(always)]
fn remove(ctx: &SockOpsContext, key: &SockKey) {
    let Some(state) = SR_STATES.get_ptr(key) else {
        return;
    };
    // SAFETY: this socket's map value, valid for the program's run.
    let state = unsafe { *state };
    if state.mode == MODE_LEFT {
        // SAFETY: a context field, valid for the program's run.
        let acked = unsafe { read_volatile(&raw const (*ctx.ops).bytes_acked) };
        with_percpu_slot(&SR_COUNTERS, |c| {
            c.left_bytes += acked.saturating_sub(state.acked_at_leave);
        });
    }
    let _ = SR_CLAIMS.remove(key);
    if SR_STATES.remove(key).is_ok() {
        with_percpu_slot(&SR_COUNTERS, |c| c.removed += 1);
    }
}

/// Redirects a message to the peer's receive queue, or passes it to TCP (see the gate).
#[sk_msg]
pub fn sock_redirect_msg(ctx: SkMsgContext) -> u32 {
    let size = ctx.size();
    let redirected = redirect(&ctx, size);
    with_percpu_slot(&SR_COUNTERS, |c| {
        if redirected {
            c.redirected_msgs += 1;
            c.redirected_bytes += u64::from(size);
        } else {
            c.passed_msgs += 1;
            c.passed_bytes += u64::from(size);
        }
    });
    sk_action::SK_PASS
}

/// Applies the gate and sets up the redirect; false leaves the message to TCP.
///
/// Only the socket's own sends and sock_ops callbacks (serialised by its socket lock) change
/// its mode. The peer's run counter is reset from the peer's sends on another CPU without a
/// lock: a lost update changes only when the gate trips, never the order of bytes.
#[inline(always)]
fn redirect(ctx: &SkMsgContext, size: u32) -> bool {
    let msg = ctx.msg;
    let fields = endpoints!(msg);
    // SAFETY: the helper reads the context it is given.
    let netns = unsafe { bpf_get_netns_cookie(msg.cast::<c_void>()) };
    let Some(key) = key_of(&fields, netns) else {
        return false;
    };
    let mut peer = key.peer();
    // This message answers whatever the peer sent: its run of small messages ends.
    if let Some(peer_state) = SR_STATES.get_ptr_mut(peer) {
        // SAFETY: a map value, valid for the program's run.
        unsafe { (*peer_state).small_run = 0 };
    }
    let Some(state) = SR_STATES.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: this socket's map value, valid for the program's run; written only here and in
    // sock_ops, under this socket's lock.
    let state = unsafe { &mut *state };
    if state.mode != MODE_REDIRECT {
        return false;
    }
    let min_size = port_config(&key).map_or(0, |c| c.min_size);
    if size < min_size {
        state.small_run += 1;
        if state.small_run > SMALL_RUN_LIMIT {
            state.mode = MODE_TCP;
            with_percpu_slot(&SR_COUNTERS, |c| c.gated += 1);
            return false;
        }
    } else {
        state.small_run = 0;
    }
    if state.peer_claimed == 0 {
        match claim_incoming(&peer) {
            Peer::Claimed => state.peer_claimed = 1,
            Peer::Leaving => {
                // It never redirects again, so this socket may leave too.
                no_peer(state, false);
                return false;
            }
            Peer::Missing => {
                no_peer(state, key.is_local());
                return false;
            }
        }
    }
    if SR_SOCKETS.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS))
        != i64::from(sk_action::SK_PASS)
    {
        no_peer(state, key.is_local());
        return false;
    }
    true
}

/// Switches a socket whose peer cannot be redirected into to TCP. With `stay` (a local
/// connection whose peer may just not be recorded yet) it stays in the sockhash, so that the
/// peer can still redirect into it; else it tries to leave at its next sock_ops callback.
#[inline(always)]
fn no_peer(state: &mut SockState, stay: bool) {
    state.mode = if stay { MODE_TCP_STAYS } else { MODE_TCP };
    with_percpu_slot(&SR_COUNTERS, |c| {
        c.no_peer += 1;
        if stay {
            c.stayed += 1;
        }
    });
}

/// What [`claim_incoming`] found.
enum Peer {
    /// The peer holds [`CLAIM_INCOMING`]: redirect into it.
    Claimed,
    /// The peer left the sockhash ([`CLAIM_LEAVING`]).
    Leaving,
    /// The peer is not recorded (not in scope, not established yet, or closed), or the map
    /// is full.
    Missing,
}

/// Claims [`CLAIM_INCOMING`] on `peer` before the first redirect into it. A peer that is not
/// recorded gets no claim: one made while it closed is deleted again, since its `TCP_CLOSE`
/// may have run before the insert.
#[inline(always)]
fn claim_incoming(peer: &SockKey) -> Peer {
    match claim(peer, CLAIM_INCOMING) {
        Some(CLAIM_INCOMING) if SR_STATES.get_ptr(peer).is_some() => Peer::Claimed,
        Some(CLAIM_INCOMING) => {
            let _ = SR_CLAIMS.remove(peer);
            Peer::Missing
        }
        Some(CLAIM_LEAVING) => Peer::Leaving,
        _ => Peer::Missing,
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
