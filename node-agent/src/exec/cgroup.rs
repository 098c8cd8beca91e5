//! Task cgroups: one cgroup per attempt with its memory, CPU and pids
//! limits, on cgroup v2 or, where v2 has no controllers, on v1 hierarchies.
//!
//! Owns finding a usable hierarchy at agent start ([`Cgroups::detect`]),
//! the agent's scope (one directory per agent under the parent cgroup),
//! creating a task's cgroup with its limits, the files a child writes to
//! join it before exec, reading its OOM-kill counter, killing everything
//! in it and removing it, or keeping it, emptied, for the next task with
//! the same limits (the pool).
//!
//! Must never: touch a cgroup outside the agent's scope (the parent is only
//! read and, on v2, its scope has controllers enabled), leave a process
//! of a finished attempt in a cgroup it then removes or pools, or pool a
//! cgroup its task could have changed (a task running as root or as the
//! agent's own user).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// CFS period used for CPU quotas (the kernel default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;
/// Smallest quota the kernel accepts (1 ms).
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// Longest wait for a killed cgroup to empty before giving up on removing it.
const EMPTY_WAIT_LIMIT: Duration = Duration::from_secs(5);
/// v2 controllers a task cgroup needs.
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
/// Most emptied task cgroups an agent keeps for reuse; past it, a finished
/// task's cgroup is removed. About the tasks one node runs at once.
const POOL_LIMIT: usize = 128;

/// Which cgroup interface the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither interface can be used; says what is missing for each.
    #[error("no usable cgroups: {0}")]
    NotUsable(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// The agent's scope: where its task cgroups are created. On v1 one
/// directory per controller hierarchy (memory, cpu, pids), on v2 one.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: CgroupVersion,
    /// v2: `[scope]`; v1: `[memory, cpu, pids]` scopes, in that order.
    scopes: Vec<PathBuf>,
    pool: Arc<Mutex<Pool>>,
}

/// Emptied task cgroups, by their limits, and the number of the next
/// cgroup to create. Creating and removing a cgroup (three directories on
/// v1, each with its limits written) costs more kernel time than running
/// a tiny task; an emptied cgroup with the right limits costs three opens.
#[derive(Debug, Default)]
struct Pool {
    idle: BTreeMap<TaskLimits, Vec<Vec<PathBuf>>>,
    next: u64,
}

impl Pool {
    fn take(&mut self, limits: TaskLimits) -> Option<Vec<PathBuf>> {
        self.idle.get_mut(&limits)?.pop()
    }

    /// Gives `dirs` back when the pool is full: the caller removes them.
    fn put(&mut self, limits: TaskLimits, dirs: Vec<PathBuf>) -> Result<(), Vec<PathBuf>> {
        if self.idle.values().map(Vec::len).sum::<usize>() >= POOL_LIMIT {
            return Err(dirs);
        }
        self.idle.entry(limits).or_default().push(dirs);
        Ok(())
    }

    fn drain(&mut self) -> Vec<Vec<PathBuf>> {
        std::mem::take(&mut self.idle)
            .into_values()
            .flatten()
            .collect()
    }
}

fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    // The pool is plain data, consistent after every statement.
    pool.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Limits of one task cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaskLimits {
    /// Bytes; 0 = no memory limit.
    pub memory_bytes: u64,
    /// Thousandths of a core; 0 = no CPU limit.
    pub cpu_millis: u64,
    pub pids: u64,
}

/// One attempt's cgroup (one directory per hierarchy).
#[derive(Debug)]
pub struct TaskCgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory, opened by the agent so that the
    /// child can join with a plain `write` before exec.
    join: Vec<File>,
    pub limits: TaskLimits,
    /// The OOM-kill counter when this task got the cgroup: a pooled one
    /// keeps the counts of its earlier tasks.
    oom_base: u64,
    /// Where the cgroup goes back to when the task is done; `None`: it is
    /// removed.
    pool: Option<Arc<Mutex<Pool>>>,
}

impl Cgroups {
    /// Finds a usable interface and creates the agent's scope `scope_name`
    /// under `parent` (a path inside the hierarchies; `None`: the cgroup
    /// the agent itself is in). v2 is used when the parent's
    /// `cgroup.subtree_control` enables memory, cpu and pids; otherwise v1
    /// when memory, cpu and pids hierarchies are mounted.
    pub fn detect(parent: Option<&str>, scope_name: &str) -> Result<Cgroups, CgroupError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(io_err("reading", Path::new("/proc/self/cgroup")))?;
        let mounts = parse_mounts(&mountinfo);
        let v2 = match try_v2(&mounts, &own, parent, scope_name) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        let v1 = match try_v1(&mounts, &own, parent, scope_name) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        Err(CgroupError::NotUsable(format!(
            "cgroup v2: {v2}; cgroup v1: {v1}"
        )))
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The scope directories (one per hierarchy used).
    pub fn scopes(&self) -> &[PathBuf] {
        &self.scopes
    }

