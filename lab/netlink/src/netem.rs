//! netem qdiscs: the kernel's `struct tc_netem_qopt` and `TCA_NETEM_*` attributes, encoded by
//! hand (netlink-packet-route has no typed netem options), and the qdisc requests.

use std::time::Duration;

use rtnetlink::{
    packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_REPLACE, Nla as _},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcHandle, TcMessage, TcOption},
    },
};

use crate::{Error, Netlink, Result};

/// `TCA_OPTIONS` in `enum { TCA_UNSPEC, TCA_KIND, TCA_OPTIONS, ... }` (rtnetlink.h).
const TCA_OPTIONS: u16 = 2;
/// `sizeof(struct tc_netem_qopt)`: six `__u32` (pkt_sched.h).
const QOPT_LEN: usize = 24;
// enum TCA_NETEM_* (pkt_sched.h).
const TCA_NETEM_CORR: u16 = 1;
const TCA_NETEM_REORDER: u16 = 3;
const TCA_NETEM_CORRUPT: u16 = 4;
const TCA_NETEM_RATE: u16 = 6;
const TCA_NETEM_RATE64: u16 = 8;
const TCA_NETEM_LATENCY64: u16 = 10;
const TCA_NETEM_JITTER64: u16 = 11;
/// `PSCHED_SHIFT`: `tc_netem_qopt` holds times in 64 ns scheduler ticks.
const PSCHED_SHIFT: u32 = 6;
/// The qdisc kind.
const NETEM: &str = "netem";

/// A probability as the kernel stores it: `u32::MAX` is 100 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Probability(u32);

impl Probability {
    /// Never.
    pub const NEVER: Self = Self(0);
    /// Always.
    pub const ALWAYS: Self = Self(u32::MAX);

    /// From a percentage in `0.0..=100.0`, rounded like `tc` does.
    pub fn from_percent(percent: f64) -> Result<Self> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(Error::invalid(
                "percentage",
                percent,
                "not between 0 and 100",
            ));
        }
        // In range by the check above, so the cast neither saturates nor truncates.
        Ok(Self((percent / 100.0 * f64::from(u32::MAX)).round() as u32))
    }

    /// As a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / f64::from(u32::MAX) * 100.0
    }

    /// The kernel's scaled value.
    pub fn raw(self) -> u32 {
        self.0
    }
}

/// Link impairments of one netem qdisc (the root qdisc of one interface, so one direction).
/// Every field is sent on each change: a replaced qdisc keeps nothing from the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Netem {
    /// Added delay.
    pub delay: Duration,
    /// Random variation of the delay (uniform, ±).
    pub jitter: Duration,
    /// Random loss.
    pub loss: Probability,
    /// Random duplication.
    pub duplicate: Probability,
    /// Share of packets sent at once, ahead of delayed ones (needs a delay).
    pub reorder: Probability,
    /// Random single-bit corruption.
    pub corrupt: Probability,
    /// Rate limit in bytes per second (`None`: unlimited).
    pub rate: Option<u64>,
    /// Queue limit in packets (`tc`'s default is 1000).
    pub limit: u32,
}

impl Default for Netem {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Probability::NEVER,
            duplicate: Probability::NEVER,
            reorder: Probability::NEVER,
            corrupt: Probability::NEVER,
            rate: None,
            limit: 1000,
        }
    }
}

/// Nanoseconds of `d` as the kernel's `s64`.
fn nanos(what: &'static str, d: Duration) -> Result<i64> {
    i64::try_from(d.as_nanos()).map_err(|_| Error::invalid(what, format!("{d:?}"), "too long"))
}

