//! Task isolation: which user a task runs as and the cgroup it runs in.
//!
//! Owns the isolation options ([`IsolationOptions`]), deciding at agent
//! start which user tasks get and whether cgroups are usable
//! ([`Isolation::setup`]), and the steps a task's child takes before exec
//! ([`ChildSetup`], run by [`super::spawn`]): join its cgroups, set its
//! rlimits, enter its working directory, drop to the task's user, check its
//! start deadline.
//!
//! Must never: run a task as root unless asked to explicitly, start an
//! agent that was asked for a user it cannot switch to, or do anything in a
//! task's child but plain system calls (it shares the agent's memory).

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::Path;

use nix::unistd::{Gid, Uid, User, getgrouplist};

use super::cgroup::{CgroupVersion, Cgroups};
use super::deadline::StartDeadline;
use crate::error::AgentError;

/// User tasks run as when the agent is root and none was named.
pub const DEFAULT_TASK_USER: &str = "nobody";
/// Default most processes (and threads) one task may have.
pub const DEFAULT_PIDS_LIMIT: u64 = 1024;

/// Which user tasks run as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RunAs {
    /// [`DEFAULT_TASK_USER`] when the agent runs as root, otherwise the
    /// agent's own user.
    #[default]
    Default,
    /// This user. Only root can switch to another user than its own.
    User(String),
    /// The agent's own user, root included (`--run-as-root`): a task of a
    /// root agent can then do anything to the node.
    AgentUser,
}

/// What isolation the agent gives tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsolationOptions {
    pub run_as: RunAs,
    /// Put each task in its own cgroup when cgroups are usable.
    pub cgroups: bool,
    /// Refuse to start when tasks cannot get their own cgroups.
    pub require_cgroups: bool,
    /// `pids.max` of every task cgroup.
    pub pids_limit: u64,
    /// Cgroup under which the agent makes its scope, as a path inside the
    /// hierarchy (e.g. `/meridian.slice`); `None`: the agent's own cgroup.
    pub cgroup_parent: Option<String>,
}

impl Default for IsolationOptions {
    fn default() -> Self {
        IsolationOptions {
            run_as: RunAs::Default,
            cgroups: true,
            require_cgroups: false,
            pids_limit: DEFAULT_PIDS_LIMIT,
            cgroup_parent: None,
        }
    }
}

/// The user a task runs as when it is not the agent's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups of the user (its group database entry).
    pub groups: Vec<libc::gid_t>,
}

/// What the agent decided at start.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// `None`: tasks keep the agent's own user.
    pub user: Option<TaskUser>,
    /// `None`: no cgroups (disabled or not usable).
    pub cgroups: Option<Cgroups>,
    pub pids_limit: u64,
}

impl Isolation {
    /// No user switch, no cgroups: tasks run like the agent.
    pub fn none() -> Isolation {
        Isolation {
            user: None,
            cgroups: None,
            pids_limit: DEFAULT_PIDS_LIMIT,
        }
    }

    /// Resolves the task user and finds usable cgroups for the agent
    /// `scope` (a name unique to this agent on the machine). Refuses a user
    /// the agent cannot switch to, and missing cgroups when required;
    /// otherwise warns and runs tasks without limits.
    pub fn setup(opts: &IsolationOptions, scope: &str) -> Result<Isolation, AgentError> {
        let user = task_user(&opts.run_as, Uid::effective())?;
        let cgroups = if opts.cgroups {
            match Cgroups::detect(opts.cgroup_parent.as_deref(), scope) {
                Ok(c) => {
                    tracing::info!(version = ?c.version(), scopes = ?c.scopes(), "tasks run in their own cgroups");
                    Some(c)
                }
                Err(e) if opts.require_cgroups => {
                    return Err(AgentError::Config(format!(
                        "tasks must run in cgroups (--require-cgroups) but {e}"
                    )));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tasks run WITHOUT memory, CPU or pids limits");
                    None
                }
            }
        } else if opts.require_cgroups {
            return Err(AgentError::Config(
                "--require-cgroups contradicts cgroups being turned off".into(),
            ));
        } else {
            None
        };
        if let Some(u) = &user {
            tracing::info!(user = %u.name, uid = u.uid, "tasks run as an unprivileged user");
        } else if Uid::effective().is_root() {
            tracing::warn!("tasks run as root (--run-as-root): a task can take over the node");
        }
        Ok(Isolation {
            user,
            cgroups,
            pids_limit: opts.pids_limit,
        })
    }

    /// The cgroup version tasks run under, if any.
    pub fn cgroup_version(&self) -> Option<CgroupVersion> {
        self.cgroups.as_ref().map(Cgroups::version)
    }
}

