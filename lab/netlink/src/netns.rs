//! Named network namespaces, bind-mounted under `/run/netns` as `ip netns` does.

use std::{
    fs,
    io::{self, ErrorKind},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    thread,
};

use rustix::{
    mount::{UnmountFlags, mount_bind, unmount},
    thread::{LinkNameSpaceType, UnshareFlags, move_into_link_name_space, unshare_unsafe},
};

use crate::{
    Error, Netlink, Result,
    error::{NETNS_NAME_MAX, check_name},
};

/// Where named network namespaces live (as for `ip netns`).
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace: `/run/netns/NAME`, a bind mount of the namespace's nsfs file.
///
/// This is only a name: dropping it changes nothing in the kernel; [`Netns::delete`] removes
/// the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a new, empty namespace (loopback down) named `name`; fails with `EEXIST` when
    /// the name is taken.
    pub fn create(name: &str) -> Result<Self> {
        let ns = Self::named(name)?;
        fs::create_dir_all(NETNS_DIR).map_err(|e| Error::os(format!("mkdir {NETNS_DIR}"), e))?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&ns.path)
            .map_err(|e| Error::os(format!("create netns {name}"), e))?;
        let target = ns.path.clone();
        // unshare() moves only the calling thread: do it on a thread that ends right after the
        // bind mount pins the new namespace.
        let made = thread::spawn(move || -> io::Result<()> {
            // SAFETY: only CLONE_NEWNET; no file descriptor table or filesystem is unshared.
            unsafe { unshare_unsafe(UnshareFlags::NEWNET) }?;
            mount_bind("/proc/thread-self/ns/net", &target)?;
            Ok(())
        })
        .join();
        let failure = match made {
            Ok(Ok(())) => return Ok(ns),
            Ok(Err(e)) => Error::os(format!("create netns {name}"), e),
            Err(_) => Error::ThreadPanicked { netns: ns.name },
        };
        // Best effort: the file is empty and unmounted, so removing it is all there is to undo.
        let _ = fs::remove_file(&ns.path);
        Err(failure)
    }

    /// Names the network namespace of process `pid` (e.g. a container's init) `name`: binds
    /// `/proc/PID/ns/net` to `/run/netns/NAME`, which keeps the namespace alive as long as the
    /// name exists. Fails with `EEXIST` when the name is taken.
    pub fn adopt(name: &str, pid: u32) -> Result<Self> {
        let ns = Self::named(name)?;
        fs::create_dir_all(NETNS_DIR).map_err(|e| Error::os(format!("mkdir {NETNS_DIR}"), e))?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&ns.path)
            .map_err(|e| Error::os(format!("create netns {name}"), e))?;
        match mount_bind(format!("/proc/{pid}/ns/net").as_str(), &ns.path) {
            Ok(()) => Ok(ns),
            Err(e) => {
                // Best effort, as in `create`: the file is empty and unmounted.
                let _ = fs::remove_file(&ns.path);
                Err(Error::os(
                    format!("name the network namespace of pid {pid} {name}"),
                    e.into(),
                ))
            }
        }
    }

    /// Refers to an existing namespace, failing if `/run/netns/NAME` does not exist.
    pub fn open(name: &str) -> Result<Self> {
        let ns = Self::named(name)?;
        fs::metadata(&ns.path).map_err(|e| Error::os(format!("open netns {name}"), e))?;
        Ok(ns)
    }

    /// The names of all namespaces under `/run/netns`, sorted (empty if the folder is absent).
    pub fn list() -> Result<Vec<String>> {
        let entries = match fs::read_dir(NETNS_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::os(format!("list {NETNS_DIR}"), e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::os(format!("list {NETNS_DIR}"), e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn named(name: &str) -> Result<Self> {
        check_name("netns name", name, NETNS_NAME_MAX)?;
        Ok(Self {
            name: name.to_owned(),
            path: Path::new(NETNS_DIR).join(name),
        })
    }

    /// The namespace's name, as `ip netns` lists it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, `/run/netns/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the name (unmount, unlink). The kernel destroys the namespace, and with it
    /// every device inside (veth peers elsewhere included), once nothing else holds it: open
    /// [`Netlink`] connections into it and processes inside keep it alive.
    /// A name whose mount is already gone (a half-made namespace) is still removed.
    pub fn delete(self) -> Result<()> {
        match unmount(&self.path, UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => {
                return Err(Error::os(format!("unmount netns {}", self.name), e.into()));
            }
        }
        fs::remove_file(&self.path).map_err(|e| Error::os(format!("delete netns {}", self.name), e))
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets opened, sysctls under `/proc/sys/net` written and processes spawned in `f` belong
    /// to the namespace. (`/proc/net` and `/proc/self/net` follow the main thread instead; use
    /// `/proc/thread-self/net`.)
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = fs::File::open(&self.path)
            .map_err(|e| Error::os(format!("open netns {}", self.name), e))?;
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                        .map_err(|e| Error::os(format!("enter netns {}", self.name), e.into()))?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(Error::ThreadPanicked {
                        netns: self.name.clone(),
                    })
                })
        })
    }

    /// Opens a netlink connection bound to this namespace (see [`Netlink`]). Must be called
    /// inside a Tokio runtime, which then drives the connection.
    pub fn connect(&self) -> Result<Netlink> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            action: format!("connect to netns {}", self.name),
        })?;
        self.run(|| Netlink::open_here(&runtime, &self.name))?
    }

    /// Turns IPv4 and IPv6 forwarding on or off for the whole namespace (router nodes): writes
    /// `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding` from a thread inside it.
    pub fn set_forwarding(&self, on: bool) -> Result<()> {
        let value = if on { "1" } else { "0" };
        self.run(|| {
            for knob in [
                "/proc/sys/net/ipv4/ip_forward",
                "/proc/sys/net/ipv6/conf/all/forwarding",
            ] {
                fs::write(knob, value)
                    .map_err(|e| Error::os(format!("write {knob} in netns {}", self.name), e))?;
            }
            Ok(())
        })?
    }

    /// Reads back IPv4 and IPv6 forwarding (`net.ipv4.ip_forward`,
    /// `net.ipv6.conf.all.forwarding`) from inside the namespace.
    pub fn forwarding(&self) -> Result<(bool, bool)> {
        self.run(|| {
            let read = |knob: &str| -> Result<bool> {
                let text = fs::read_to_string(knob)
                    .map_err(|e| Error::os(format!("read {knob} in netns {}", self.name), e))?;
                Ok(text.trim() != "0")
            };
            Ok((
                read("/proc/sys/net/ipv4/ip_forward")?,
                read("/proc/sys/net/ipv6/conf/all/forwarding")?,
            ))
        })?
    }

    /// Opens the namespace's nsfs file, for `IFLA_NET_NS_FD`.
    pub(crate) fn open_fd(&self) -> Result<fs::File> {
        fs::File::open(&self.path).map_err(|e| Error::os(format!("open netns {}", self.name), e))
    }
}