/// Scheduler ticks (64 ns) of `ns`, saturated to `u32` as `tc` does.
fn ticks(ns: i64) -> u32 {
    u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    // Attribute payloads here are at most 16 bytes: the length fits.
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn words(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

impl Netem {
    /// The `TCA_OPTIONS` payload: `struct tc_netem_qopt`, then `TCA_NETEM_*` attributes.
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let delay = nanos("netem delay", self.delay)?;
        let jitter = nanos("netem jitter", self.jitter)?;
        if self.reorder != Probability::NEVER && delay == 0 {
            return Err(Error::invalid(
                "netem reorder",
                format!("{:.3}%", self.reorder.percent()),
                "reordering needs a delay",
            ));
        }
        // A gap of 1 applies the reorder probability to every packet (as tc sets it).
        let gap = u32::from(self.reorder != Probability::NEVER);
        let mut out = words(&[
            ticks(delay),
            self.limit,
            self.loss.raw(),
            gap,
            self.duplicate.raw(),
            ticks(jitter),
        ]);
        // Correlations, reorder, corrupt and rate are sent even when zero: on a change the
        // kernel keeps the previous value of any attribute left out.
        push_attr(&mut out, TCA_NETEM_CORR, &words(&[0, 0, 0]));
        push_attr(
            &mut out,
            TCA_NETEM_REORDER,
            &words(&[self.reorder.raw(), 0]),
        );
        push_attr(
            &mut out,
            TCA_NETEM_CORRUPT,
            &words(&[self.corrupt.raw(), 0]),
        );
        let rate = self.rate.unwrap_or(0);
        let rate32 = u32::try_from(rate).unwrap_or(u32::MAX);
        if u64::from(rate32) != rate {
            push_attr(&mut out, TCA_NETEM_RATE64, &rate.to_ne_bytes());
        }
        // struct tc_netem_rate { rate, packet_overhead, cell_size, cell_overhead }.
        push_attr(&mut out, TCA_NETEM_RATE, &words(&[rate32, 0, 0, 0]));
        push_attr(&mut out, TCA_NETEM_LATENCY64, &delay.to_ne_bytes());
        push_attr(&mut out, TCA_NETEM_JITTER64, &jitter.to_ne_bytes());
        Ok(out)
    }

    /// Reads a `TCA_OPTIONS` payload as the kernel dumps it.
    pub(crate) fn decode(options: &[u8]) -> std::result::Result<Self, String> {
        let word = |bytes: &[u8], i: usize| -> std::result::Result<u32, String> {
            bytes
                .get(4 * i..4 * i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
                .ok_or_else(|| format!("netem attribute of {} bytes is too short", bytes.len()))
        };
        let wide = |bytes: &[u8]| -> std::result::Result<u64, String> {
            bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .ok_or_else(|| format!("64-bit netem attribute of {} bytes", bytes.len()))
        };
        let qopt = options
            .get(..QOPT_LEN)
            .ok_or_else(|| format!("netem options of {} bytes", options.len()))?;
        let from_ticks = |t: u32| Duration::from_nanos(u64::from(t) << PSCHED_SHIFT);
        let mut netem = Self {
            delay: from_ticks(word(qopt, 0)?),
            limit: word(qopt, 1)?,
            loss: Probability(word(qopt, 2)?),
            duplicate: Probability(word(qopt, 4)?),
            jitter: from_ticks(word(qopt, 5)?),
            ..Self::default()
        };
        let (mut rate, mut rate64) = (0, None);
        let mut rest = &options[QOPT_LEN..];
        while rest.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
            let value = rest
                .get(4..len)
                .ok_or_else(|| format!("netem attribute {kind} of length {len} overruns"))?;
            match kind {
                TCA_NETEM_REORDER => netem.reorder = Probability(word(value, 0)?),
                TCA_NETEM_CORRUPT => netem.corrupt = Probability(word(value, 0)?),
                TCA_NETEM_RATE => rate = word(value, 0)?,
                TCA_NETEM_RATE64 => rate64 = Some(wide(value)?),
                TCA_NETEM_LATENCY64 => netem.delay = Duration::from_nanos(wide(value)?),
                TCA_NETEM_JITTER64 => netem.jitter = Duration::from_nanos(wide(value)?),
                _ => {}
            }
            rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        }
        netem.rate = Some(rate64.unwrap_or(u64::from(rate))).filter(|&r| r != 0);
        Ok(netem)
    }
}

impl Netlink {
    /// Makes `netem` the root qdisc of the link with index `link`, creating it or replacing
    /// whatever root qdisc is there (`tc qdisc replace dev LINK root netem ...`).
    /// [`Error::Unsupported`] if the kernel has no netem.
    pub async fn set_netem(&self, link: u32, netem: &Netem) -> Result<()> {
        let options = netem.encode()?;
        let mut message = root_qdisc(link)?;
        message.attributes.push(TcAttribute::Kind(NETEM.to_owned()));
        message
            .attributes
            .push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)));
        let action = || format!("set netem {netem:?} on link #{link}");
        let set = self
            .ack(
                RouteNetlinkMessage::NewQueueDiscipline(message),
                NLM_F_CREATE | NLM_F_REPLACE,
                action,
            )
            .await;
        // The kernel answers an unknown qdisc kind with ENOENT.
        match set {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) => {
                Err(Error::Unsupported {
                    action: action(),
                    netns: self.netns().to_owned(),
                    feature: "netem qdisc (CONFIG_NET_SCH_NETEM)",
                })
            }
            other => other,
        }
    }

    /// Deletes the root qdisc of the link with index `link`, restoring the default one.
    /// Fails with `ENOENT` if only the default is there.
    pub async fn delete_root_qdisc(&self, link: u32) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::DelQueueDiscipline(root_qdisc(link)?),
            0,
            || format!("delete the root qdisc of link #{link}"),
        )
        .await
    }

    /// The netem settings of the link's root qdisc, read back from the kernel; `None` when the
    /// root qdisc is not netem.
    pub async fn netem(&self, link: u32) -> Result<Option<Netem>> {
        let action = || format!("read the root qdisc of link #{link}");
        let index =
            i32::try_from(link).map_err(|_| Error::invalid("link index", link, "over i32"))?;
        let answers = self
            .dump(
                RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(index)),
                action,
            )
            .await?;
        for answer in answers {
            let RouteNetlinkMessage::NewQueueDiscipline(message) = answer else {
                continue;
            };
            if message.header.index != index || message.header.parent != TcHandle::ROOT {
                continue;
            }
            let is_netem = message
                .attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(kind) if kind == NETEM));
            if !is_netem {
                return Ok(None);
            }
            let options = message.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(options) => options.first(),
                _ => None,
            });
            let Some(TcOption::Other(options)) = options else {
                return Err(self.decode_error(action(), "netem qdisc without options".into()));
            };
            let mut bytes = vec![0; options.value_len()];
            options.emit_value(&mut bytes);
            return Netem::decode(&bytes)
                .map(Some)
                .map_err(|detail| self.decode_error(action(), detail));
        }
        Ok(None)
    }
}

