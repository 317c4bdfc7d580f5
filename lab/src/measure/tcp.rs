//! TCP counters of a network namespace.

use std::io;

use serde::{Deserialize, Serialize};

/// TCP counters of one network namespace (cumulative since it was made).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpCounters {
    /// Segments retransmitted (`Tcp: RetransSegs` in `snmp`).
    pub retransmits: u64,
    /// Segments queued out of order (`TcpExt: TCPOFOQueue` in `netstat`): reordered or after
    /// a loss, at the receiver.
    pub out_of_order: u64,
    /// Reordering the senders detected (`TcpExt: TCPSACKReorder + TCPRenoReorder +
    /// TCPTSReorder`): segments that arrived after later ones although none was lost, which
    /// tells reordering from loss.
    pub reordering: u64,
}

/// The `TcpExt` counters a sender raises when it sees reordering.
const REORDER_COUNTERS: [&str; 3] = ["TCPSACKReorder", "TCPRenoReorder", "TCPTSReorder"];

impl TcpCounters {
    /// Reads the counters of the calling thread's network namespace (call it from a thread
    /// that has entered the namespace).
    pub fn read() -> io::Result<Self> {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat")?;
        Self::parse(&snmp, &netstat).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Parses `/proc/net/snmp` and `/proc/net/netstat`: pairs of lines, names then values.
    pub fn parse(snmp: &str, netstat: &str) -> Result<Self, String> {
        let retransmits = counter(snmp, "Tcp", "RetransSegs")?;
        let out_of_order = counter(netstat, "TcpExt", "TCPOFOQueue")?;
        let mut reordering = 0;
        for name in REORDER_COUNTERS {
            reordering += counter(netstat, "TcpExt", name)?;
        }
        Ok(Self {
            retransmits,
            out_of_order,
            reordering,
        })
    }

    /// The counts between `before` and `self`.
    pub fn since(&self, before: &TcpCounters) -> TcpCounters {
        TcpCounters {
            retransmits: self.retransmits.saturating_sub(before.retransmits),
            out_of_order: self.out_of_order.saturating_sub(before.out_of_order),
            reordering: self.reordering.saturating_sub(before.reordering),
        }
    }
}

/// Counter `name` of group `group` in a `Group: names…` / `Group: values…` file.
fn counter(text: &str, group: &str, name: &str) -> Result<u64, String> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Err(format!("no `{group}` counters"));
    };
    let index = names
        .split_whitespace()
        .position(|n| n == name)
        .ok_or_else(|| format!("no `{group}: {name}` counter"))?;
    values
        .split_whitespace()
        .nth(index)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("bad value of `{group}: {name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
        Tcp: RtoAlgorithm ActiveOpens RetransSegs InErrs\nTcp: 1 5 42 0\n";
    const NETSTAT: &str = "TcpExt: SyncookiesSent TCPSACKReorder TCPRenoReorder TCPTSReorder \
        TCPOFOQueue TCPOFODrop\nTcpExt: 0 2 0 1 17 1\nIpExt: InNoRoutes\nIpExt: 0\n";

    #[test]
    fn parses_and_subtracts() {
        let now = TcpCounters::parse(SNMP, NETSTAT).unwrap();
        assert_eq!(
            now,
            TcpCounters {
                retransmits: 42,
                out_of_order: 17,
                reordering: 3,
            }
        );
        let before = TcpCounters {
            retransmits: 40,
            out_of_order: 20,
            reordering: 1,
        };
        assert_eq!(
            now.since(&before),
            TcpCounters {
                retransmits: 2,
                out_of_order: 0,
                reordering: 2,
            }
        );
    }

    #[test]
    fn missing_counters_are_errors() {
        assert_eq!(
            TcpCounters::parse("Ip: a\nIp: 1\n", NETSTAT),
            Err("no `Tcp` counters".to_owned())
        );
        assert_eq!(
            TcpCounters::parse(SNMP, "TcpExt: A\nTcpExt: 1\n"),
            Err("no `TcpExt: TCPOFOQueue` counter".to_owned())
        );
        assert_eq!(
            TcpCounters::parse(SNMP, "TcpExt: TCPOFOQueue\nTcpExt: x\n"),
            Err("bad value of `TcpExt: TCPOFOQueue`".to_owned())
        );
        assert_eq!(
            TcpCounters::parse(SNMP, "TcpExt: TCPOFOQueue TCPSACKReorder\nTcpExt: 1 2\n"),
            Err("no `TcpExt: TCPRenoReorder` counter".to_owned())
        );
    }

    #[test]
    fn reads_this_namespace() {
        assert!(TcpCounters::read().is_ok());
    }
}
