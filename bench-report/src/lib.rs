//! What every benchmark report in `docs/bench/` states beside its numbers:
//! the machine, the git revision and the date, so a reader can tell what was
//! measured where.
//!
//! Owns the probing of those facts. It must never fail a benchmark: anything
//! it cannot find out is reported as unknown.

use std::path::Path;
use std::process::Command;

/// The machine a benchmark ran on.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// CPU model from `/proc/cpuinfo`.
    pub cpu: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Total memory, e.g. "23.5 GiB".
    pub memory: String,
    /// The 1-, 5- and 15-minute load averages when the report was made; a
    /// busy machine explains a noisy number.
    pub load: String,
}

impl Machine {
    /// Probes this machine.
    pub fn probe() -> Self {
        Machine {
            cpu: cpu_model(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory: total_memory(),
            load: load_average(),
        }
    }

    /// One line for a report: "CPU, N cores, M memory, load L".
    pub fn describe(&self) -> String {
        format!(
            "{}, {} cores, {} memory, load average {}",
            self.cpu, self.cores, self.memory, self.load
        )
    }
}

fn read_field(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().and_then(|text| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    })
}

fn cpu_model() -> String {
    read_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into())
}

fn total_memory() -> String {
    read_field("/proc/meminfo", "MemTotal")
        .and_then(|v| {
            v.split_whitespace()
                .next()
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(
            || "unknown".into(),
            |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0),
        )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The short git revision of the checkout containing `dir`, marked "+dirty"
/// when the work tree has uncommitted changes.
pub fn git_revision(dir: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]).filter(|r| !r.is_empty()) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}+dirty") } else { rev }
        }
        None => "unknown (no commit)".into(),
    }
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub fn utc_date() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

/// The lines every report starts its "how this was measured" section with.
pub fn provenance(command: &str, dir: &Path) -> String {
    format!(
        "Command: `{command}`\n\n- machine: {}\n- git revision: {}\n- date (UTC): {}\n",
        Machine::probe().describe(),
        git_revision(dir),
        utc_date()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_an_iso_calendar_date() {
        let date = utc_date();
        let parts: Vec<&str> = date.split('-').collect();
        assert_eq!(parts.len(), 3, "{date}");
        assert_eq!(parts[0].len(), 4);
        assert!(parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())));
    }

    #[test]
    fn provenance_names_the_command_and_the_machine() {
        let text = provenance("cargo bench -p x", Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(text.contains("`cargo bench -p x`"));
        assert!(text.contains("cores"));
        assert!(text.contains("git revision"));
    }
}