/// A message addressing the root qdisc of `link` (handle chosen by the kernel).
fn root_qdisc(link: u32) -> Result<TcMessage> {
    let index = i32::try_from(link).map_err(|_| Error::invalid("link index", link, "over i32"))?;
    let mut message = TcMessage::with_index(index);
    message.header.parent = TcHandle::ROOT;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne(values: &[u32]) -> Vec<u8> {
        words(values)
    }

    #[test]
    fn probabilities_scale_like_tc() -> Result<()> {
        assert_eq!(Probability::from_percent(0.0)?, Probability::NEVER);
        assert_eq!(Probability::from_percent(100.0)?, Probability::ALWAYS);
        // tc: rint(0.01 * UINT32_MAX) = 42949673.
        assert_eq!(Probability::from_percent(1.0)?.raw(), 42_949_673);
        assert!((Probability::from_percent(12.5)?.percent() - 12.5).abs() < 1e-6);
        for bad in [-0.1, 100.01, f64::NAN, f64::INFINITY] {
            assert!(Probability::from_percent(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    /// The byte layout against `struct tc_netem_qopt`, `struct tc_netem_corr`,
    /// `struct tc_netem_reorder`, `struct tc_netem_corrupt`, `struct tc_netem_rate` and
    /// `enum TCA_NETEM_*` of linux/pkt_sched.h, written out field by field.
    #[test]
    fn options_have_the_kernel_layout() -> Result<()> {
        let netem = Netem {
            delay: Duration::from_millis(10),
            jitter: Duration::from_micros(640),
            loss: Probability::from_percent(1.0)?,
            duplicate: Probability(7),
            reorder: Probability(9),
            corrupt: Probability(11),
            rate: Some(125_000_000),
            limit: 1000,
        };
        let mut expected = Vec::new();
        // tc_netem_qopt: latency (ticks), limit, loss, gap, duplicate, jitter (ticks).
        expected.extend(ne(&[156_250, 1000, 42_949_673, 1, 7, 10_000]));
        // nlattr { nla_len: u16, nla_type: u16 } + payload, 4-byte aligned.
        expected.extend(ne(&[(4 + 12) | (1 << 16), 0, 0, 0])); // CORR
        expected.extend(ne(&[(4 + 8) | (3 << 16), 9, 0])); // REORDER
        expected.extend(ne(&[(4 + 8) | (4 << 16), 11, 0])); // CORRUPT
        expected.extend(ne(&[(4 + 16) | (6 << 16), 125_000_000, 0, 0, 0])); // RATE
        expected.extend(ne(&[(4 + 8) | (10 << 16)])); // LATENCY64 (s64 ns)
        expected.extend(10_000_000_i64.to_ne_bytes());
        expected.extend(ne(&[(4 + 8) | (11 << 16)])); // JITTER64 (s64 ns)
        expected.extend(640_000_i64.to_ne_bytes());
        let encoded = netem.encode()?;
        assert_eq!(encoded, expected);
        assert_eq!(Netem::decode(&encoded), Ok(netem));
        Ok(())
    }

    /// What iproute2 6.1 sends (captured with strace, x86-64) for `tc qdisc replace dev D
    /// root netem limit 1000 delay 10ms 640us loss 1% duplicate 7/2^32 reorder 9/2^32
    /// corrupt 11/2^32 rate 1gbit`: the same qopt, REORDER, CORRUPT and RATE as ours (tc
    /// leaves out CORR, LATENCY64 and JITTER64 when they add nothing).
    #[test]
    fn options_match_what_tc_sends() -> Result<()> {
        #[rustfmt::skip]
        let tc: &[u8] = &[
            0x5a, 0x62, 0x02, 0x00, 0xe8, 0x03, 0x00, 0x00, 0x29, 0x5c, 0x8f, 0x02,
            0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x10, 0x27, 0x00, 0x00,
            0x0c, 0x00, 0x03, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x0c, 0x00, 0x04, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x14, 0x00, 0x06, 0x00, 0x40, 0x59, 0x73, 0x07, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let netem = Netem {
            delay: Duration::from_millis(10),
            jitter: Duration::from_micros(640),
            loss: Probability::from_percent(1.0)?,
            duplicate: Probability(7),
            reorder: Probability(9),
            corrupt: Probability(11),
            rate: Some(125_000_000),
            limit: 1000,
        };
        let ours = netem.encode()?;
        assert_eq!(ours[..QOPT_LEN], tc[..QOPT_LEN]);
        let corr = QOPT_LEN + 16;
        assert_eq!(ours[corr..corr + 44], tc[QOPT_LEN..]);
        assert_eq!(Netem::decode(tc), Ok(netem));
        Ok(())
    }

    #[test]
    fn fast_rates_use_rate64_and_long_delays_saturate_ticks() -> Result<()> {
        let netem = Netem {
            delay: Duration::from_secs(300),
            rate: Some(10_000_000_000),
            ..Netem::default()
        };
        let encoded = netem.encode()?;
        // 300 s is 4.7e9 ticks: the u32 field saturates, LATENCY64 carries the value.
        assert_eq!(encoded[..4], u32::MAX.to_ne_bytes());
        let rate64 = [
            ne(&[(4 + 8) | (8 << 16)]),
            10_000_000_000_u64.to_ne_bytes().to_vec(),
        ]
        .concat();
        let rate = ne(&[(4 + 16) | (6 << 16), u32::MAX, 0, 0, 0]);
        let at = |needle: &[u8]| encoded.windows(needle.len()).position(|w| w == needle);
        assert!(at(&rate64).is_some_and(|i| at(&rate).is_some_and(|j| i < j)));
        assert_eq!(Netem::decode(&encoded), Ok(netem));
        Ok(())
    }

    #[test]
    fn bad_settings_and_bad_dumps_are_errors() {
        let reorder_without_delay = Netem {
            reorder: Probability::ALWAYS,
            ..Netem::default()
        };
        assert!(reorder_without_delay.encode().is_err());
        let too_long = Netem {
            delay: Duration::MAX,
            ..Netem::default()
        };
        assert!(too_long.encode().is_err());
        assert!(Netem::decode(&[0; 10]).is_err());
        let mut overrun = ne(&[0; 6]);
        overrun.extend(ne(&[(4 + 40) | (3 << 16), 1]));
        assert!(Netem::decode(&overrun).is_err());
        let mut short = ne(&[0; 6]);
        short.extend(ne(&[4 | (10 << 16)]));
        assert!(Netem::decode(&short).is_err());
    }
}