/// The user tasks get, `None` for the agent's own, given the agent's
/// effective uid.
pub(crate) fn task_user(run_as: &RunAs, agent: Uid) -> Result<Option<TaskUser>, AgentError> {
    let name = match run_as {
        RunAs::AgentUser if !agent.is_root() => {
            return Err(AgentError::Config(format!(
                "--run-as-root: the agent runs as uid {agent}, not root, so its tasks cannot run as root"
            )));
        }
        RunAs::AgentUser => return Ok(None),
        RunAs::Default if !agent.is_root() => return Ok(None),
        RunAs::Default => DEFAULT_TASK_USER,
        RunAs::User(name) => name.as_str(),
    };
    let user = User::from_name(name)
        .map_err(|e| AgentError::Config(format!("--run-as {name}: cannot look the user up: {e}")))?
        .ok_or_else(|| AgentError::Config(format!("--run-as {name}: no such user")))?;
    if user.uid.is_root() {
        return Err(AgentError::Config(format!(
            "--run-as {name}: that is root; use --run-as-root to run tasks as root"
        )));
    }
    if user.uid == agent {
        return Ok(None);
    }
    if !agent.is_root() {
        return Err(AgentError::Config(format!(
            "--run-as {name}: the agent runs as uid {agent}, not root, so it cannot switch tasks to another user (they run as the agent's own user without --run-as)"
        )));
    }
    let cname = CString::new(name)
        .map_err(|_| AgentError::Config(format!("--run-as {name:?}: not a user name")))?;
    let groups = getgrouplist(&cname, user.gid)
        .map_err(|e| AgentError::Config(format!("--run-as {name}: cannot list its groups: {e}")))?;
    Ok(Some(TaskUser {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups: groups.into_iter().map(Gid::as_raw).collect(),
    }))
}

/// What a task's child does before exec, prepared by the parent so that
/// the child only makes system calls.
#[derive(Debug)]
pub struct ChildSetup {
    /// `cgroup.procs` of each of the task's cgroups, open for writing.
    pub cgroup_fds: Vec<RawFd>,
    /// `(resource, soft, hard)`.
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub cwd: CString,
    pub user: Option<TaskUser>,
    /// Past it the program must not start: checked last, just before
    /// exec, in the child, which a stop of the agent does not stop.
    pub start_by: Option<StartDeadline>,
}

/// What [`ChildSetup::apply`] fails with when the start deadline passed:
/// an error exec itself never returns, so the spawn's caller can tell it
/// from a real failure to start.
pub const TOO_LATE_ERRNO: i32 = libc::ETIME;

impl ChildSetup {
    pub fn new(cwd: &Path) -> Result<ChildSetup, std::io::Error> {
        use std::os::unix::ffi::OsStrExt;
        let cwd = CString::new(cwd.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("working directory contains a NUL byte"))?;
        Ok(ChildSetup {
            cgroup_fds: Vec::new(),
            rlimits: Vec::new(),
            cwd,
            user: None,
            start_by: None,
        })
    }

    /// Runs in the child before exec ([`super::spawn`]). The order matters: join the
    /// cgroups first, so that nothing the task does escapes its limits; the
    /// rlimits; the working directory while still privileged (its parents
    /// need not be searchable by the task's user); the user, groups before
    /// gid before uid, because each step needs the privilege the next one
    /// drops; the start deadline last, as close to exec as it gets.
    ///
    /// Only system calls (write, setrlimit, chdir, setgroups, setgid,
    /// setuid) on memory prepared before the clone: the child shares the
    /// agent's memory, where allocating or taking a lock may deadlock or
    /// corrupt the agent.
    pub fn apply(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        for &fd in &self.cgroup_fds {
            // SAFETY: `fd` is an open descriptor of the parent, kept open
            // by the parent until the spawn returned (the child has exec'd
            // or failed); the buffer is a static byte. "0" is the writer:
            // the child, not the agent.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if n != 1 {
                // A short write sets no errno.
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
        for &(resource, soft, hard) in &self.rlimits {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: setrlimit only reads `limit`, a live stack value.
            check(unsafe { libc::setrlimit(resource, &limit) })?;
        }
        // SAFETY: `cwd` is a NUL-terminated string owned by `self`.
        check(unsafe { libc::chdir(self.cwd.as_ptr()) })?;
        if let Some(u) = &self.user {
            // Raw system calls, not the C library's wrappers: those change
            // the credentials of every thread of the process they believe
            // they are in, and a child sharing the agent's memory
            // ([`super::spawn`]) would take the agent's threads for its own.
            let syscall = |rc: libc::c_long| check(if rc == 0 { 0 } else { -1 });
            // Until exec the child runs in the agent's memory: once it is
            // the task's user, a process of that user could ptrace it and
            // write into the agent. Non-dumpable, it cannot; the spawner
            // gives the agent its own flag back after the exec
            // ([`super::spawn`]). Not left to the kernel's own reset at the
            // change of credentials: that one follows `fs.suid_dumpable`,
            // which may leave the memory dumpable.
            // SAFETY: a plain system call on integers.
            check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })?;
            // SAFETY: the pointer and length describe `u.groups`, which
            // lives as long as `self`.
            syscall(unsafe {
                libc::syscall(libc::SYS_setgroups, u.groups.len(), u.groups.as_ptr())
            })?;
            // SAFETY: plain system calls on integers.
            syscall(unsafe { libc::syscall(libc::SYS_setgid, u.gid) })?;
            // SAFETY: as above.
            syscall(unsafe { libc::syscall(libc::SYS_setuid, u.uid) })?;
        }
        if self.start_by.is_some_and(StartDeadline::passed) {
            return Err(std::io::Error::from_raw_os_error(TOO_LATE_ERRNO));
        }
        Ok(())
    }
}

