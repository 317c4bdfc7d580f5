//! Per-CPU busy time from `/proc/stat`.

use std::io;

/// Cumulative busy and total time of each CPU, in clock ticks, as `/proc/stat` counts them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// `(busy, total)` per CPU, indexed by CPU number (CPUs missing from the file count 0).
    pub cpus: Vec<(u64, u64)>,
}

impl CpuTimes {
    /// Reads `/proc/stat` now.
    pub fn read() -> io::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat")?;
        Self::parse(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Parses `/proc/stat`: busy is user, nice, system, irq, softirq and steal; total adds
    /// idle and iowait (guest time is already in user).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut cpus = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(number) = words
                .next()
                .and_then(|w| w.strip_prefix("cpu"))
                .filter(|n| !n.is_empty())
            else {
                continue;
            };
            let cpu: usize = number
                .parse()
                .map_err(|_| format!("/proc/stat: bad CPU line `{line}`"))?;
            let fields: Vec<u64> = words
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| format!("/proc/stat: bad counter in `{line}`"))?;
            let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
                return Err(format!("/proc/stat: too few counters in `{line}`"));
            };
            let busy = user + nice + system + irq + softirq + steal;
            if cpus.len() <= cpu {
                cpus.resize(cpu + 1, (0, 0));
            }
            cpus[cpu] = (busy, busy + idle + iowait);
        }
        if cpus.is_empty() {
            return Err("/proc/stat: no CPU lines".to_owned());
        }
        Ok(Self { cpus })
    }
}

/// Each CPU's busy share (0 to 1) between two readings; 0 for a CPU that did not tick.
pub fn busy_shares(before: &CpuTimes, after: &CpuTimes) -> Vec<f64> {
    after
        .cpus
        .iter()
        .enumerate()
        .map(|(i, &(busy, total))| {
            let (b0, t0) = before.cpus.get(i).copied().unwrap_or((0, 0));
            let ticks = total.saturating_sub(t0);
            if ticks == 0 {
                0.0
            } else {
                busy.saturating_sub(b0) as f64 / ticks as f64
            }
        })
        .collect()
}

/// CPU-seconds spent busy, over all CPUs, between two readings.
pub fn cpu_seconds(before: &CpuTimes, after: &CpuTimes) -> f64 {
    let ticks: u64 = after
        .cpus
        .iter()
        .enumerate()
        .map(|(i, &(busy, _))| busy.saturating_sub(before.cpus.get(i).map_or(0, |c| c.0)))
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

/// CPU-seconds per gigabyte (10⁹ bytes) moved; `None` when nothing moved.
pub fn cpu_seconds_per_gb(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_seconds / (bytes as f64 / 1e9))
}

/// CPU time this whole process (every thread, user and system) has used so far. On kernels
/// without IRQ time accounting (`CONFIG_IRQ_TIME_ACCOUNTING`, off in this project's kernels)
/// that includes the softirq work (loopback and veth receive) done in its threads.
pub fn process_cpu_time() -> io::Result<std::time::Duration> {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`): its run time, including
/// the softirq work done while it ran (this kernel has no IRQ time accounting to split it off).
pub fn thread_cpu_time() -> io::Result<std::time::Duration> {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> io::Result<std::time::Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives across the call.
    if unsafe { libc::clock_gettime(clock, &raw mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::time::Duration::new(
        ts.tv_sec as u64,
        ts.tv_nsec as u32,
    ))
}

/// `USER_HZ`, the unit of `/proc/stat`.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_counts_only_the_calling_thread() {
        let before = thread_cpu_time().unwrap();
        let other = std::thread::spawn(|| {
            let start = thread_cpu_time().unwrap();
            let mut x = 1u64;
            while thread_cpu_time().unwrap() - start < std::time::Duration::from_millis(30) {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
            x
        });
        other.join().unwrap();
        let mine = thread_cpu_time().unwrap() - before;
        assert!(mine < std::time::Duration::from_millis(30), "{mine:?}");
    }

    #[test]
    fn process_cpu_time_counts_work_of_other_threads() {
        let before = process_cpu_time().unwrap();
        let worked = std::thread::spawn(|| {
            let start = std::time::Instant::now();
            let mut x = 1u64;
            while start.elapsed() < std::time::Duration::from_millis(50) {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
            x
        });
        worked.join().unwrap();
        let spent = process_cpu_time().unwrap() - before;
        // The thread ran for 50 ms of wall time, part of it on a CPU: some of it counts.
        assert!(spent > std::time::Duration::ZERO, "{spent:?}");
    }

    const BEFORE: &str = "cpu  10 0 10 100 0 0 0 0 0 0\n\
        cpu0 5 0 5 50 0 0 0 0 0 0\ncpu1 5 0 5 50 0 0 0 0 0 0\nintr 123\n";
    const AFTER: &str = "cpu  10 0 10 100 0 0 0 0 0 0\n\
        cpu0 65 10 5 60 0 5 5 0 0 0\ncpu1 5 0 5 150 0 0 0 0 0 0\n";

    #[test]
    fn shares_between_two_readings() {
        let before = CpuTimes::parse(BEFORE).unwrap();
        let after = CpuTimes::parse(AFTER).unwrap();
        assert_eq!(before.cpus, [(10, 60), (10, 60)]);
        // cpu0: 80 busy ticks of 90; cpu1: 0 of 100.
        let shares = busy_shares(&before, &after);
        assert!((shares[0] - 80.0 / 90.0).abs() < 1e-12);
        assert_eq!(shares[1], 0.0);
        let seconds = cpu_seconds(&before, &after);
        assert!((seconds - 80.0 / clock_ticks_per_second()).abs() < 1e-12);
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(CpuTimes::parse("intr 1\n").unwrap_err().contains("no CPU"));
        assert!(
            CpuTimes::parse("cpu0 1 2\n")
                .unwrap_err()
                .contains("too few")
        );
        assert!(
            CpuTimes::parse("cpu0 1 x 3 4 5 6 7 8\n")
                .unwrap_err()
                .contains("bad counter")
        );
        assert!(
            CpuTimes::parse("cpuX 1 2 3 4 5 6 7 8\n")
                .unwrap_err()
                .contains("bad CPU")
        );
    }

    #[test]
    fn reads_this_machine() {
        let times = CpuTimes::read().unwrap();
        assert!(!times.cpus.is_empty());
        assert!(times.cpus.iter().all(|(busy, total)| busy <= total));
    }

    #[test]
    fn cost_per_gigabyte() {
        assert_eq!(cpu_seconds_per_gb(2.0, 4_000_000_000), Some(0.5));
        assert_eq!(cpu_seconds_per_gb(2.0, 0), None);
    }
}
