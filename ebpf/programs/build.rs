//! Link options of the eBPF objects: the HTTP filter reads the request line eight bytes at a
//! time at arbitrary packet offsets. Without `allows-misaligned-mem-access` (LLVM 22+), LLVM's
//! BPF backend splits every load it cannot prove aligned into single bytes — eight loads,
//! shifts and ors for one 64-bit word. The verifier accepts misaligned packet and map value
//! loads on architectures with efficient unaligned access (x86-64, arm64), where the JIT emits
//! plain loads.
fn main() {
    println!("cargo:rustc-link-arg-bin=http_filter=--cpu-features=+allows-misaligned-mem-access");
}