/// A name for this agent's cgroup scope, stable across its restarts and
/// distinct for two agents on one machine (their work dirs differ).
pub fn scope_name(node_id: &str, work_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let dir = work_dir
        .canonicalize()
        .unwrap_or_else(|_| work_dir.to_path_buf());
    // FNV-1a: a fixed function, so the name survives compiler upgrades.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    super::cgroup::sanitize(&format!("meridian-{node_id}-{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child's own check, just before exec: the agent that cloned it
    /// may be stopped right after the clone, the child is not.
    #[test]
    fn a_child_past_its_start_deadline_does_not_exec() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("ran");
        let program = super::super::spawn::Program::new(
            Path::new("/bin/sh"),
            &["-c".into(), "touch ran".into()],
            &std::collections::BTreeMap::new(),
        )
        .expect("program");
        let spawn = |start_by: StartDeadline| {
            let mut setup = ChildSetup::new(dir.path()).expect("setup");
            setup.start_by = Some(start_by);
            super::super::spawn::start(&program, &setup)
        };

        let err = spawn(StartDeadline::passed_now()).expect_err("a late child must not exec");
        assert_eq!(err.raw_os_error(), Some(TOO_LATE_ERRNO), "{err}");
        assert!(!marker.exists(), "the program ran");

        let started = spawn(StartDeadline::in_an_hour()).expect("spawn in time");
        let status = super::super::spawn::wait_blocking(&started.pidfd).expect("wait");
        assert!(status.success(), "{status:?}");
        assert!(marker.exists(), "the program in time ran");
    }

    #[test]
    fn a_non_root_agent_keeps_its_own_user_and_refuses_another_or_root() {
        let agent = Uid::from_raw(12345);
        assert_eq!(task_user(&RunAs::Default, agent).unwrap(), None);
        let other = task_user(&RunAs::User("root".into()), agent).unwrap_err();
        assert!(other.to_string().contains("root"), "{other}");
        let root = task_user(&RunAs::AgentUser, agent).unwrap_err();
        assert!(root.to_string().contains("not root"), "{root}");
        let missing = task_user(&RunAs::User("no-such-user-here".into()), agent).unwrap_err();
        assert!(missing.to_string().contains("no such user"), "{missing}");
    }

    #[test]
    fn a_root_agent_runs_tasks_as_nobody_unless_told_to_keep_root() {
        let root = Uid::from_raw(0);
        let nobody = task_user(&RunAs::Default, root).unwrap().unwrap();
        assert_eq!(nobody.name, DEFAULT_TASK_USER);
        assert_ne!(nobody.uid, 0);
        assert_eq!(task_user(&RunAs::AgentUser, root).unwrap(), None);
        let named_root = task_user(&RunAs::User("root".into()), root).unwrap_err();
        assert!(
            named_root.to_string().contains("--run-as-root"),
            "{named_root}"
        );
    }

    #[test]
    fn the_scope_name_depends_on_the_node_and_its_work_dir() {
        let a = scope_name("n1", Path::new("/nonexistent/a"));
        assert_eq!(a, scope_name("n1", Path::new("/nonexistent/a")));
        assert_ne!(a, scope_name("n1", Path::new("/nonexistent/b")));
        assert!(a.starts_with("meridian-n1-"));
    }
}
