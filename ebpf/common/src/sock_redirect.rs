//! The socket redirect's map layout and the gate rule both sides of it agree on.
//!
//! # Maps
//! - [`SOCKETS_MAP`]: sockhash [`SockKey`] → socket. The sock_ops program inserts every TCP
//!   socket of the attached cgroup that reaches ESTABLISHED (active or passive open) with a
//!   local or remote port in [`PORTS_MAP`]. The kernel unlinks a socket when the application
//!   closes it (or the kernel destroys it); removing it earlier, at `TCP_CLOSE`, would discard
//!   redirected bytes its reader has not read yet (TIME_WAIT and resets reach `TCP_CLOSE`
//!   while the socket is still open). The sock_ops program removes a socket earlier only when
//!   it leaves (see below), which is safe exactly when nothing was redirected into it.
//! - [`STATES_MAP`]: hash [`SockKey`] → [`SockState`], the per-socket gate decision; inserted
//!   with the [`SOCKETS_MAP`] entry, deleted by the sock_ops program at `TCP_CLOSE`.
//! - [`CLAIMS_MAP`]: hash [`SockKey`] → `u32` claim on a socket's receive side, made once and
//!   never changed while the socket lives: [`CLAIM_INCOMING`] (its peer may redirect into it)
//!   or [`CLAIM_LEAVING`] (it leaves the sockhash, nothing is ever redirected into it). Deleted
//!   with the gate state at `TCP_CLOSE`.
//! - [`PORTS_MAP`]: hash `u16` port (host order) → [`PortConfig`]: the ports in scope.
//! - [`COUNTERS_MAP`]: per-CPU array, one [`Counters`] slot.
//!
//! # Keys
//! A [`SockKey`] is the connection as seen from one socket: its network namespace cookie, local
//! and remote address as IPv6 (IPv4 as v4-mapped `::ffff:a.b.c.d`, so an IPv4 client and a
//! dual-stack IPv6 server socket produce matching keys) and ports in host order. The peer of a
//! socket on this host has the reversed key ([`SockKey::peer`]).
//!
//! # The gate
//! Each socket sends either through its peer's receive queue (redirect) or through TCP, and can
//! change only once, from redirect to TCP, never back. A socket starts redirecting; it switches
//! to TCP for good when
//! - its peer is not in [`SOCKETS_MAP`] when it sends (not on this host, not in scope, not
//!   recorded yet, closed, or left the sockhash),
//! - it had already sent data through TCP before it was recorded (TCP Fast Open), or
//! - it sends more than [`SMALL_RUN_LIMIT`] messages in a row smaller than its port's
//!   [`PortConfig::min_size`] without its peer sending anything in between: a stream of small
//!   writes, which the stack's segment coalescing serves better. Request/response traffic
//!   resets the run with every answer, so it keeps the redirect.
//!
//! Why this cannot reorder, lose or duplicate bytes: a redirected message is queued on the
//! peer's ingress queue before `sendmsg` returns, and the peer's `recvmsg` drains that queue
//! before it reads the TCP receive queue. Bytes sent through TCP after the switch therefore
//! reach the reader after every redirected byte. The opposite switch (TCP first, then redirect)
//! could overtake bytes still in flight and is never made. Each message goes one way as a whole.
//!
//! # Leaving the sockhash
//! A socket in the sockhash sends through the kernel's sk_msg path (`tcp_bpf_sendmsg`: the
//! message is copied into an `sk_msg`, the program runs, then its pages are pushed into TCP)
//! even when it sends through TCP. Once switched, a socket therefore leaves the sockhash if it
//! can, and gets plain `tcp_sendmsg` back ([`MODE_LEFT`]). Leaving drops the socket's sk_msg
//! state, including its queue of redirected bytes not yet read, so it is safe only if nothing
//! was ever redirected into the socket and nothing ever will be. The two ends decide that with
//! one claim per receiving socket in [`CLAIMS_MAP`], inserted with `BPF_NOEXIST`: the map's
//! bucket lock makes exactly one insert win, on any CPU.
//! - A sender claims [`CLAIM_INCOMING`] on its peer before its first redirect (and then
//!   checks that the peer is still recorded, deleting its claim if not, so that a claim on a
//!   socket that just closed does not outlive it). If the peer's claim is [`CLAIM_LEAVING`], it
//!   does not redirect and switches to TCP.
//! - A switched socket claims [`CLAIM_LEAVING`] on itself in its next sock_ops callback (an
//!   acknowledgement with an RTT sample, `BPF_SOCK_OPS_RTT_CB`); only sock_ops programs may
//!   delete from a sockhash. If that insert wins, no redirect into it ever was or will be
//!   decided, and it deletes itself from [`SOCKETS_MAP`]. If its peer's claim came first, it
//!   stays ([`MODE_TCP_STAYS`]).
//!
//! A socket switched because its peer was missing does not try to leave when the connection
//! is local ([`SockKey::is_local`]): the peer is then most likely just not recorded yet (a
//! client's first write can beat the server's `PASSIVE_ESTABLISHED` callback), and staying
//! keeps the peer's redirects into it possible ([`MODE_TCP_STAYS`] at once).
//!
//! A socket that left sends its bytes past the programs: they are counted once, at
//! `TCP_CLOSE`, from the socket's `bytes_acked` ([`Counters::left_bytes`]).

