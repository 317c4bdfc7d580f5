//! Values with units: durations, percentages, rates, and CIDR addresses.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Units accepted in durations, for help texts.
pub const DURATION_UNITS: &str = "ns, us (or µs), ms, s";
/// Units accepted in rates, for help texts (as in tc: `bps` means bytes per second).
pub const RATE_UNITS: &str = "bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps";

/// A duration in nanoseconds, written like `1ms`, `100us`, `1.5s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Nanos(pub u64);

/// A percentage between 0 and 100, written like `0.1%`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Percent(pub f64);

/// A rate in bits per second, written like `100mbit`, `1gbit`, `10kbps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rate(pub u64);

/// Splits `text` into a non-negative decimal number and its unit suffix.
fn split_number(text: &str) -> Option<(&str, &str)> {
    let end = text
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(text.len(), |(i, _)| i);
    let (number, unit) = text.split_at(end);
    let valid = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    valid.then_some((number, unit.trim()))
}

/// Multiplies the decimal `number` by `scale` exactly, rounding down; `None` on overflow.
fn scale_decimal(number: &str, scale: u64) -> Option<u64> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let mut value = int.parse::<u64>().ok()?.checked_mul(scale)?;
    let mut place = scale;
    for digit in frac.bytes() {
        place /= 10;
        value = value.checked_add(u64::from(digit - b'0') * place)?;
    }
    Some(value)
}

impl FromStr for Nanos {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (number, unit) =
            split_number(text.trim()).ok_or_else(|| format!("`{text}` is not a duration"))?;
        let scale = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "" => return Err(format!("`{text}` has no unit")),
            other => return Err(format!("`{other}` is not a unit of time")),
        };
        scale_decimal(number, scale)
            .map(Nanos)
            .ok_or_else(|| format!("`{text}` is too long"))
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, scale) in [("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)] {
            if n >= scale && n.is_multiple_of(scale) {
                return write!(f, "{}{unit}", n / scale);
            }
        }
        write!(f, "{n}ns")
    }
}

impl FromStr for Percent {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let number = trimmed
            .strip_suffix('%')
            .ok_or_else(|| format!("`{text}` has no `%` sign"))?;
        let (digits, rest) =
            split_number(number).ok_or_else(|| format!("`{text}` is not a percentage"))?;
        if !rest.is_empty() {
            return Err(format!("`{text}` is not a percentage"));
        }
        let value: f64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is not a percentage"))?;
        if value > 100.0 {
            return Err(format!("`{text}` is more than 100%"));
        }
        Ok(Percent(value))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (number, unit) =
            split_number(text.trim()).ok_or_else(|| format!("`{text}` is not a rate"))?;
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "bit" => 1,
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            "tbit" => 1_000_000_000_000,
            "bps" => 8,
            "kbps" => 8_000,
            "mbps" => 8_000_000,
            "gbps" => 8_000_000_000,
            "tbps" => 8_000_000_000_000,
            "" => return Err(format!("`{text}` has no unit")),
            _ => return Err(format!("`{unit}` is not a unit of rate")),
        };
        match scale_decimal(number, scale) {
            Some(0) => Err(format!("`{text}` is zero")),
            Some(bits) => Ok(Rate(bits)),
            None => Err(format!("`{text}` is too large")),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, scale) in [
            ("tbit", 1_000_000_000_000),
            ("gbit", 1_000_000_000),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
        ] {
            if n >= scale && n.is_multiple_of(scale) {
                return write!(f, "{}{unit}", n / scale);
            }
        }
        write!(f, "{n}bit")
    }
}

