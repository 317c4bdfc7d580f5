//! VM nodes: a QEMU virtual machine booting a kernel of the matrix (`vm-images/kernels.toml`).
//!
//! A VM node has a network namespace like any node; QEMU runs inside it. Each of the node's
//! lab interfaces is a veth end in that namespace (named as in the file), a bridge `vmbrK` and
//! a tap `vmtapK` (K counts the node's interfaces in link order), and a virtio-net card in the
//! guest on that tap. The guest agent renames the cards after the file (found by their MAC
//! addresses) and gives them the plan's addresses and routes. Impairments of the VM's end act
//! on the veth end in the namespace (the VM's egress).
//!
//! QEMU is long-lived: it runs in a session of its own with its run directory (agent socket,
//! console log, `qemu.pid`, initramfs) under the lab's state directory
//! (`<state dir>/<prefix>/<lab>.vm/<node>/`), so `lab down` finds it from the state file, and
//! from the namespace (every process in a lab namespace is killed) when the state is gone.

use std::{
    io,
    net::IpAddr,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Output},
    time::Duration,
};

use lab_vm::{Agent, Cache, InitramfsSpec, Matrix, Nic, Vm, VmConfig, initramfs};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::topology::{Cidr, Span, diag::Sink};

/// Kernel of a VM node whose file names none.
pub const DEFAULT_KERNEL: &str = "6.12";
/// Virtual CPUs of a VM node whose file names none.
pub const DEFAULT_CPUS: u32 = 1;
/// Memory (MiB) of a VM node whose file names none.
pub const DEFAULT_MEMORY_MIB: u32 = 512;

/// Longest wait for a guest to boot, and for one command in it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest a command run through [`VmNode`] may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(3600);

/// Modules every VM node loads: the agent's port, the network cards, the 9p share and what
/// labs inside a guest need (veth, bridge, netem, tbf, ingress).
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "veth",
    "bridge",
    "sch_netem",
    "sch_tbf",
    "sch_ingress",
];

/// Checks a VM node's fields (kernel from the matrix, CPUs, memory), reporting at `span`.
pub(crate) fn check(
    kernel: Option<&str>,
    cpus: Option<u32>,
    memory: Option<u32>,
    span: Span,
    sink: &mut Sink,
) {
    let kernel = kernel.unwrap_or(DEFAULT_KERNEL);
    match Matrix::builtin() {
        Ok(matrix) if matrix.kernels.iter().any(|k| k.name == kernel) => {}
        Ok(matrix) => {
            let names: Vec<&str> = matrix.kernels.iter().map(|k| k.name.as_str()).collect();
            sink.error(
                "topology::unknown_kernel",
                span,
                format!("kernel `{kernel}` is not in vm-images/kernels.toml"),
            )
            .help(format!("kernels: {}", names.join(", ")));
        }
        Err(e) => {
            sink.error(
                "topology::kernel_matrix",
                span,
                format!("the kernel matrix cannot be read: {e}"),
            );
        }
    }
    if cpus.is_some_and(|c| !(1..=64).contains(&c)) {
        sink.error("topology::bad_cpus", span, "`cpus` must be 1 to 64");
    }
    if memory.is_some_and(|m| !(128..=65536).contains(&m)) {
        sink.error(
            "topology::bad_memory",
            span,
            "`memory` (MiB) must be 128 to 65536",
        );
    }
}

/// What boots a VM node and configures its guest: one step of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The node's namespace (QEMU runs there; its taps are there).
    pub ns: String,
    /// The node.
    pub node: String,
    /// Kernel name from `vm-images/kernels.toml`.
    pub kernel: String,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Network cards, in link order.
    pub nics: Vec<VmNic>,
    /// Static routes in the guest.
    pub routes: Vec<VmRoute>,
    /// IPv4 and IPv6 forwarding in the guest.
    pub forwarding: bool,
}

/// A guest network card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNic {
    /// Its tap device in the node's namespace.
    pub tap: String,
    /// The interface name in the file (and in the guest).
    pub iface: String,
    /// MAC address, `52:54:00:..` (derived from lab, node and interface names).
    pub mac: String,
    /// Addresses in the guest.
    pub addresses: Vec<Cidr>,
    /// MTU, if not the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// A static route in a guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRoute {
    /// Destination network.
    pub to: Cidr,
    /// Gateway.
    pub via: IpAddr,
}

/// The bridge joining a VM node's K-th interface to its tap.
pub fn bridge_name(k: usize) -> String {
    format!("vmbr{k}")
}