/// The sock_ops program.
pub const SOCK_OPS_PROGRAM: &str = "sock_redirect_ops";
/// The sk_msg program.
pub const SK_MSG_PROGRAM: &str = "sock_redirect_msg";

/// Name of the sockhash.
pub const SOCKETS_MAP: &str = "SR_SOCKETS";
/// Name of the per-socket gate state map.
pub const STATES_MAP: &str = "SR_STATES";
/// Name of the receive-side claims map.
pub const CLAIMS_MAP: &str = "SR_CLAIMS";
/// Name of the ports map.
pub const PORTS_MAP: &str = "SR_PORTS";
/// Name of the per-CPU counters.
pub const COUNTERS_MAP: &str = "SR_COUNTERS";

/// Most sockets recorded at once (each connection on this host takes two entries).
pub const MAX_SOCKETS: u32 = 65_536;
/// Most ports in scope.
pub const MAX_PORTS: u32 = 64;
/// Consecutive small messages, without an answer from the peer, after which a socket sends
/// through TCP.
pub const SMALL_RUN_LIMIT: u32 = 8;

/// [`SockState::mode`]: messages go to the peer's receive queue.
pub const MODE_REDIRECT: u32 = 0;
/// [`SockState::mode`]: messages go through TCP, for the rest of the socket's life; the socket
/// tries to leave the sockhash at its next sock_ops callback.
pub const MODE_TCP: u32 = 1;
/// [`SockState::mode`]: through TCP, and in the sockhash for good: its peer redirected into it.
pub const MODE_TCP_STAYS: u32 = 2;
/// [`SockState::mode`]: through TCP, out of the sockhash: plain `tcp_sendmsg`.
pub const MODE_LEFT: u32 = 3;

/// [`CLAIMS_MAP`] value: the socket's peer may redirect into it.
pub const CLAIM_INCOMING: u32 = 1;
/// [`CLAIMS_MAP`] value: the socket leaves the sockhash; nothing may be redirected into it.
pub const CLAIM_LEAVING: u32 = 2;

/// A connection as seen from one of its sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SockKey {
    /// The socket's network namespace cookie.
    pub netns: u64,
    /// Local address, IPv6 or v4-mapped, as the four 32-bit words of its bytes.
    pub local_ip: [u32; 4],
    /// Remote address, same form.
    pub remote_ip: [u32; 4],
    /// Local port, host order.
    pub local_port: u32,
    /// Remote port, host order.
    pub remote_port: u32,
}

impl SockKey {
    /// The key of the socket at the other end of this connection.
    pub const fn peer(&self) -> Self {
        Self {
            netns: self.netns,
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

impl SockKey {
    /// Whether the connection surely stays inside its network namespace: the remote address
    /// is a loopback address (`127.0.0.0/8`, `::1`) or the socket's own. Its peer is then on
    /// this host even when it is not recorded yet.
    pub fn is_local(&self) -> bool {
        let [a, b, c, d] = self.remote_ip;
        let loopback_v4 = self.remote_ip[..3] == v4_mapped(0)[..3] && d.to_ne_bytes()[0] == 127;
        let loopback_v6 = a == 0 && b == 0 && c == 0 && d == u32::from_ne_bytes([0, 0, 0, 1]);
        self.remote_ip == self.local_ip || loopback_v4 || loopback_v6
    }
}

/// An IPv4 address (its bytes as one word, as the kernel hands it over) as a v4-mapped IPv6
/// address in words.
pub const fn v4_mapped(ip4: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip4]
}

/// One socket's gate state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// [`MODE_REDIRECT`], [`MODE_TCP`], [`MODE_TCP_STAYS`] or [`MODE_LEFT`].
    pub mode: u32,
    /// Small messages sent in a row since the peer last sent.
    pub small_run: u32,
    /// 1 once this socket holds [`CLAIM_INCOMING`] on its peer (it may redirect into it).
    pub peer_claimed: u32,
    /// Zero: keeps the layout free of implicit padding.
    pub reserved: u32,
    /// The socket's `bytes_acked` when it left the sockhash.
    pub acked_at_leave: u64,
}

/// What one port in scope asks for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortConfig {
    /// Messages of fewer bytes are small (see the gate); 0 turns the gate off.
    pub min_size: u32,
}

