//! Wire protocol between the lab host and the guest agent of a lab VM.
//!
//! The guest's `/init` ends by executing the agent, which opens the virtio-serial port named
//! [`PORT_NAME`] and speaks a framed byte protocol over it. QEMU connects that port to a Unix
//! socket on the host.
//!
//! # Frames
//!
//! Every message is one frame: a tag byte, the payload length as a little-endian `u32`, then
//! the payload. Payloads longer than [`MAX_PAYLOAD`] are rejected.
//!
//! | tag | direction    | payload |
//! |-----|--------------|---------|
//! | `H` | guest → host | hello: the agent's version (UTF-8); sent once when the agent is ready |
//! | `R` | host → guest | run: the argv, each argument followed by a NUL byte (at least one) |
//! | `O` | guest → host | the command's complete stdout |
//! | `E` | guest → host | the command's complete stderr |
//! | `X` | guest → host | exit: `i32` little-endian; 128 + signal when killed by a signal |
//! | `P` | host → guest | power off: empty; the agent syncs and powers the guest off |
//!
//! A run request is answered by exactly `O`, `E`, `X` in that order. When the command cannot
//! be started, `O` is empty, `E` holds the reason and `X` is 127.

use std::io::{self, Read, Write};

/// Name of the virtio-serial port the agent listens on (`-device virtserialport,name=...`).
pub const PORT_NAME: &str = "lab.agent";

/// Largest accepted frame payload (64 MiB).
pub const MAX_PAYLOAD: u32 = 64 << 20;

/// Exit code reported when a command could not be started.
pub const EXIT_NOT_STARTED: i32 = 127;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The agent is ready; carries its version.
    Hello(String),
    /// Run a command given by its argv.
    Run(Vec<String>),
    /// Standard output of the command that just ran.
    Stdout(Vec<u8>),
    /// Standard error of the command that just ran.
    Stderr(Vec<u8>),
    /// Exit status of the command that just ran.
    Exit(i32),
    /// Sync file systems and power the guest off.
    PowerOff,
}

impl Frame {
    fn tag(&self) -> u8 {
        match self {
            Frame::Hello(_) => b'H',
            Frame::Run(_) => b'R',
            Frame::Stdout(_) => b'O',
            Frame::Stderr(_) => b'E',
            Frame::Exit(_) => b'X',
            Frame::PowerOff => b'P',
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Frame::Hello(version) => version.as_bytes().to_vec(),
            Frame::Run(argv) => {
                let mut out = Vec::new();
                for arg in argv {
                    out.extend_from_slice(arg.as_bytes());
                    out.push(0);
                }
                out
            }
            Frame::Stdout(bytes) | Frame::Stderr(bytes) => bytes.clone(),
            Frame::Exit(code) => code.to_le_bytes().to_vec(),
            Frame::PowerOff => Vec::new(),
        }
    }