/// An IP address with a prefix length, like `10.0.0.1/24` or `fd00::1/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// The address (host bits may be set).
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// The network: host bits cleared.
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(self.prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(self.prefix)).into()),
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let m = mask32(self.prefix);
                u32::from(a) & m == u32::from(b) & m
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let m = mask128(self.prefix);
                u128::from(a) & m == u128::from(b) & m
            }
            _ => false,
        }
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = if self.prefix <= other.prefix {
            self
        } else {
            other
        };
        let longer = if std::ptr::eq(shorter, self) {
            other
        } else {
            self
        };
        shorter.contains(longer.addr)
    }

    /// Whether this is an IPv6 network.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` has no prefix length (like `/24`)"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max_prefix(addr))
            .ok_or_else(|| format!("`/{prefix}` is not a valid prefix length for `{addr}`"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("1ms".parse(), Ok(Nanos(1_000_000)));
        assert_eq!("100us".parse(), Ok(Nanos(100_000)));
        assert_eq!("100µs".parse(), Ok(Nanos(100_000)));
        assert_eq!("1.5s".parse(), Ok(Nanos(1_500_000_000)));
        assert_eq!("7ns".parse(), Ok(Nanos(7)));
        assert_eq!("0.0001ns".parse(), Ok(Nanos(0)));
        assert!("1".parse::<Nanos>().unwrap_err().contains("no unit"));
        assert!("1 parsec".parse::<Nanos>().unwrap_err().contains("parsec"));
        assert!("ms".parse::<Nanos>().is_err());
        assert!("-1ms".parse::<Nanos>().is_err());
        assert!("1..2ms".parse::<Nanos>().is_err());
        assert!(".5ms".parse::<Nanos>().is_err());
        assert!("99999999999999999999s".parse::<Nanos>().is_err());
        assert_eq!(Nanos(1_500_000).to_string(), "1500us");
        assert_eq!(Nanos(2_000_000_000).to_string(), "2s");
    }

    #[test]
    fn percentages() {
        assert_eq!("0.1%".parse(), Ok(Percent(0.1)));
        assert_eq!("100%".parse(), Ok(Percent(100.0)));
        assert_eq!("0%".parse(), Ok(Percent(0.0)));
        assert!("0.1".parse::<Percent>().unwrap_err().contains('%'));
        assert!("101%".parse::<Percent>().unwrap_err().contains("100%"));
        assert!("-1%".parse::<Percent>().is_err());
        assert!("1e3%".parse::<Percent>().is_err());
        assert!("%".parse::<Percent>().is_err());
    }

    #[test]
    fn rates() {
        assert_eq!("1gbit".parse(), Ok(Rate(1_000_000_000)));
        assert_eq!("100mbit".parse(), Ok(Rate(100_000_000)));
        assert_eq!("100Mbit".parse(), Ok(Rate(100_000_000)));
        assert_eq!("1.5kbit".parse(), Ok(Rate(1_500)));
        assert_eq!("10kbps".parse(), Ok(Rate(80_000)));
        assert!("1gb".parse::<Rate>().unwrap_err().contains("`gb`"));
        assert!("100".parse::<Rate>().unwrap_err().contains("no unit"));
        assert!("0mbit".parse::<Rate>().unwrap_err().contains("zero"));
        assert!("99999999999tbps".parse::<Rate>().is_err());
        assert_eq!(Rate(100_000_000).to_string(), "100mbit");
        assert_eq!(Rate(1_500).to_string(), "1500bit");
    }

    #[test]
    fn cidrs() {
        let net: Cidr = "10.0.1.7/24".parse().unwrap();
        assert_eq!(net.network().to_string(), "10.0.1.0/24");
        assert!(net.contains("10.0.1.200".parse().unwrap()));
        assert!(!net.contains("10.0.2.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let wide: Cidr = "10.0.0.0/16".parse().unwrap();
        assert!(wide.overlaps(&net) && net.overlaps(&wide));
        let other: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(!other.overlaps(&net));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.overlaps(&net));
        let v6: Cidr = "fd00::1/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00::/64");
        assert!(!v6.overlaps(&all));
        assert!("10.0.0.1".parse::<Cidr>().unwrap_err().contains("prefix"));
        assert!("10.0.0.1/33".parse::<Cidr>().is_err());
        assert!("10.0.0.256/24".parse::<Cidr>().is_err());
        assert!("fd00::1/129".parse::<Cidr>().is_err());
    }
}
