//! CPU time, peak memory and open sockets of the processes of a run, read
//! from `/proc`.
//!
//! Owns reading what the kernel counts for one process: user and system
//! CPU seconds since it started, its peak resident memory and the sockets
//! it holds. A report
//! gives these per process so that a run's cost can be compared between
//! revisions even on a noisy machine, where CPU seconds per job move much
//! less than latencies do. Must never guess: a process that is gone or a
//! field that does not parse gives no figure, not zero.

use serde::Serialize;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which Linux fixes
/// at 100 per second for user space whatever the kernel's own tick.
const TICKS_PER_SECOND: f64 = 100.0;

/// What the kernel counted for one process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    /// User plus system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Peak resident memory (VmHWM), in MiB.
    pub peak_rss_mib: f64,
    /// User plus system CPU seconds of its children that it has reaped:
    /// for an agent, the tasks it ran. Left out of a report when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub reaped_children_cpu_seconds: f64,
    /// Sockets the process holds open when read (its connections and
    /// listeners): for an agent hosting many nodes, what they cost the
    /// host and the region in connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_sockets: Option<u64>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The usage of process `pid` (`"self"` for this one), if it is still there.
pub fn usage(pid: &str) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Usage {
        cpu_seconds: cpu_seconds(&stat)?,
        peak_rss_mib: peak_rss_kib(&status)? / 1024.0,
        reaped_children_cpu_seconds: children_cpu_seconds(&stat)?,
        open_sockets: open_sockets(pid),
    })
}

/// File descriptors of process `pid` that are sockets; `None` when its
/// descriptors cannot be listed.
fn open_sockets(pid: &str) -> Option<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count() as u64,
    )
}

/// utime + stime (fields 14 and 15) of a `stat` line, in seconds.
fn cpu_seconds(stat: &str) -> Option<f64> {
    seconds_of_fields(stat, 14, 15)
}

/// cutime + cstime (fields 16 and 17): the reaped children's.
fn children_cpu_seconds(stat: &str) -> Option<f64> {
    seconds_of_fields(stat, 16, 17)
}

/// The sum of two tick counts of a `stat` line (1-based field numbers, as
/// proc(5) gives them), in seconds. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from after its last `)`.
fn seconds_of_fields(stat: &str, a: usize, b: usize) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0.
    let x: f64 = fields.get(a - 3)?.parse().ok()?;
    let y: f64 = fields.get(b - 3)?.parse().ok()?;
    Some((x + y) / TICKS_PER_SECOND)
}

/// Context switches of every thread of process `pid` (voluntary and not):
/// each store round trip or cross-thread wake-up costs at least one.
pub fn context_switches(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        // A thread that ended between the listing and the read is skipped:
        // its switches are lost with it, as the kernel loses them too.
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            total += switches_of(&status);
        }
    }
    Some(total)
}

fn switches_of(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches:")
                || l.starts_with("nonvoluntary_ctxt_switches:")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn peak_rss_kib(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tokio (w) 1) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 15 5 20 0 9 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(children_cpu_seconds(stat), Some(0.2));
    }

    #[test]
    fn peak_memory_is_read_from_vmhwm() {
        let status = "Name:\tmeridian\nVmPeak:\t  900 kB\nVmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(peak_rss_kib(status), Some(2048.0));
    }

    #[test]
    fn context_switches_add_the_voluntary_and_the_forced_ones() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(switches_of(status), 15);
    }

    #[test]
    fn this_process_has_spent_some_cpu_and_memory() {
        let u = usage("self").expect("this process is there");
        assert!(u.cpu_seconds >= 0.0);
        assert!(u.peak_rss_mib > 0.0);
    }

    #[test]
    fn a_socket_this_process_holds_is_counted() {
        // Other tests of this process open and close sockets meanwhile, so
        // only "at least ours" holds.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(open_sockets("self").is_some_and(|n| n >= 1));
        drop(listener);
        assert_eq!(open_sockets("no-such-process"), None);
    }
}
