//! Readings from `/proc`: a process's CPU time and resident memory (with its
//! descendants, so a proxy that forks workers is measured whole), and per-core busy
//! time from `/proc/stat`.

use std::collections::HashMap;
use std::fs;

/// `(pid, ppid)` of every process, from `/proc/*/stat`.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(fields) = stat_fields(pid) {
            if let Some(ppid) = fields.get(1).and_then(|s| s.parse().ok()) {
                map.insert(pid, ppid);
            }
        }
    }
    map
}

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let parents = parents();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            parents
                .iter()
                .filter(|&(_, &pp)| pp == p)
                .map(|(&child, _)| child),
        );
        i += 1;
    }
    out
}

/// The fields of `/proc/PID/stat` after the command name: index 0 is the state
/// (field 3 in proc(5)), index 1 the ppid, 11 utime, 12 stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User + system CPU time of one process, in clock ticks.
fn own_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// User + system CPU time of the processes `pids` (a [`tree`]), in clock ticks;
/// `None` when the first one is gone.
pub fn cpu_ticks(pids: &[u32]) -> Option<u64> {
    let (&first, rest) = pids.split_first()?;
    let own = own_ticks(first)?;
    Some(own + rest.iter().copied().filter_map(own_ticks).sum::<u64>())
}

fn own_rss_kb(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size (VmRSS) of the processes `pids` (a [`tree`]), in KiB; `None`
/// when the first one is gone.
pub fn rss_kb(pids: &[u32]) -> Option<u64> {
    let (&first, rest) = pids.split_first()?;
    let own = own_rss_kb(first)?;
    Some(own + rest.iter().copied().filter_map(own_rss_kb).sum::<u64>())
}

/// Per core: (busy ticks, total ticks) since boot, from `/proc/stat`.
pub fn core_ticks() -> Vec<(u64, u64)> {
    let Ok(text) = fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            // idle + iowait
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Busy fraction of each core between two [`core_ticks`] readings.
pub fn core_busy(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1);
            if total == 0 {
                0.0
            } else {
                a.0.saturating_sub(b.0) as f64 / total as f64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = tree(std::process::id());
        assert_eq!(me.first(), Some(&std::process::id()));
        assert!(cpu_ticks(&me).is_some());
        assert!(rss_kb(&me).is_some_and(|kb| kb > 0));
        assert!(!core_ticks().is_empty());
    }
}
