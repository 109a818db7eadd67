//! CPU seconds and memory of processes, read from `/proc`.
//!
//! CPU is `utime + stime` (fields 14 and 15 of `/proc/<pid>/stat`, see
//! proc(5)); children that were waited for are in
//! `cutime + cstime` (fields 16 and 17), which is how the CPU of many
//! short `lego` processes is counted. Memory is `VmRSS` (now) and `VmHWM`
//! (peak) from `/proc/<pid>/status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Clock ticks per second of the times in `/proc/<pid>/stat`: `USER_HZ`,
/// which Linux fixes at 100 for user space on every architecture we run.
pub const USER_HZ: f64 = 100.0;

/// Fields of `/proc/<pid>/stat` after the command name, 0 = field 3 (state).
fn stat_fields(pid: &str) -> std::io::Result<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| std::io::Error::other("unexpected /proc stat format"))?;
    Ok(rest
        .split_whitespace()
        .skip(1) // state
        .map(|f| f.parse::<i64>().map(|v| v.max(0) as u64).unwrap_or(0))
        .collect())
}

/// CPU seconds (user + system) a process has used so far.
///
/// # Errors
/// The process does not exist.
pub fn cpu_seconds(pid: u32) -> std::io::Result<f64> {
    let f = stat_fields(&pid.to_string())?;
    // Fields 14 and 15 are at 14 - 4 and 15 - 4 once state is skipped.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Ok(ticks as f64 / USER_HZ)
}

/// CPU seconds used by this process's children that have been waited for.
///
/// # Errors
/// `/proc/self/stat` unreadable.
pub fn children_cpu_seconds() -> std::io::Result<f64> {
    let f = stat_fields("self")?;
    let ticks = f.get(12).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0);
    Ok(ticks as f64 / USER_HZ)
}

/// CPU seconds this process has used.
///
/// # Errors
/// `/proc/self/stat` unreadable.
pub fn self_cpu_seconds() -> std::io::Result<f64> {
    cpu_seconds(std::process::id())
}

/// Resident memory now and at its peak, KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`.
    pub rss_kib: u64,
    /// `VmHWM`.
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM`.
///
/// # Errors
/// The process does not exist.
pub fn memory(pid: u32) -> std::io::Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    })
}

/// Busy and total jiffies of the whole machine (first line of `/proc/stat`).
///
/// # Errors
/// `/proc/stat` unreadable.
pub fn machine_jiffies() -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text
        .lines()
        .next()
        .ok_or_else(|| std::io::Error::other("empty /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total.saturating_sub(idle), total))
}

/// A pid read from a pid file, if the process is alive.
pub fn pid_from_file(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// CPU of a set of named processes and of the whole machine between two
/// points in time.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<(String, u32)>,
    start: BTreeMap<String, f64>,
    machine: (u64, u64),
}

impl CpuMeter {
    /// Starts measuring the processes named in `pid_files` (those that are
    /// not running are left out) plus `extra` pids.
    pub fn start(pid_files: &[(&str, PathBuf)], extra: &[(&str, u32)]) -> Self {
        let mut pids: Vec<(String, u32)> = pid_files
            .iter()
            .filter_map(|(name, f)| pid_from_file(f).map(|p| ((*name).to_string(), p)))
            .collect();
        pids.extend(extra.iter().map(|(n, p)| ((*n).to_string(), *p)));
        let start = pids
            .iter()
            .map(|(n, p)| (n.clone(), cpu_seconds(*p).unwrap_or(0.0)))
            .collect();
        Self {
            pids,
            start,
            machine: machine_jiffies().unwrap_or((0, 0)),
        }
    }

    /// CPU seconds each process used since [`CpuMeter::start`], plus
    /// `machine_busy` (all CPUs, everything on the machine, seconds).
    pub fn stop(&self) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> = self
            .pids
            .iter()
            .map(|(n, p)| {
                let now = cpu_seconds(*p).unwrap_or(0.0);
                (
                    n.clone(),
                    (now - self.start.get(n).copied().unwrap_or(0.0)).max(0.0),
                )
            })
            .collect();
        if let Ok((busy, _)) = machine_jiffies() {
            out.insert(
                "machine_busy".into(),
                busy.saturating_sub(self.machine.0) as f64 / USER_HZ,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid).expect("stat") >= 0.0);
        let m = memory(pid).expect("status");
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
        let (busy, total) = machine_jiffies().expect("/proc/stat");
        assert!(total >= busy);
    }
}
