//! Member offsets of kernel structures, read from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF programs are built without CO-RE relocations, so the monitor asks user space for
//! the few offsets it reads (`sk_buff.len`, `sk_buff.dev`, ...). aya parses BTF but keeps its
//! type lookup private; this reader walks the type section itself (format:
//! Documentation/bpf/btf.rst).

use std::{collections::HashMap, path::Path};

use crate::{Error, Result};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type entry: its kind, name, `size_or_type`, and where its trailing data starts.
#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    name_off: u32,
    size_or_type: u32,
    data: usize,
}

/// Kernel BTF, indexed for member lookups.
#[derive(Debug)]
pub struct KernelBtf {
    bytes: Vec<u8>,
    strings: usize,
    strings_end: usize,
    /// Index i holds type id i + 1.
    types: Vec<Type>,
    /// Struct and union type ids by name (the first complete one of each name).
    by_name: HashMap<String, u32>,
}

impl KernelBtf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self> {
        Self::read(Path::new(VMLINUX_BTF))
    }

    /// Reads BTF from `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        Self::parse(bytes).map_err(|problem| {
            Error::io(path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                problem,
            ))
        })
    }

    /// Parses raw BTF (native endianness, as the kernel publishes it).
    pub fn parse(bytes: Vec<u8>) -> Result<Self, String> {
        let u32_at = |off: usize| -> Result<u32, String> {
            bytes
                .get(off..off + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| format!("truncated at byte {off}"))
        };
        let magic = bytes
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or("empty file")?;
        if magic != MAGIC {
            return Err(format!("not BTF (magic {magic:#06x})"));
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = hdr_len + str_off;
        let strings_end = strings + str_len;
        if strings_end > bytes.len() || hdr_len + type_off + type_len > bytes.len() {
            return Err("sections extend past the end".into());
        }
        let mut types = Vec::new();
        let mut at = hdr_len + type_off;
        let end = at + type_len;
        while at < end {
            let name_off = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let size_or_type = u32_at(at + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let data = at + 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                0..=19 => 0,
                other => return Err(format!("unknown BTF kind {other} at byte {at}")),
            };
            types.push(Type {
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                name_off,
                size_or_type,
                data,
            });
            at = data + extra;
        }
        let mut btf = Self {
            bytes,
            strings,
            strings_end,
            types,
            by_name: HashMap::new(),
        };
        let mut by_name = HashMap::new();
        for (i, t) in btf.types.iter().enumerate() {
            if matches!(t.kind, KIND_STRUCT | KIND_UNION) && t.vlen > 0 {
                let name = btf.string(t.name_off);
                if !name.is_empty() {
                    by_name.entry(name.to_owned()).or_insert(i as u32 + 1);
                }
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let start = self.strings + off as usize;
        let tail = self.bytes.get(start..self.strings_end).unwrap_or_default();
        let len = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..len]).unwrap_or_default()
    }

    fn ty(&self, id: u32) -> Option<Type> {
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .copied()
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<(u32, Type)> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some((id, t)),
            }
        }
        None
    }

    fn u32_at(&self, off: usize) -> u32 {
        let b = &self.bytes[off..off + 4];
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The member `name` of the struct or union `id`, searching anonymous members too: its
    /// bit offset from the start of `id` and its type.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let (_, t) = self.resolve(id)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in 0..t.vlen {
            let at = t.data + 12 * m;
            let (m_name, m_type, m_offset) =
                (self.u32_at(at), self.u32_at(at + 4), self.u32_at(at + 8));
            let bits = if t.kind_flag {
                m_offset & 0x00ff_ffff
            } else {
                m_offset
            };
            let m_name = self.string(m_name);
            if m_name == name {
                return Some((bits, m_type));
            }
            if m_name.is_empty()
                && let Some((inner, ty)) = self.member(m_type, name)
            {
                return Some((bits + inner, ty));
            }
        }
        None
    }

    /// The byte offset of `path` (member names, each inside the one before) in the struct
    /// `root`; `None` when a name is missing or a member is not byte-aligned.
    pub fn offset(&self, root: &str, path: &[&str]) -> Option<u32> {
        let mut id = *self.by_name.get(root)?;
        let mut bits = 0;
        for name in path {
            let (offset, ty) = self.member(id, name)?;
            bits += offset;
            id = ty;
        }
        (bits % 8 == 0).then_some(bits / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_offsets_are_found_and_plausible() {
        let btf = KernelBtf::from_sys_fs().expect("the host kernel publishes BTF");
        let len = btf.offset("sk_buff", &["len"]).expect("sk_buff.len");
        let dev = btf
            .offset("sk_buff", &["dev"])
            .expect("sk_buff.dev (anonymous union)");
        assert_ne!(len, dev);
        assert!(len < 256 && dev < 256, "len {len}, dev {dev}");
        assert_eq!(dev % 8, 0, "a pointer is 8-byte aligned");
        assert!(btf.offset("net_device", &["ifindex"]).is_some());
        assert!(btf.offset("net", &["ns", "inum"]).is_some());
        assert_eq!(btf.offset("sk_buff", &["no_such_member"]), None);
        assert_eq!(btf.offset("no_such_struct", &["len"]), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(KernelBtf::parse(Vec::new()).is_err());
        assert!(KernelBtf::parse(vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut header = vec![0u8; 24];
        header[..2].copy_from_slice(&MAGIC.to_ne_bytes());
        header[4] = 24;
        header[12] = 200;
        assert!(
            KernelBtf::parse(header)
                .unwrap_err()
                .contains("past the end")
        );
    }
}
