//! Support for root-only tests that create kernel state.
//!
//! Everything made here is named with [`PREFIX`] plus the test process id and a counter, so two
//! test processes never collide and the leak check (`tools/leak-check`) can tell test leftovers
//! from anything else. Every object is removed on drop, which also runs when a test panics.
//!
//! Network namespaces are entered with `setns` on a dedicated thread, never with
//! `ip netns exec` (which remounts /sys and so hides bpffs and cgroupfs).

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use rustix::{
    mount::{UnmountFlags, mount_bind, unmount},
    thread::{LinkNameSpaceType, UnshareFlags, move_into_link_name_space, unshare_unsafe},
};

/// Prefix of every kernel object name a test makes (namespaces, links, cgroups, bpffs pins).
pub const PREFIX: &str = "dglt";

/// Where named network namespaces live, as for `ip netns`.
const NETNS_DIR: &str = "/run/netns";

/// A name unique to this process and call: `dglt<pid base36>x<counter>`, short enough (≤ 15
/// bytes) to be an interface name.
pub fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{PREFIX}{}x{}", base36(std::process::id()), base36(n));
    debug_assert!(name.len() <= 15, "{name} is too long for an interface name");
    name
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// A uniquely named network namespace, bind-mounted at `/run/netns/<name>` (so `ip netns`
/// lists it). Dropping it unmounts and removes the name; the kernel then destroys the
/// namespace together with every interface inside it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// Creates a fresh namespace with only a loopback device (left down).
    pub fn new() -> anyhow::Result<Self> {
        let name = unique_name();
        let path = Path::new(NETNS_DIR).join(&name);
        fs::create_dir_all(NETNS_DIR).with_context(|| format!("mkdir {NETNS_DIR}"))?;
        fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let ns = Self { name, path };
        let target = ns.path.clone();
        // unshare() moves only the calling thread: do it on a thread that ends right after
        // pinning the new namespace with a bind mount.
        thread::spawn(move || -> anyhow::Result<()> {
            // SAFETY: NEWNET only; the file descriptor table is not unshared.
            unsafe { unshare_unsafe(UnshareFlags::NEWNET) }.context("unshare(CLONE_NEWNET)")?;
            mount_bind("/proc/thread-self/ns/net", &target)
                .with_context(|| format!("bind-mount the new namespace on {}", target.display()))
        })
        .join()
        .map_err(|_| anyhow!("namespace creation thread panicked"))??;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread that has entered this namespace. Sockets and netlink
    /// handles made in `f`, and processes spawned from it, live in the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<T> {
                    let ns = fs::File::open(&self.path)
                        .with_context(|| format!("open {}", self.path.display()))?;
                    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                        .with_context(|| format!("setns into {}", self.name))?;
                    Ok(f())
                })
                .join()
                .map_err(|panic| anyhow!("thread in netns {} panicked: {panic:?}", self.name))?
        })
    }

    /// Runs an `ip` command (iproute2) inside the namespace; fails with its stderr.
    pub fn ip(&self, args: &str) -> anyhow::Result<()> {
        self.run(|| ip(args))?
    }

    /// The MAC address of `iface` in this namespace (from `ip -o link show`).
    pub fn mac(&self, iface: &str) -> anyhow::Result<[u8; 6]> {
        let out = self.run(|| {
            Command::new("ip")
                .args(["-o", "link", "show", iface])
                .output()
        })??;
        ensure!(out.status.success(), "ip link show {iface}: {}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let address = text
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .with_context(|| format!("{iface} has no Ethernet address: {text}"))?;
        let mut mac = [0u8; 6];
        let mut parts = address.split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .with_context(|| format!("short MAC {address}"))?;
            *byte = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC {address}"))?;
        }
        Ok(mac)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.path, UnmountFlags::DETACH) {
            eprintln!("testkit: unmount {}: {e}", self.path.display());
        }
        if let Err(e) = fs::remove_file(&self.path) {
            eprintln!("testkit: remove {}: {e}", self.path.display());
        }
    }
}