    /// Kills every process left in the scope's task cgroups (a previous
    /// boot of this agent) and removes them. Returns how many it removed.
    pub async fn clean_leftovers(&self) -> usize {
        let mut removed = 0;
        let mut names = std::collections::BTreeSet::new();
        for scope in &self.scopes {
            if let Ok(rd) = std::fs::read_dir(scope) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        names.insert(e.file_name());
                    }
                }
            }
        }
        for name in names {
            let dirs: Vec<PathBuf> = self.scopes.iter().map(|s| s.join(&name)).collect();
            let cg = TaskCgroup {
                version: self.version,
                dirs: dirs.into_iter().filter(|d| d.is_dir()).collect(),
                join: Vec::new(),
                limits: TaskLimits {
                    memory_bytes: 0,
                    cpu_millis: 0,
                    pids: 0,
                },
                oom_base: 0,
                pool: None,
            };
            if cg.kill_and_remove().await {
                removed += 1;
            }
        }
        removed
    }

    /// Removes the pooled task cgroups and the agent's scope directories,
    /// once every task cgroup in them is gone (at shutdown); a scope still
    /// holding one stays.
    pub fn remove_scope(&self) {
        let pooled = lock(&self.pool).drain();
        for d in pooled.iter().flatten() {
            if let Err(e) = std::fs::remove_dir(d) {
                tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove pooled task cgroup");
            }
        }
        for s in &self.scopes {
            if let Err(e) = std::fs::remove_dir(s)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(cgroup = %s.display(), error = %e, "cannot remove the agent's cgroup scope");
            }
        }
    }

    /// A cgroup with `limits` for one attempt: an emptied one from the pool
    /// when there is one, else a new `task-<n>`. `reusable`: the task cannot
    /// change its cgroup (it runs as a user other than root and the
    /// agent's), so the cgroup may go back to the pool when it ends.
    pub fn create_task(
        &self,
        limits: TaskLimits,
        reusable: bool,
    ) -> Result<TaskCgroup, CgroupError> {
        let mut cg = TaskCgroup {
            version: self.version,
            dirs: Vec::new(),
            join: Vec::new(),
            limits,
            oom_base: 0,
            pool: reusable.then(|| self.pool.clone()),
        };
        let pooled = lock(&self.pool).take(limits);
        if let Some(dirs) = pooled {
            cg.dirs = dirs;
            cg.oom_base = cg.oom_count();
            match cg.open_join() {
                Ok(()) => return Ok(cg),
                Err(e) => {
                    // Removed behind the agent's back: make a new one.
                    tracing::warn!(cgroup = ?cg.dirs, error = %e, "pooled task cgroup unusable");
                    for d in &cg.dirs {
                        let _ = std::fs::remove_dir(d);
                    }
                    cg.dirs.clear();
                    cg.oom_base = 0;
                }
            }
        }
        let made = self.fill_task(&mut cg);
        if made.is_err() {
            // Nothing joined it yet: the directories are empty.
            for d in &cg.dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
        made.map(|()| cg)
    }

    /// Creates a new cgroup for `cg` with its limits.
    fn fill_task(&self, cg: &mut TaskCgroup) -> Result<(), CgroupError> {
        let l = cg.limits;
        let quota =
            (l.cpu_millis > 0).then(|| (l.cpu_millis * CPU_PERIOD_US / 1000).max(MIN_CPU_QUOTA_US));
        // A name no directory has in any hierarchy: one left by an earlier
        // boot that could not be removed is skipped.
        let mut tries = 0;
        'name: loop {
            let n = {
                let mut pool = lock(&self.pool);
                pool.next += 1;
                pool.next
            };
            let name = format!("task-{n}");
            for scope in &self.scopes {
                let dir = scope.join(&name);
                match std::fs::create_dir(&dir) {
                    Ok(()) => cg.dirs.push(dir),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 1000 => {
                        tries += 1;
                        for d in cg.dirs.drain(..) {
                            let _ = std::fs::remove_dir(d);
                        }
                        continue 'name;
                    }
                    Err(e) => return Err(io_err("creating", &dir)(e)),
                }
            }
            break;
        }
        match self.version {
            CgroupVersion::V2 => {
                let dir = &cg.dirs[0];
                if l.memory_bytes > 0 {
                    write_file(&dir.join("memory.max"), &l.memory_bytes.to_string())?;
                    // Without this a task could page out instead of being
                    // held to its limit; absent when the kernel has no swap.
                    let _ = write_file(&dir.join("memory.swap.max"), "0");
                    // Kill the whole task, not one of its processes.
                    let _ = write_file(&dir.join("memory.oom.group"), "1");
                }
                if let Some(q) = quota {
                    write_file(&dir.join("cpu.max"), &format!("{q} {CPU_PERIOD_US}"))?;
                }
                write_file(&dir.join("pids.max"), &l.pids.to_string())?;
            }
            CgroupVersion::V1 => {
                let (mem, cpu, pids) = (&cg.dirs[0], &cg.dirs[1], &cg.dirs[2]);
                if l.memory_bytes > 0 {
                    write_file(
                        &mem.join("memory.limit_in_bytes"),
                        &l.memory_bytes.to_string(),
                    )?;
                    let _ = write_file(
                        &mem.join("memory.memsw.limit_in_bytes"),
                        &l.memory_bytes.to_string(),
                    );
                }
                if let Some(q) = quota {
                    write_file(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write_file(&cpu.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
                write_file(&pids.join("pids.max"), &l.pids.to_string())?;
            }
        }
        cg.open_join()
    }
}

impl TaskCgroup {
    /// Opens the `cgroup.procs` file of each directory for the child.
    fn open_join(&mut self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let procs = dir.join("cgroup.procs");
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&procs)
                .map_err(io_err("opening", &procs))?;
            self.join.push(f);
        }
        Ok(())
    }

    /// Descriptors a child writes `0` to (itself) to join every hierarchy.
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.join.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Closes the join descriptors once the child has exec'd: a node
    /// running many tasks should not hold three files open per task.
    pub fn close_join(&mut self) {
        self.join.clear();
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// How many processes of the task the kernel killed for exceeding its
    /// memory limit.
    pub fn oom_kills(&self) -> u64 {
        self.oom_count().saturating_sub(self.oom_base)
    }

    /// The cgroup's OOM-kill counter since it was made.
    fn oom_count(&self) -> u64 {
        let (file, key) = match self.version {
            CgroupVersion::V2 => ("memory.events", "oom_kill"),
            CgroupVersion::V1 => ("memory.oom_control", "oom_kill"),
        };
        let Some(dir) = self.dirs.first() else {
            return 0;
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// Kills every process in the cgroup, waits until it is empty (on the
    /// runtime's timer: a short poll of the kernel, not a time the agent
    /// reasons about) and removes its directories. False when something
    /// was left behind (logged).
    pub async fn kill_and_remove(&self) -> bool {
        self.kill_until_empty().await && self.remove().await
    }

    /// Kills every process in the cgroup until none is left. False when it
    /// did not empty within a few seconds (logged).
    pub async fn kill_until_empty(&self) -> bool {
        let mut pause = Duration::from_millis(1);
        let mut waited = Duration::ZERO;
        loop {
            let left = self.kill_all();
            if left == 0 {
                return true;
            }
            if waited >= EMPTY_WAIT_LIMIT {
                tracing::warn!(cgroup = ?self.dirs, left, "task cgroup did not empty; left in place");
                return false;
            }
            tokio::time::sleep(pause).await;
            waited += pause;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Ends the task's use of the cgroup: back to the pool when it may be
    /// reused and `emptied` (nothing of the task is left in it), else
    /// removed.
    pub async fn finish(mut self, emptied: bool) -> bool {
        self.join.clear();
        if emptied && let Some(pool) = self.pool.take() {
            let dirs = std::mem::take(&mut self.dirs);
            match lock(&pool).put(self.limits, dirs) {
                Ok(()) => return true,
                Err(dirs) => self.dirs = dirs,
            }
        }
        self.remove().await
    }

    /// Removes the (empty) cgroup's directories.
    pub async fn remove(&self) -> bool {
        let mut ok = true;
        for d in &self.dirs {
            // Processes that were just killed may still be leaving.
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove task cgroup");
                        ok = false;
                        break;
                    }
                }
            }
        }
        ok
    }

    /// Sends SIGKILL to everything in the cgroup; the number of processes
    /// it found (0: empty).
    fn kill_all(&self) -> usize {
        if self.version == CgroupVersion::V2
            && let Some(dir) = self.dirs.first()
            && count_procs(dir) > 0
            && write_file(&dir.join("cgroup.kill"), "1").is_ok()
        {
            // The kernel kills the whole subtree, forks in flight included.
            return count_procs(dir);
        }
        // v1 (or v2 before 5.14): one pass over the members. A process
        // forking meanwhile is caught by the next pass; the pids limit
        // bounds how many there can be.
        let mut found = 0;
        for dir in &self.dirs {
            for pid in read_procs(dir) {
                found += 1;
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        found
    }
}

fn count_procs(dir: &Path) -> usize {
    read_procs(dir).len()
}

fn read_procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    f.write_all(value.as_bytes())
        .map_err(io_err("writing", path))
}

/// A cgroup directory name: letters, digits, `-`, `_` and `.` (no leading
/// dot), at most 200 bytes.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
    }
    s
}

/// A cgroup mount: its type and options, where it is and which part of
/// the hierarchy it shows.
#[derive(Debug)]
struct Mount {
    v2: bool,
    options: Vec<String>,
    root: String,
    point: PathBuf,
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next();
            let options = right.next().unwrap_or("");
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                v2: fstype == "cgroup2",
                options: options.split(',').map(str::to_string).collect(),
                root: unescape(left.get(3)?),
                point: PathBuf::from(unescape(left.get(4)?)),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(char::from(b)),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The agent's own cgroup in the hierarchy whose `/proc/self/cgroup`
/// entry matches `wanted` (v2: the `0::` line).
fn own_path(own: &str, wanted: impl Fn(&str, &str) -> bool) -> Option<String> {
    own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        wanted(id, controllers).then(|| path.to_string())
    })
}

