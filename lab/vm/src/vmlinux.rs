//! Extracting the uncompressed ELF `vmlinux` from an x86 bzImage (`vmlinuz`), so QEMU can boot
//! it directly through its PVH entry point (much faster than decompressing under TCG).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Error, Result, io_err};

/// Compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// xz (Debian's choice); decompressed with `xz`.
    Xz,
    /// zstd; decompressed with `zstd`.
    Zstd,
    /// gzip; decompressed with `gzip`.
    Gzip,
}

impl Compression {
    fn tool(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

/// Locates the compressed kernel inside a bzImage using the boot protocol header
/// (`payload_offset`/`payload_length`, protocol 2.08+). The trailing 4-byte size the build
/// appends is cut off.
///
/// # Errors
/// Not a bzImage, too old a boot protocol, a payload outside the file, or unknown compression.
pub fn payload(image: &[u8]) -> Result<(Compression, &[u8])> {
    let bad = |what: &str| Err(Error::Kernel(format!("not a usable bzImage: {what}")));
    if image.len() < 0x250 || &image[0x202..0x206] != b"HdrS" {
        return bad("no HdrS boot header");
    }
    let u16_at = |o: usize| u16::from_le_bytes([image[o], image[o + 1]]);
    let u32_at = |o: usize| {
        u32::from_le_bytes([image[o], image[o + 1], image[o + 2], image[o + 3]]) as usize
    };
    let version = u16_at(0x206);
    if version < 0x208 {
        return bad(&format!(
            "boot protocol {version:#x} has no payload fields (need 0x208)"
        ));
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248);
    let len = u32_at(0x24c);
    let Some(payload) = image.get(start..start + len).filter(|p| p.len() > 4) else {
        return bad(&format!(
            "payload {start}+{len} lies outside the {}-byte file",
            image.len()
        ));
    };
    let payload = &payload[..payload.len() - 4];
    let compression = if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else {
        return bad(&format!(
            "unsupported payload compression (magic {:02x?})",
            &payload[..4]
        ));
    };
    Ok((compression, payload))
}

/// Decompresses `data` with the host tool for `compression` (`xz`, `zstd` or `gzip`).
///
/// # Errors
/// The tool is missing or fails.
pub fn decompress(compression: Compression, data: &[u8], what: &str) -> Result<Vec<u8>> {
    let tool = compression.tool();
    let mut child = Command::new(tool)
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {tool} to decompress {what}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Kernel(format!("{tool}: no stdin")))?;
    let output = std::thread::scope(|s| {
        let feeder = s.spawn(move || stdin.write_all(data));
        let output = child.wait_with_output();
        let fed = feeder
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("feeder thread panicked")));
        output.and_then(|o| fed.map(|()| o))
    })
    .map_err(io_err(format!("{tool} decompressing {what}")))?;
    if !output.status.success() {
        return Err(Error::Tool {
            command: format!("{tool} -d -c ({what})"),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(output.stdout)
}

/// Writes the ELF `vmlinux` contained in the bzImage `vmlinuz` to `out`.
///
/// # Errors
/// Unreadable input, a malformed image, a failing decompressor, or a result that is not ELF.
pub fn extract(vmlinuz: &Path, out: &Path) -> Result<()> {
    let image = std::fs::read(vmlinuz).map_err(io_err(format!("reading {}", vmlinuz.display())))?;
    let (compression, data) =
        payload(&image).map_err(|e| Error::Kernel(format!("{}: {e}", vmlinuz.display())))?;
    let elf = decompress(compression, data, &vmlinuz.display().to_string())?;
    if !elf.starts_with(b"\x7fELF") {
        return Err(Error::Kernel(format!(
            "{}: the decompressed payload is not an ELF file",
            vmlinuz.display()
        )));
    }
    std::fs::write(out, elf).map_err(io_err(format!("writing {}", out.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(version: u16, payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[0x1f1] = 4;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&[0u8; 16]);
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn finds_and_decompresses_the_payload() {
        let mut xz = Command::new("xz")
            .args(["-c", "--format=xz"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        xz.stdin
            .take()
            .unwrap()
            .write_all(b"\x7fELF-kernel")
            .unwrap();
        let mut compressed = xz.wait_with_output().unwrap().stdout;
        compressed.extend_from_slice(&[1, 2, 3, 4]);
        let img = image(0x20f, &compressed);
        let (c, data) = payload(&img).unwrap();
        assert_eq!(c, Compression::Xz);
        assert_eq!(decompress(c, data, "test").unwrap(), b"\x7fELF-kernel");
    }

    #[test]
    fn rejects_bad_images() {
        let e = payload(b"short").unwrap_err().to_string();
        assert!(e.contains("no HdrS"), "{e}");
        let e = payload(&image(0x206, b"\xfd7zXZ\0...."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("boot protocol 0x206"), "{e}");
        let e = payload(&image(0x20f, b"LZ4!....")).unwrap_err().to_string();
        assert!(e.contains("unsupported payload compression"), "{e}");
        let mut img = image(0x20f, b"\xfd7zXZ\0....");
        img.truncate(img.len() - 3);
        assert!(payload(&img).unwrap_err().to_string().contains("outside"));
        let e = decompress(Compression::Xz, b"garbage", "junk")
            .unwrap_err()
            .to_string();
        assert!(e.contains("xz -d -c (junk)"), "{e}");
    }
}