    /// Encodes the frame as bytes: tag, payload length, payload.
    ///
    /// # Errors
    /// Fails when the payload exceeds [`MAX_PAYLOAD`] or an argument contains a NUL byte.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        if let Frame::Run(argv) = self {
            if argv.is_empty() {
                return Err(ProtocolError::EmptyArgv);
            }
            if let Some(arg) = argv.iter().find(|a| a.contains('\0')) {
                return Err(ProtocolError::NulInArgument(arg.replace('\0', "\\0")));
            }
        }
        let payload = self.payload();
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|len| *len <= MAX_PAYLOAD)
            .ok_or(ProtocolError::TooLarge(payload.len()))?;
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(self.tag());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Writes the encoded frame to `w` and flushes it.
    ///
    /// # Errors
    /// Encoding errors and I/O errors of `w`.
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), ProtocolError> {
        w.write_all(&self.encode()?)?;
        w.flush()?;
        Ok(())
    }

    /// Reads one frame from `r`. Returns `Ok(None)` on a clean end of stream before a frame.
    ///
    /// # Errors
    /// I/O errors, a stream ending inside a frame, an unknown tag or a malformed payload.
    pub fn read_from(r: &mut impl Read) -> Result<Option<Frame>, ProtocolError> {
        let mut header = [0u8; 5];
        let mut filled = 0;
        while filled < header.len() {
            match r.read(&mut header[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(ProtocolError::Truncated),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
        if len > MAX_PAYLOAD {
            return Err(ProtocolError::TooLarge(len as usize));
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
            _ => e.into(),
        })?;
        Self::decode(header[0], payload).map(Some)
    }

    fn decode(tag: u8, payload: Vec<u8>) -> Result<Frame, ProtocolError> {
        let text = |payload: Vec<u8>| {
            String::from_utf8(payload).map_err(|_| ProtocolError::BadPayload(tag as char))
        };
        Ok(match tag {
            b'H' => Frame::Hello(text(payload)?),
            b'R' => {
                let Some(body) = payload.strip_suffix(&[0]) else {
                    return Err(ProtocolError::BadPayload('R'));
                };
                let argv = body
                    .split(|b| *b == 0)
                    .map(|arg| text(arg.to_vec()))
                    .collect::<Result<Vec<_>, _>>()?;
                Frame::Run(argv)
            }
            b'O' => Frame::Stdout(payload),
            b'E' => Frame::Stderr(payload),
            b'X' => {
                let bytes: [u8; 4] = payload
                    .try_into()
                    .map_err(|_| ProtocolError::BadPayload('X'))?;
                Frame::Exit(i32::from_le_bytes(bytes))
            }
            b'P' if payload.is_empty() => Frame::PowerOff,
            b'P' => return Err(ProtocolError::BadPayload('P')),
            other => return Err(ProtocolError::UnknownTag(other)),
        })
    }
}

/// A protocol violation or transport failure.
#[derive(Debug)]
pub enum ProtocolError {
    /// Reading or writing the port failed.
    Io(io::Error),
    /// The stream ended in the middle of a frame.
    Truncated,
    /// A frame's payload is larger than [`MAX_PAYLOAD`].
    TooLarge(usize),
    /// A frame started with a tag this protocol does not define.
    UnknownTag(u8),
    /// The payload of the frame with this tag is malformed.
    BadPayload(char),
    /// A run request without any argument.
    EmptyArgv,
    /// A command argument contains a NUL byte (shown with `\0`).
    NulInArgument(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::Io(e) => write!(f, "agent channel I/O: {e}"),
            ProtocolError::Truncated => {
                f.write_str("agent channel closed in the middle of a frame")
            }
            ProtocolError::TooLarge(len) => {
                write!(
                    f,
                    "frame payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit"
                )
            }
            ProtocolError::UnknownTag(tag) => write!(f, "unknown frame tag 0x{tag:02x}"),
            ProtocolError::BadPayload(tag) => write!(f, "malformed payload in a '{tag}' frame"),
            ProtocolError::EmptyArgv => f.write_str("a command needs at least one argument"),
            ProtocolError::NulInArgument(arg) => {
                write!(f, "command argument {arg:?} contains a NUL byte")
            }
        }
    }
}

impl std::error::Error for ProtocolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProtocolError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ProtocolError {
    fn from(e: io::Error) -> Self {
        ProtocolError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello("0.1.0".into()),
            Frame::Run(vec!["uname".into(), "-r".into(), String::new()]),
            Frame::Stdout(b"6.1.0\n".to_vec()),
            Frame::Stderr(Vec::new()),
            Frame::Exit(-3),
            Frame::PowerOff,
        ];
        let mut wire = Vec::new();
        for frame in &frames {
            frame.write_to(&mut wire).unwrap();
        }
        let mut reader = wire.as_slice();
        for frame in &frames {
            assert_eq!(Frame::read_from(&mut reader).unwrap().as_ref(), Some(frame));
        }
        assert!(Frame::read_from(&mut reader).unwrap().is_none());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases: [&[u8]; 5] = [
            b"Z\0\0\0\0",
            b"X\x02\0\0\0ab",
            b"R\x01\0\0\0a",
            b"O\x05\0\0\0ab",
            b"O\xff\xff\xff\xff",
        ];
        for case in cases {
            let mut reader = case;
            assert!(
                Frame::read_from(&mut reader).is_err(),
                "{case:?} was accepted"
            );
        }
        assert!(matches!(
            Frame::Run(Vec::new()).encode(),
            Err(ProtocolError::EmptyArgv)
        ));
        assert!(matches!(
            Frame::Run(vec!["a\0b".into()]).encode(),
            Err(ProtocolError::NulInArgument(_))
        ));
    }
}