/// Directory of cgroup `path` (a hierarchy path) under `mount`.
fn dir_of(mount: &Mount, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(mount.root.as_str())
        .unwrap_or(path)
        .trim_start_matches('/');
    mount.point.join(rel)
}

fn try_v2(
    mounts: &[Mount],
    own: &str,
    parent: Option<&str>,
    scope_name: &str,
) -> Result<Cgroups, String> {
    let mount = mounts
        .iter()
        .find(|m| m.v2)
        .ok_or("no cgroup2 file system mounted")?;
    let path = match parent {
        Some(p) => p.to_string(),
        None => own_path(own, |id, c| id == "0" && c.is_empty())
            .ok_or("the agent's own cgroup v2 path is not in /proc/self/cgroup")?,
    };
    let base = dir_of(mount, &path);
    let control = base.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control)
        .map_err(|e| format!("cannot read {}: {e}", control.display()))?;
    let missing: Vec<&str> = V2_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "controllers {} not enabled in {} (enabled: {:?})",
            missing.join(", "),
            control.display(),
            enabled.trim()
        ));
    }
    let scope = base.join(scope_name);
    make_dir(&scope)?;
    // The scope holds no process, so its children may get controllers.
    let enable = V2_CONTROLLERS.map(|c| format!("+{c}")).join(" ");
    write_file(&scope.join("cgroup.subtree_control"), &enable).map_err(|e| e.to_string())?;
    Ok(Cgroups {
        version: CgroupVersion::V2,
        scopes: vec![scope],
        pool: Arc::default(),
    })
}

