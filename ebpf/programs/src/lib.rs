//! Helpers shared by the accelerators' eBPF programs. Each accelerator is one binary
//! (`src/<accelerator>.rs`) and so one ELF object, loaded on its own by `accel`.
#![no_std]

pub mod parse;

use aya_ebpf::maps::PerCpuArray;

/// Runs `update` on slot 0 of a per-CPU array. The bpf target has no atomic fetch_add, and
/// per-CPU slots need none: only this CPU writes them.
#[inline(always)]
pub fn with_percpu_slot<T>(map: &PerCpuArray<T>, update: impl FnOnce(&mut T)) {
    if let Some(slot) = map.get_ptr_mut(0) {
        // SAFETY: the pointer is this CPU's slot of the map, valid for the program's run,
        // and nothing else writes it concurrently (per-CPU, softirq context not re-entered).
        update(unsafe { &mut *slot });
    }
}

/// eBPF programs cannot unwind; the verifier rejects any path that would reach this loop.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