/// Two fresh namespaces, a client and a server, joined by a veth pair (`<server>s` in the
/// server, `<client>c` in the client): the two-host lab most tests stand on. Both ends and both
/// loopbacks are up. When no address is IPv6, IPv6 is turned off in both namespaces first (see
/// [`disable_ipv6_autoconf`]); IPv6 addresses are added without DAD, so they work at once.
#[derive(Debug)]
pub struct VethPair {
    /// The server's namespace.
    pub server: NetNs,
    /// The client's namespace.
    pub client: NetNs,
    /// The server's end of the link.
    pub server_if: String,
    /// The client's end of the link.
    pub client_if: String,
}

impl VethPair {
    /// Makes the pair with these addresses (`ADDR/LEN`) on the server's and the client's end,
    /// and the MTU `mtu` on both ends when given.
    pub fn new(
        server_addrs: &[&str],
        client_addrs: &[&str],
        mtu: Option<u32>,
    ) -> anyhow::Result<Self> {
        let server = NetNs::new()?;
        let client = NetNs::new()?;
        if !server_addrs
            .iter()
            .chain(client_addrs)
            .any(|a| a.contains(':'))
        {
            server.run(disable_ipv6_autoconf)??;
            client.run(disable_ipv6_autoconf)??;
        }
        let (server_if, client_if) = (format!("{}s", server.name()), format!("{}c", client.name()));
        let mtu = mtu.map(|m| format!(" mtu {m}")).unwrap_or_default();
        server.ip(&format!(
            "link add {server_if}{mtu} type veth peer name {client_if}{mtu} netns {}",
            client.name()
        ))?;
        for (ns, iface, addrs) in [
            (&server, &server_if, server_addrs),
            (&client, &client_if, client_addrs),
        ] {
            for addr in addrs {
                let nodad = if addr.contains(':') { " nodad" } else { "" };
                ns.ip(&format!("addr add {addr} dev {iface}{nodad}"))?;
            }
            ns.ip(&format!("link set {iface} up"))?;
            ns.ip("link set lo up")?;
        }
        Ok(Self {
            server,
            client,
            server_if,
            client_if,
        })
    }
}

/// A uniquely named prefix for bpffs pins: tests pass [`PinPrefix::name`] where a lab prefix
/// goes, and everything pinned under `/sys/fs/bpf/<name>` is removed on drop, also when the
/// test fails half way (unpinning detaches what the pins held).
#[derive(Debug)]
pub struct PinPrefix {
    name: String,
    path: PathBuf,
}

impl PinPrefix {
    /// A fresh prefix; nothing is created until the code under test pins something.
    pub fn new() -> Self {
        let name = unique_name();
        let path = Path::new("/sys/fs/bpf").join(&name);
        Self { name, path }
    }

    /// The prefix.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for PinPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinPrefix {
    fn drop(&mut self) {
        if self.path.exists()
            && let Err(e) = fs::remove_dir_all(&self.path)
        {
            eprintln!("testkit: remove {}: {e}", self.path.display());
        }
    }
}