/// Counters of one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sockets recorded at ESTABLISHED.
    pub established: u64,
    /// Sockets that could not be recorded (map full, or the kernel refused the socket).
    pub record_failed: u64,
    /// Gate states removed at `TCP_CLOSE`.
    pub removed: u64,
    /// Messages redirected to the peer.
    pub redirected_msgs: u64,
    /// Their bytes.
    pub redirected_bytes: u64,
    /// Messages passed to TCP.
    pub passed_msgs: u64,
    /// Their bytes.
    pub passed_bytes: u64,
    /// Sockets switched to TCP because their peer was missing when they sent.
    pub no_peer: u64,
    /// Sockets switched to TCP by the small-message gate.
    pub gated: u64,
    /// Switched sockets that left the sockhash (plain TCP from then on).
    pub left: u64,
    /// Switched sockets that stayed in it: their peer had redirected into them.
    pub stayed: u64,
    /// Bytes that sockets sent through TCP after leaving, counted when they close (TCP's
    /// `bytes_acked`, in which a FIN counts as one).
    pub left_bytes: u64,
}

// SAFETY: #[repr(C)] structs of u32/u64 fields whose sizes leave no padding (SockKey 48,
// SockState 24, PortConfig 4, Counters 96 bytes); every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockState {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortConfig {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Counters {}

const _: () = {
    assert!(size_of::<SockKey>() == 48);
    assert!(size_of::<SockState>() == 24);
    assert!(size_of::<PortConfig>() == 4);
    assert!(size_of::<Counters>() == 96);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_of_peer_is_self_and_v4_mapped_matches_ipv6_form() {
        let key = SockKey {
            netns: 7,
            local_ip: v4_mapped(u32::from_ne_bytes([127, 0, 0, 1])),
            remote_ip: v4_mapped(u32::from_ne_bytes([10, 0, 0, 2])),
            local_port: 8080,
            remote_port: 40000,
        };
        assert_eq!(key.peer().peer(), key);
        assert_eq!(key.peer().local_port, 40000);
        let mapped: [u8; 16] = "::ffff:127.0.0.1"
            .parse::<core::net::Ipv6Addr>()
            .map(|a| a.octets())
            .unwrap_or_default();
        let words = key.local_ip.map(u32::to_ne_bytes);
        assert_eq!(words.as_flattened(), mapped);
    }

    fn words(addr: &str) -> [u32; 4] {
        let octets = addr
            .parse::<core::net::IpAddr>()
            .map(|a| match a {
                core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                core::net::IpAddr::V6(v6) => v6.octets(),
            })
            .unwrap_or_default();
        core::array::from_fn(|i| {
            u32::from_ne_bytes([
                octets[4 * i],
                octets[4 * i + 1],
                octets[4 * i + 2],
                octets[4 * i + 3],
            ])
        })
    }

    #[test]
    fn loopback_and_own_address_connections_are_local() {
        let key = |local: &str, remote: &str| SockKey {
            local_ip: words(local),
            remote_ip: words(remote),
            ..SockKey::default()
        };
        assert!(key("127.0.0.1", "127.0.0.1").is_local());
        assert!(key("127.0.0.1", "127.3.2.1").is_local());
        assert!(key("::1", "::1").is_local());
        assert!(key("10.1.0.2", "10.1.0.2").is_local());
        assert!(key("fd00::2", "fd00::2").is_local());
        assert!(!key("10.1.0.2", "10.1.0.3").is_local());
        assert!(!key("fd00::2", "fd00::3").is_local());
        // ::127.x (v4-compatible, not v4-mapped) and ::2 are not loopback.
        assert!(!key("fd00::2", "::7f00:1").is_local());
        assert!(!key("fd00::2", "::2").is_local());
        assert_eq!(
            words("127.0.0.1")[3],
            v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))[3]
        );
    }
}
