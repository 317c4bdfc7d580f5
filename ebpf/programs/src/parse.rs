//! Header parsing shared by the XDP programs: bounds-checked reads at a frame offset, VLAN tags,
//! the IPv4 and IPv6 fixed headers, and the IPv6 extension header walk. Each program decides on
//! top of these what a malformed, fragmented or unwanted packet means for it.

use aya_ebpf::programs::XdpContext;

/// Length of an Ethernet header without tags.
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ outer) tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;
/// IPv6 hop-by-hop options header.
pub const IPV6_HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const IPV6_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPV6_FRAGMENT: u8 = 44;
/// IPv6 destination options header.
pub const IPV6_DSTOPTS: u8 = 60;
/// Length of the IPv6 fixed header.
pub const IPV6_HLEN: usize = 40;

/// Offsets are masked with this before packet access: it bounds them for the verifier and is
/// above any linear XDP buffer, so no real offset changes.
pub const OFFSET_MASK: usize = 0x3fff;

/// The address of `len` frame bytes at `off`, if they lie within the frame.
#[inline(always)]
pub fn at(ctx: &XdpContext, off: usize, len: usize) -> Option<usize> {
    let at = ctx.data() + (off & OFFSET_MASK);
    if at + len > ctx.data_end() {
        return None;
    }
    Some(at)
}

/// Reads a `T` at `off` bytes into the frame, if it lies within it.
#[inline(always)]
pub fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let at = at(ctx, off, size_of::<T>())?;
    // SAFETY: the bytes lie inside the frame, checked by `at`.
    Some(unsafe { (at as *const T).read_unaligned() })
}

/// Reads the byte at `off` (at least 1), as the second byte of a 2-byte load at `off - 1`.
/// LLVM turns the bounds check of a 1-byte load into `at >= data_end`, which the verifier does
/// not take as proof that one byte is readable.
#[inline(always)]
pub fn load_byte(ctx: &XdpContext, off: usize) -> Option<u8> {
    load::<[u8; 2]>(ctx, off.wrapping_sub(1)).map(|pair| pair[1])
}

/// Reads a big-endian `u16` at `off`.
#[inline(always)]
pub fn load_be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    load::<[u8; 2]>(ctx, off).map(u16::from_be_bytes)
}

/// Reads 8 bytes at `off` as a little-endian `u64`: the first byte in the lowest bits.
#[inline(always)]
pub fn load_le64(ctx: &XdpContext, off: usize) -> Option<u64> {
    load::<[u8; 8]>(ctx, off).map(u64::from_le_bytes)
}

/// The frame's EtherType after at most `max_tags` VLAN tags (802.1Q or 802.1ad), and the
/// offset of the header that follows. A frame with more tags returns a tag EtherType; `None`
/// when the frame ends inside the Ethernet header or a tag.
#[inline(always)]
pub fn ethernet(ctx: &XdpContext, max_tags: usize) -> Option<(u16, usize)> {
    let mut ethertype = load_be16(ctx, 12)?;
    let mut off = ETH_HLEN;
    for _ in 0..max_tags {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = load_be16(ctx, off + 2)?;
        off += 4;
    }
    Some((ethertype, off))
}

/// An IPv4 fixed header (20 bytes; options are not read).
#[derive(Clone, Copy, Debug)]
pub struct Ipv4(pub [u8; 20]);

impl Ipv4 {
    /// The fixed header at `off`, if the frame holds it.
    #[inline(always)]
    pub fn at(ctx: &XdpContext, off: usize) -> Option<Self> {
        load(ctx, off).map(Self)
    }

    /// Whether the version field is 4 and the header length at least 20 bytes.
    #[inline(always)]
    pub fn is_valid(&self) -> bool {
        self.0[0] >> 4 == 4 && self.header_len() >= 20
    }

    /// Header length in bytes (IHL × 4), options included.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.0[0] & 0x0f) * 4
    }

    /// The total length field: header and payload.
    #[inline(always)]
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.0[2], self.0[3]]))
    }

    /// A fragment other than the first (non-zero fragment offset).
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        u16::from_be_bytes([self.0[6], self.0[7]]) & 0x1fff != 0
    }

    /// Any fragment: more fragments follow, or a non-zero fragment offset.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be_bytes([self.0[6], self.0[7]]) & 0x3fff != 0
    }

    /// The protocol field.
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.0[9]
    }

    /// The source address as a big-endian word.
    #[inline(always)]
    pub fn src(&self) -> u32 {
        u32::from_be_bytes([self.0[12], self.0[13], self.0[14], self.0[15]])
    }

    /// The destination address as a big-endian word.
    #[inline(always)]
    pub fn dst(&self) -> u32 {
        u32::from_be_bytes([self.0[16], self.0[17], self.0[18], self.0[19]])
    }
}

/// An IPv6 fixed header.
#[derive(Clone, Copy, Debug)]
pub struct Ipv6(pub [u8; IPV6_HLEN]);

impl Ipv6 {
    /// The fixed header at `off`, if the frame holds it.
    #[inline(always)]
    pub fn at(ctx: &XdpContext, off: usize) -> Option<Self> {
        load(ctx, off).map(Self)
    }

    /// Whether the version field is 6.
    #[inline(always)]
    pub fn is_valid(&self) -> bool {
        self.0[0] >> 4 == 6
    }

    /// The payload length field (extension headers included).
    #[inline(always)]
    pub fn payload_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.0[4], self.0[5]]))
    }

    /// The next header field.
    #[inline(always)]
    pub fn next_header(&self) -> u8 {
        self.0[6]
    }

    /// The source address as four big-endian words.
    #[inline(always)]
    pub fn src(&self) -> [u32; 4] {
        self.words(8)
    }

    /// The destination address as four big-endian words.
    #[inline(always)]
    pub fn dst(&self) -> [u32; 4] {
        self.words(24)
    }

    #[inline(always)]
    fn words(&self, from: usize) -> [u32; 4] {
        let b = &self.0;
        let word = |i: usize| {
            let at = from + 4 * i;
            u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
        };
        [word(0), word(1), word(2), word(3)]
    }
}

/// Where a walk over IPv6 extension headers ended.
#[derive(Clone, Copy, Debug)]
pub enum Ipv6Next {
    /// At this upper-layer protocol (or an extension header beyond the walk's limit), whose
    /// header starts at this offset.
    Header(u8, usize),
    /// At a fragment header of a fragment other than the first.
    LaterFragment,
    /// At an extension header that does not fit in the packet.
    Malformed,
}

/// Skips at most `max` IPv6 extension headers (hop-by-hop, routing, destination options,
/// fragment) starting with `next` at `off`, in a packet ending at `end`.
#[inline(always)]
pub fn ipv6_extensions(
    ctx: &XdpContext,
    mut next: u8,
    mut off: usize,
    end: usize,
    max: usize,
) -> Ipv6Next {
    for _ in 0..max {
        let is_ext = matches!(
            next,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT
        );
        if !is_ext {
            break;
        }
        // Every extension header is at least 8 bytes long.
        if off + 8 > end {
            return Ipv6Next::Malformed;
        }
        let Some(ext) = load::<[u8; 4]>(ctx, off) else {
            return Ipv6Next::Malformed;
        };
        let len = if next == IPV6_FRAGMENT {
            if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                return Ipv6Next::LaterFragment;
            }
            8
        } else {
            (usize::from(ext[1]) + 1) * 8
        };
        next = ext[0];
        off += len;
        if off > end {
            return Ipv6Next::Malformed;
        }
    }
    Ipv6Next::Header(next, off)
}