/// The tap of a VM node's K-th interface.
pub fn tap_name(k: usize) -> String {
    format!("vmtap{k}")
}

/// A locally administered MAC address for `iface` of `node` in `lab`, stable across runs.
pub fn mac_address(lab: &str, node: &str, iface: &str) -> String {
    let hash = format!("{lab}/{node}/{iface}")
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    let [_, a, b, c] = hash.to_be_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

impl VmSpec {
    /// The shell script (busybox `sh` in the guest) that renames the cards after the file and
    /// gives them their addresses, then adds routes and forwarding.
    pub fn guest_script(&self) -> String {
        let mut script = String::from(
            "set -e\n\
             for k in all default; do echo 0 > /proc/sys/net/ipv6/conf/$k/accept_dad; \
             echo 1 > /proc/sys/net/ipv6/conf/$k/keep_addr_on_down; done\n",
        );
        // Two passes, so that a card may take a name another card has at boot.
        for (k, nic) in self.nics.iter().enumerate() {
            script.push_str(&format!(
                "dev=$(grep -l '^{}$' /sys/class/net/*/address | cut -d/ -f5)\n\
                 [ -n \"$dev\" ] || {{ echo 'no card with MAC {}' >&2; exit 1; }}\n\
                 ip link set dev \"$dev\" name labnic{k}\n",
                nic.mac, nic.mac
            ));
        }
        for (k, nic) in self.nics.iter().enumerate() {
            let iface = &nic.iface;
            script.push_str(&format!("ip link set dev labnic{k} name {iface}\n"));
            if let Some(mtu) = nic.mtu {
                script.push_str(&format!("ip link set dev {iface} mtu {mtu}\n"));
            }
            script.push_str(&format!(
                "echo 0 > /proc/sys/net/ipv6/conf/{iface}/accept_dad\n\
                 ip link set dev {iface} up\n"
            ));
            for address in &nic.addresses {
                script.push_str(&format!("ip addr add {address} dev {iface}\n"));
            }
        }
        for route in &self.routes {
            let network = route.to.network();
            script.push_str(&format!(
                "ip route add {}/{} via {}\n",
                network.addr, network.prefix, route.via
            ));
        }
        if self.forwarding {
            script.push_str(
                "echo 1 > /proc/sys/net/ipv4/ip_forward\n\
                 echo 1 > /proc/sys/net/ipv6/conf/all/forwarding\n",
            );
        }
        script
    }

    /// Fetches the kernel (cached), builds the initramfs in `dir`, boots QEMU in the node's
    /// namespace, configures the guest and leaves QEMU running; returns its pid and the time
    /// from starting QEMU to the agent's hello. On failure QEMU is killed.
    pub fn start(&self, dir: &Path) -> Result<(u32, Duration), String> {
        let matrix = Matrix::builtin().map_err(|e| e.to_string())?;
        let pin = matrix.kernel(&self.kernel).map_err(|e| e.to_string())?;
        let cache = Cache::from_env().map_err(|e| e.to_string())?;
        let kernel = cache.fetch(pin).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let image = dir.join("initramfs.cpio");
        // This `lab` binary reaches the guest over 9p (its directory is the share), its
        // libraries through the image: workload servers run it there (see `install_lab`).
        let exe = std::env::current_exe()
            .map_err(|e| format!("finding this program's executable: {e}"))?;
        let spec = InitramfsSpec {
            modules: MODULES.iter().map(|m| (*m).to_owned()).collect(),
            extra_binaries: initramfs::shared_libraries(&exe).map_err(|e| e.to_string())?,
            ..InitramfsSpec::default()
        };
        initramfs::build(&kernel, &spec, &image).map_err(|e| e.to_string())?;
        let config = VmConfig {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            boot_timeout: BOOT_TIMEOUT,
            share: exe.parent().map(Path::to_owned),
            nics: self
                .nics
                .iter()
                .map(|n| Nic {
                    tap: n.tap.clone(),
                    mac: n.mac.clone(),
                    mtu: n.mtu,
                })
                .collect(),
            netns: Some(PathBuf::from(format!("/run/netns/{}", self.ns))),
            run_dir: Some(dir.to_owned()),
            ..VmConfig::new(&kernel.vmlinux, &image)
        };
        let mut vm = Vm::boot(&config).map_err(|e| e.to_string())?;
        let ready = vm.ready_after();
        let out = vm
            .run(&["sh", "-c", &self.guest_script()], BOOT_TIMEOUT)
            .map_err(|e| e.to_string())?;
        if out.exit_code != 0 {
            return Err(format!(
                "configuring the guest's interfaces failed (exit {}): {}",
                out.exit_code,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let pid = vm.detach().map_err(|e| e.to_string())?;
        Ok((pid, ready))
    }
}

/// Where [`install_lab`] puts the `lab` binary in a guest.
pub const GUEST_LAB: &str = "/tmp/lab";

/// Copies this `lab` binary from the guest's 9p share (the directory it was in when the VM
/// started, see [`VmSpec::start`]) to [`GUEST_LAB`] in the guest of `node`, where it starts
/// faster than over 9p; `lab run` does this before the first window for every VM node that
/// serves a workload.
///
/// # Errors
/// This program's executable cannot be named, or the copy fails in the guest.
pub fn install_lab(node: &VmNode) -> Result<(), String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("finding this program's executable: {e}"))?;
    let name = exe
        .file_name()
        .ok_or_else(|| format!("{} has no file name", exe.display()))?;
    let copy = format!(
        "cp '/host/{}' {GUEST_LAB}.part && mv {GUEST_LAB}.part {GUEST_LAB}",
        name.to_string_lossy().replace('\'', "'\\''")
    );
    let out = node
        .run("sh", &["-c".to_owned(), copy])
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "node {}: copying lab into the guest failed: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A node that is a QEMU VM: commands run in the guest through its agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmNode {
    name: String,
    netns: String,
    dir: PathBuf,
}

impl VmNode {
    /// The VM node `name`, whose QEMU runs in namespace `netns` with run directory `dir`.
    pub fn new(name: impl Into<String>, netns: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            netns: netns.into(),
            dir: dir.into(),
        }
    }
}

impl Node for VmNode {
    fn name(&self) -> &str {
        &self.name
    }

    fn netns(&self) -> &str {
        &self.netns
    }

    fn run(&self, program: &str, args: &[String]) -> io::Result<Output> {
        let mut argv = vec![program.to_owned()];
        argv.extend_from_slice(args);
        let out = Agent::connect(&self.dir)
            .and_then(|mut agent| agent.run(&argv, RUN_TIMEOUT))
            .map_err(|e| io::Error::other(format!("node {}: {e}", self.name)))?;
        // A wait status: the exit code in the second byte.
        let status = ExitStatus::from_raw((out.exit_code & 0xff) << 8);
        Ok(Output {
            status,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    fn exec(&self, program: &str, args: &[String]) -> io::Error {
        use std::io::Write as _;
        match self.run(program, args) {
            Ok(out) => {
                let _out = io::stdout().write_all(&out.stdout);
                let _err = io::stderr().write_all(&out.stderr);
                std::process::exit(out.status.code().unwrap_or(1))
            }
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_local_and_distinct() {
        let a = mac_address("lab", "server", "eth0");
        assert_eq!(a, mac_address("lab", "server", "eth0"));
        assert!(a.starts_with("52:54:00:") && a.len() == 17, "{a}");
        assert_ne!(a, mac_address("lab", "server", "eth1"));
        assert_ne!(a, mac_address("lab2", "server", "eth0"));
    }

    #[test]
    fn guest_script_renames_by_mac_then_addresses_and_routes() {
        let spec = VmSpec {
            ns: "dgl-t.server".into(),
            node: "server".into(),
            kernel: "6.12".into(),
            cpus: 1,
            memory_mib: 512,
            nics: vec![VmNic {
                tap: tap_name(0),
                iface: "eth0".into(),
                mac: "52:54:00:01:02:03".into(),
                addresses: vec!["10.1.0.2/24".parse().expect("cidr")],
                mtu: Some(1400),
            }],
            routes: vec![VmRoute {
                to: "10.2.0.0/24".parse().expect("cidr"),
                via: "10.1.0.1".parse().expect("ip"),
            }],
            forwarding: true,
        };
        let script = spec.guest_script();
        let order = [
            "grep -l '^52:54:00:01:02:03$'",
            "name labnic0",
            "ip link set dev labnic0 name eth0",
            "ip link set dev eth0 mtu 1400",
            "ip link set dev eth0 up",
            "ip addr add 10.1.0.2/24 dev eth0",
            "ip route add 10.2.0.0/24 via 10.1.0.1",
            "/proc/sys/net/ipv4/ip_forward",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|p| {
                script
                    .find(p)
                    .unwrap_or_else(|| panic!("{p} missing:\n{script}"))
            })
            .collect();
        assert!(positions.is_sorted(), "out of order:\n{script}");
    }
}
