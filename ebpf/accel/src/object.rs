//! Helpers shared by the accelerator handles: finding programs and maps in a loaded object,
//! attaching XDP programs, and turning aya's errors into [`Error`]s that name the object,
//! program, map or path involved.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Map, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLinkId,
    },
};
use serde::Serialize;

use crate::{Error, Result};

/// How an XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic when the driver has no XDP support.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode, run by the stack after the driver.
    Generic,
}

/// Loads an accelerator's ELF object (creating its maps).
pub(crate) fn load(object: &'static str, bytes: &[u8]) -> Result<Ebpf> {
    Ebpf::load(bytes).map_err(load_error(object))
}

/// Loads `object` like [`load`] with its read-only global `name` set to `value`: the verifier
/// then treats `value` as a constant.
pub(crate) fn load_with_global<T: Pod>(
    object: &'static str,
    bytes: &[u8],
    name: &str,
    value: &T,
) -> Result<Ebpf> {
    EbpfLoader::new()
        .override_global(name, value, true)
        .load(bytes)
        .map_err(load_error(object))
}

fn load_error(object: &'static str) -> impl FnOnce(aya::EbpfError) -> Error {
    move |source| Error::Load {
        object,
        source: Box::new(source),
    }
}

/// Attaches `program` (named `name`) to `iface` in the calling thread's network namespace.
pub(crate) fn attach_xdp(
    xdp: &mut Xdp,
    name: &'static str,
    iface: &str,
    mode: AttachMode,
) -> Result<(XdpMode, XdpLinkId)> {
    let try_mode = |xdp: &mut Xdp, m: XdpMode| {
        xdp.attach(iface, m)
            .map(|id| (m, id))
            .map_err(program_error(
                &format!("attach to {iface} ({m:?} mode)"),
                name,
            ))
    };
    if ifindex(iface).is_none() {
        return Err(Error::NoInterface(iface.to_owned()));
    }
    match mode {
        AttachMode::Native => try_mode(xdp, XdpMode::Driver),
        AttachMode::Generic => try_mode(xdp, XdpMode::Skb),
        // Report the native-mode error when generic mode fails too: it is the informative one.
        AttachMode::Auto => try_mode(xdp, XdpMode::Driver)
            .or_else(|native| try_mode(xdp, XdpMode::Skb).map_err(|_| native)),
    }
}

/// The index of `iface` in the calling thread's network namespace.
pub(crate) fn ifindex(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Pins `link` at `path`.
pub(crate) fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink> {
    link.pin(path).map_err(|e| pin_error(path)(e.into()))
}

/// `bpf(2)` commands used directly: aya 0.14 can neither open a pinned link as a raw fd nor
/// detach a link other than by closing it, and ties a program attached to a sockmap to a link
/// object whose drop detaches it.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_LINK_DETACH: libc::c_long = 34;
/// `ENOTSUPP`, the kernel-internal errno some link types answer BPF_LINK_DETACH with.
const ENOTSUPP: i32 = 524;

/// Detaches the link pinned at `path` right away (`BPF_LINK_DETACH`), leaving the pin. Removing
/// a pin alone releases the link only after an RCU grace period, so the program could still
/// run for a moment after `detach` returned. Link types that cannot detach are left to the
/// unpin.
pub(crate) fn detach_pinned_link(path: &Path) -> Result<()> {
    let fd = bpf_obj_get(path).map_err(Error::io(path))?;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: `attr` is a zeroed bpf_attr whose link_detach.link_fd is set; the kernel reads
    // at most `attr.len()` bytes of it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_ptr(), attr.len()) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EINVAL | ENOTSUPP)
        ) {
            return Err(Error::io(path)(e));
        }
    }
    Ok(())
}

/// Attaches `program` to `map` (`BPF_PROG_ATTACH`, `attach_type` such as
/// `BPF_SK_MSG_VERDICT`). The map holds the program from then on: the attachment ends when
/// the map is freed or its last user reference (fd or pin) goes away.
pub(crate) fn attach_to_map(
    program: BorrowedFd<'_>,
    map: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    // SAFETY: `attr` is a zeroed bpf_attr whose target_fd, attach_bpf_fd and attach_type are
    // set; the kernel reads at most `attr.len()` bytes of it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, attr.as_ptr(), attr.len()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the object pinned at `path` (`BPF_OBJ_GET`).
fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
    // SAFETY: `attr` is a zeroed bpf_attr whose obj_get.pathname points at `name`, alive
    // during the call; the kernel reads at most `attr.len()` bytes of it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The id of the program a pinned link attaches.
pub(crate) fn pinned_link_program(path: &Path) -> Result<u32> {
    let link: FdLink = PinnedLink::from_pin(path)
        .map_err(|e| pin_error(path)(e.into()))?
        .into();
    let info = link.info().map_err(|e| pin_error(path)(e.into()))?;
    Ok(info.program_id())
}

/// A map opened from its pin.
pub(crate) fn pinned_map(path: &Path) -> Result<MapData> {
    MapData::from_pin(path).map_err(map_error(&path.display().to_string()))
}

/// A per-CPU array opened from its pin.
pub(crate) fn pinned_array<V: Pod>(path: &Path) -> Result<PerCpuArray<MapData, V>> {
    PerCpuArray::try_from(Map::PerCpuArray(pinned_map(path)?))
        .map_err(map_error(&path.display().to_string()))
}

/// The program `name` of `object`, as type `P`.
pub(crate) fn program<'a, P>(
    ebpf: &'a mut Ebpf,
    object: &'static str,
    name: &'static str,
) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(Error::WrongType { object, name })?;
    program
        .try_into()
        .map_err(|_| Error::WrongType { object, name })
}

/// The kernel's ids of the loaded programs `names` of `object`, in that order.
pub(crate) fn program_ids(
    ebpf: &Ebpf,
    object: &'static str,
    names: &[&'static str],
) -> Result<Vec<u32>> {
    names
        .iter()
        .map(|&name| {
            let program = ebpf
                .program(name)
                .ok_or(Error::WrongType { object, name })?;
            Ok(program.info().map_err(program_error("query", name))?.id())
        })
        .collect()
}

/// The map `name` of `object`.
pub(crate) fn map<'a>(ebpf: &'a Ebpf, object: &'static str, name: &'static str) -> Result<&'a Map> {
    ebpf.map(name).ok_or(Error::WrongType { object, name })
}

/// The map `name` of `object`, for writing.
pub(crate) fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    object: &'static str,
    name: &'static str,
) -> Result<&'a mut Map> {
    ebpf.map_mut(name).ok_or(Error::WrongType { object, name })
}

/// Takes ownership of the map `name` of `object`.
pub(crate) fn take_map(ebpf: &mut Ebpf, object: &'static str, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(Error::WrongType { object, name })
}

pub(crate) fn program_error(
    action: &str,
    program: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    let action = action.to_owned();
    move |source| Error::Program {
        action,
        program,
        source: Box::new(source),
    }
}

pub(crate) fn map_error(name: &str) -> impl FnOnce(aya::maps::MapError) -> Error {
    let map = name.to_owned();
    move |source| Error::Map {
        map,
        source: Box::new(source),
    }
}

pub(crate) fn pin_error(
    path: &Path,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Error {
    let path = path.to_owned();
    move |source| Error::Pin { path, source }
}