fn try_v1(
    mounts: &[Mount],
    own: &str,
    parent: Option<&str>,
    scope_name: &str,
) -> Result<Cgroups, String> {
    let mut scopes = Vec::new();
    let mut missing = Vec::new();
    for controller in ["memory", "cpu", "pids"] {
        let Some(mount) = mounts
            .iter()
            .find(|m| !m.v2 && m.options.iter().any(|o| o == controller))
        else {
            missing.push(format!("no {controller} hierarchy mounted"));
            continue;
        };
        let path = match parent {
            Some(p) => Some(p.to_string()),
            None => own_path(own, |id, c| {
                id != "0" && c.split(',').any(|x| x == controller)
            }),
        };
        let Some(path) = path else {
            missing.push(format!("no {controller} line in /proc/self/cgroup"));
            continue;
        };
        scopes.push(dir_of(mount, &path).join(scope_name));
    }
    if !missing.is_empty() {
        return Err(missing.join(", "));
    }
    for s in &scopes {
        make_dir(s)?;
    }
    Ok(Cgroups {
        version: CgroupVersion::V1,
        scopes,
        pool: Arc::default(),
    })
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /tmp rw - tmpfs tmpfs rw";

    #[test]
    fn mountinfo_yields_each_cgroup_mount_with_its_controllers() {
        let m = parse_mounts(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert!(m[3].v2);
        assert_eq!(m[1].point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert!(m[1].options.iter().any(|o| o == "memory"));
    }

    #[test]
    fn the_own_cgroup_of_a_controller_is_found_under_its_mount() {
        let own = "4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n";
        let m = parse_mounts(MOUNTINFO);
        let path = own_path(own, |id, c| {
            id != "0" && c.split(',').any(|x| x == "memory")
        });
        assert_eq!(path.as_deref(), Some("/process_api/abc"));
        assert_eq!(
            dir_of(&m[1], "/process_api/abc"),
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(
            own_path(own, |id, c| id == "0" && c.is_empty()).as_deref(),
            Some("/")
        );
    }

    #[test]
    fn a_task_name_becomes_a_safe_directory_name() {
        assert_eq!(sanitize("job/1:0-2"), "job_1_0-2");
        assert_eq!(sanitize(".."), "_..");
        assert_eq!(sanitize(""), "_");
    }
}