/// Runs `ip ARGS` (iproute2) in the calling thread's network namespace. Test setup only:
/// product code talks netlink.
pub fn ip(args: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .context("running `ip` (iproute2; ./setup installs it)")?;
    ensure!(
        out.status.success(),
        "ip {args}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Sends `count` copies of the raw Ethernet `frame` out of `iface` through an AF_PACKET
/// socket made in the calling thread's network namespace.
pub fn send_frames(iface: &str, frame: &[u8], count: usize) -> anyhow::Result<()> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {iface} in this namespace");
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    ensure!(
        fd >= 0,
        "socket(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(frame.get(..6).context("frame shorter than 6 bytes")?);
    for _ in 0..count {
        // SAFETY: buffer and address are valid for the given lengths during the call.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(
            usize::try_from(sent).is_ok_and(|n| n == frame.len()),
            "sendto {iface}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Turns IPv6 off for interfaces created from now on in the calling thread's namespace, so
/// no router solicitations, DAD or MLD frames mix with a test's own traffic.
pub fn disable_ipv6_autoconf() -> anyhow::Result<()> {
    for knob in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
        fs::write(&path, "1").with_context(|| format!("write {path}"))?;
    }
    Ok(())
}

/// A uniquely named cgroup v2 directory under this process's own cgroup. On drop, the process
/// moves back to its original cgroup (if it entered) and the directory is removed.
#[derive(Debug)]
pub struct TempCgroup {
    parent: PathBuf,
    path: PathBuf,
}

impl TempCgroup {
    /// Creates the cgroup (the process stays where it is until [`TempCgroup::enter`]).
    pub fn new() -> anyhow::Result<Self> {
        let parent = own_cgroup2_dir()?;
        let path = parent.join(unique_name());
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { parent, path })
    }

    /// The cgroup's directory, to attach cgroup BPF programs to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the whole test process into the cgroup (sockets are charged to the cgroup of the
    /// process that creates them). Tests doing this must own their process, as under nextest.
    pub fn enter(&self) -> anyhow::Result<()> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, std::process::id().to_string())
            .with_context(|| format!("write {}", procs.display()))
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        let me = std::process::id().to_string();
        let members = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
        let back = self.parent.join("cgroup.procs");
        if members.lines().any(|pid| pid == me)
            && let Err(e) = fs::write(&back, &me)
        {
            eprintln!("testkit: write {}: {e}", back.display());
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("testkit: rmdir {}: {e}", self.path.display());
        }
    }
}

/// This process's cgroup directory in the cgroup v2 hierarchy (pure v2 or the `unified`
/// mount of a hybrid setup).
pub fn own_cgroup2_dir() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (fields, fs_part) = line.split_once(" - ")?;
            (fs_part.split(' ').next()? == "cgroup2").then(|| fields.split(' ').nth(4))?
        })
        .ok_or_else(|| anyhow!("no cgroup2 mount (./setup mounts one)"))?;
    let membership = fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
    let Some(own) = membership.lines().find_map(|l| l.strip_prefix("0::")) else {
        bail!("no cgroup v2 entry in /proc/self/cgroup");
    };
    Ok(Path::new(mount).join(own.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netns_listed(name: &str) -> bool {
        Path::new(NETNS_DIR).join(name).exists()
    }

    #[test]
    fn unique_names_fit_interface_names_and_differ() {
        let (a, b) = (unique_name(), unique_name());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() <= 15, "{a}");
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36 * 36 + 35), "10z");
    }

    #[test]
    fn netns_is_isolated_and_removed_on_drop() -> anyhow::Result<()> {
        let ns = NetNs::new()?;
        let name = ns.name().to_owned();
        assert!(netns_listed(&name));
        let host_inode = fs::metadata("/proc/thread-self/ns/net")?;
        let inner = ns.run(|| fs::metadata("/proc/thread-self/ns/net"))??;
        use std::os::unix::fs::MetadataExt as _;
        assert_ne!(
            host_inode.ino(),
            inner.ino(),
            "run() did not enter the namespace"
        );
        // A link made inside is not visible outside.
        let (link, peer) = (unique_name(), unique_name());
        ns.ip(&format!("link add {link} type veth peer name {peer}"))?;
        ns.ip(&format!("link show {link}"))?;
        assert!(ip(&format!("link show {link}")).is_err());
        drop(ns);
        assert!(!netns_listed(&name));
        Ok(())
    }

    #[test]
    fn netns_is_removed_when_the_test_body_panics() -> anyhow::Result<()> {
        let ns = NetNs::new()?;
        let name = ns.name().to_owned();
        let result = std::panic::catch_unwind(move || {
            let _ns = ns;
            panic!("test failure inside a namespace");
        });
        assert!(result.is_err());
        assert!(!netns_listed(&name));
        Ok(())
    }

    #[test]
    fn cgroup_is_entered_and_removed() -> anyhow::Result<()> {
        let cgroup = TempCgroup::new()?;
        let path = cgroup.path().to_owned();
        cgroup.enter()?;
        let membership = fs::read_to_string("/proc/self/cgroup")?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(membership.contains(name), "{membership}");
        drop(cgroup);
        assert!(!path.exists());
        assert!(!fs::read_to_string("/proc/self/cgroup")?.contains(name));
        Ok(())
    }
}
