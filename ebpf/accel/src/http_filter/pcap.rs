//! Classic pcap files (not pcapng) of Ethernet frames: read for `accel http-filter check`,
//! written by tests.

use std::{fs, path::Path};

use crate::{Error, Result};

/// Microsecond-resolution magic, as written on the capturing machine.
const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
/// Nanosecond-resolution magic.
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;
const FILE_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;
/// Larger records are refused as corrupt rather than allocated.
const MAX_RECORD_LEN: usize = 256 * 1024;

/// Reads every frame of the classic pcap file at `path`, in order. Frames cut by the
/// capture's snap length are returned as captured.
pub fn read(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = fs::read(path).map_err(Error::io(path))?;
    parse(&bytes).map_err(|message| Error::Capture {
        path: path.to_owned(),
        message,
    })
}

/// Parses a classic pcap file's bytes into its frames.
pub fn parse(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let header = bytes.get(..FILE_HEADER_LEN).ok_or_else(|| {
        format!(
            "{} bytes: too short for a pcap header ({FILE_HEADER_LEN} bytes)",
            bytes.len()
        )
    })?;
    let magic = [header[0], header[1], header[2], header[3]];
    let big_endian = match (u32::from_le_bytes(magic), u32::from_be_bytes(magic)) {
        (MAGIC_MICROS | MAGIC_NANOS, _) => false,
        (_, MAGIC_MICROS | MAGIC_NANOS) => true,
        _ => {
            return Err(format!(
                "magic {magic:02x?} is not a classic pcap file (pcapng is not supported: \
                 convert with `editcap -F pcap`)"
            ));
        }
    };
    let word = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    let linktype = word(header, 20) & 0x0fff_ffff;
    if linktype != LINKTYPE_ETHERNET {
        return Err(format!(
            "link type {linktype} is not Ethernet ({LINKTYPE_ETHERNET})"
        ));
    }

    let mut frames = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while at < bytes.len() {
        let record = frames.len();
        let header = bytes.get(at..at + RECORD_HEADER_LEN).ok_or_else(|| {
            format!("record {record} at byte {at}: header cut short (truncated file)")
        })?;
        let len = word(header, 8) as usize;
        if len > MAX_RECORD_LEN {
            return Err(format!(
                "record {record} at byte {at}: captured length {len} is implausible (corrupt file)"
            ));
        }
        let data_at = at + RECORD_HEADER_LEN;
        let data = bytes.get(data_at..data_at + len).ok_or_else(|| {
            format!("record {record} at byte {at}: {len} bytes of data cut short (truncated file)")
        })?;
        frames.push(data.to_vec());
        at = data_at + len;
    }
    Ok(frames)
}

/// Writes `frames` as a little-endian, microsecond classic pcap file of Ethernet frames.
pub fn write(path: &Path, frames: &[Vec<u8>]) -> Result<()> {
    fs::write(path, encode(frames)).map_err(Error::io(path))
}

fn encode(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [MAGIC_MICROS, 0x0004_0002, 0, 0, 65535, LINKTYPE_ETHERNET] {
        // The version (2.4) is two u16s: major first, which 0x0004_0002 gives in LE.
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (i, frame) in frames.iter().enumerate() {
        let len = frame.len() as u32;
        for word in [i as u32, 0, len, len] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(frame);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let frames = vec![vec![1u8; 60], vec![], vec![2u8; 1514]];
        let bytes = encode(&frames);
        assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2, "major version");
        assert_eq!(parse(&bytes).unwrap(), frames);
    }

    #[test]
    fn big_endian_files_are_read() {
        let mut bytes = Vec::new();
        for word in [MAGIC_NANOS, 0x0002_0004, 0, 0, 65535, 1, 0, 0, 3, 3] {
            bytes.extend_from_slice(&u32::to_be_bytes(word));
        }
        bytes.extend_from_slice(b"abc");
        assert_eq!(parse(&bytes).unwrap(), vec![b"abc".to_vec()]);
    }

    #[test]
    fn bad_files_are_reported_with_the_place() {
        let good = encode(&[vec![7u8; 10]]);
        assert!(parse(&good[..10]).unwrap_err().contains("too short"));
        assert!(
            parse(&good[..30])
                .unwrap_err()
                .contains("record 0 at byte 24: header")
        );
        assert!(
            parse(&good[..45])
                .unwrap_err()
                .contains("10 bytes of data cut short")
        );
        let mut pcapng = good.clone();
        pcapng[..4].copy_from_slice(&[0x0a, 0x0d, 0x0d, 0x0a]);
        assert!(parse(&pcapng).unwrap_err().contains("pcapng"));
        let mut raw_ip = good.clone();
        raw_ip[20] = 101;
        assert!(parse(&raw_ip).unwrap_err().contains("link type 101"));
        let mut huge = good;
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap_err().contains("implausible"));
    }
}
