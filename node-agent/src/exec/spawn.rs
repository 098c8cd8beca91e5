//! Starting a task's program without copying the agent.
//!
//! Owns the one way a real task's process comes to be: a child made with
//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`, which shares the agent's
//! memory (no page tables are copied, whatever the agent's size) while the
//! spawning thread is suspended until the child has exec'd or given up. In
//! between, the child takes its own process group, gets its standard
//! streams, and runs the task's [`ChildSetup`] (cgroups, rlimits, working
//! directory, user, start deadline), so the program's first instruction
//! already runs inside its limits and as its user. The parent gets a pidfd
//! with the pid, which it waits on without polling and which can never name
//! a recycled pid.
//!
//! Must never, in the child: allocate, take a lock, touch anything the
//! parent could be using, or call a C library wrapper with process-wide
//! effects (glibc's `setuid` would change the credentials of every thread
//! of the *agent*, whose thread list the child shares); only plain system
//! calls on memory prepared before the clone. Must never return before the
//! child has exec'd or exited, leave a child that failed to exec unreaped,
//! or make the agent's memory dumpable while a child that switched to the
//! task's user may still be running in it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{CString, OsString, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::isolation::ChildSetup;

/// The child's stack: it runs a few system calls, no deep frames.
const CHILD_STACK: usize = 64 * 1024;

/// The shell a file that is not an executable format is run with, as
/// `execvp` does: a script without a `#!` line.
const SHELL: &std::ffi::CStr = c"/bin/sh";

/// A program and what it is given, as the kernel takes them.
#[derive(Debug)]
pub struct Program {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// `/bin/sh <path> <args>...`, for a file exec refuses as ENOEXEC.
    shell_argv: Vec<CString>,
}

impl Program {
    /// `path` run with `args` (after `argv[0]`, the path itself) in exactly
    /// `env`. Fails naming the part that has a NUL byte, or an environment
    /// name that is empty or has `=`.
    pub fn new(
        path: &Path,
        args: &[String],
        env: &BTreeMap<OsString, OsString>,
    ) -> Result<Self, String> {
        let c = |what: &dyn Fn() -> String, bytes: &[u8]| {
            CString::new(bytes).map_err(|_| format!("{} contains a NUL byte", what()))
        };
        let path = c(&|| "the program path".into(), path.as_os_str().as_bytes())?;
        let mut argv = vec![path.clone()];
        for (i, a) in args.iter().enumerate() {
            argv.push(c(&|| format!("argument {i}"), a.as_bytes())?);
        }
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            let name = k.as_bytes();
            if name.is_empty() || name.contains(&b'=') {
                return Err(format!(
                    "environment name {:?} is empty or contains '='",
                    k.to_string_lossy()
                ));
            }
            let mut entry = name.to_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            envp.push(c(
                &|| format!("environment variable {}", k.to_string_lossy()),
                &entry,
            )?);
        }
        let mut shell_argv = vec![SHELL.to_owned()];
        shell_argv.extend(argv.iter().cloned());
        Ok(Program {
            path,
            argv,
            envp,
            shell_argv,
        })
    }
}

/// A started process: its pid, a pidfd for it, and the read ends of its
/// stdout and stderr pipes. Dropping it without waiting leaves a zombie
/// until the agent exits; [`Process`] is the async owner.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What the child reads, prepared by the parent before the clone.
struct ChildContext<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    shell_argv: *const *const libc::c_char,
    /// Stdin, stdout and stderr to be.
    stdio: [RawFd; 3],
    setup: &'a ChildSetup,
    /// The errno of the step that failed; 0 while none did. The parent
    /// reads it once the clone has returned (the child exec'd or exited).
    error: AtomicI32,
}

/// Starts `program` with `setup`: stdin from `/dev/null`, stdout and stderr
/// into new pipes, in a new process group led by the process. Blocks until
/// the program has been exec'd; an error is the errno of the step that
/// failed (the child is reaped), [`super::isolation::TOO_LATE_ERRNO`] when
/// the start deadline had passed.
pub fn start(program: &Program, setup: &ChildSetup) -> std::io::Result<Spawned> {
    let stdin = open_dev_null()?;
    let (stdout_r, stdout_w) = pipe_pair()?;
    let (stderr_r, stderr_w) = pipe_pair()?;
    let ptrs = |v: &[CString]| {
        let mut p: Vec<*const libc::c_char> = v.iter().map(|s| s.as_ptr()).collect();
        p.push(std::ptr::null());
        p
    };
    let argv = ptrs(&program.argv);
    let envp = ptrs(&program.envp);
    let shell_argv = ptrs(&program.shell_argv);
    let ctx = ChildContext {
        path: program.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        shell_argv: shell_argv.as_ptr(),
        stdio: [
            stdin.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        ],
        setup,
        error: AtomicI32::new(0),
    };
    let switches_user = setup.user.is_some();
    if switches_user {
        user_switches(1);
    }
    let cloned = STACK.with_borrow_mut(|stack| {
        if stack.is_none() {
            *stack = Some(ChildStack::new()?);
        }
        let top = stack.as_ref().map_or(0, ChildStack::top);
        // SAFETY: `ctx` and everything it points to (`program`, `argv`,
        // `envp`, `shell_argv`, `setup`, the descriptors) live in this
        // frame until the clone returns, which is after the child exec'd
        // or exited; `top` is this thread's child stack, used by one clone
        // at a time.
        unsafe { clone_child(&ctx, top) }
    });
    if switches_user {
        user_switches(-1);
    }
    drop((stdin, stdout_w, stderr_w));
    let (pid, pidfd) = cloned?;
    let errno = ctx.error.load(Ordering::Acquire);
    if errno != 0 {
        // The child has exited (127) or is about to: reap it.
        let _ = wait_blocking(&pidfd);
        return Err(std::io::Error::from_raw_os_error(errno));
    }
    Ok(Spawned {
        pid,
        pidfd,
        stdout: stdout_r,
        stderr: stderr_r,
    })
}

/// Clones the child onto the stack whose top is `top`, with every signal
/// blocked on this thread across the clone so that no handler of the agent
/// runs in the child on the shared memory before the child has reset the
/// dispositions. Returns the pid and its pidfd.
///
/// # Safety
/// `ctx` must stay valid until this returns, and `top` must be the 16-byte
/// aligned top of a stack no one else uses meanwhile.
unsafe fn clone_child(ctx: &ChildContext<'_>, top: usize) -> std::io::Result<(i32, OwnedFd)> {
    let mut pidfd: libc::c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    let old_mask = block_all_signals();
    // SAFETY: as the caller promised; `pidfd` receives the pidfd (CLONE_PIDFD
    // stores it through the parent-tid argument).
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut c_void,
            flags,
            std::ptr::from_ref(ctx).cast_mut().cast(),
            &raw mut pidfd,
        )
    };
    let clone_error = std::io::Error::last_os_error();
    restore_signals(&old_mask);
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: CLONE_PIDFD gave us this new descriptor, owned by nobody else.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

thread_local! {
    /// This thread's child stack, made at its first spawn and kept: a map
    /// and unmap per spawn would cost the agent's threads a TLB shootdown.
    static STACK: RefCell<Option<ChildStack>> = const { RefCell::new(None) };
}

/// A stack for the child, with a guard page below it, so that an overflow
/// faults instead of writing over the agent's memory.
struct ChildStack {
    base: *mut c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> std::io::Result<ChildStack> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = CHILD_STACK + page;
        // SAFETY: a new anonymous private mapping, nothing else is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The stack grows down from its 16-byte aligned top.
    fn top(&self) -> usize {
        (self.base as usize + self.len) & !15
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used by any child
        // (a clone returns only after its child exec'd or exited).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Spawns in flight whose child switches to the task's user.
static USER_SWITCHES: Mutex<u64> = Mutex::new(0);
/// The agent's dumpable flag before any child switched user.
static AGENT_DUMPABLE: OnceLock<libc::c_int> = OnceLock::new();

/// Counts a spawn whose child switches user in (`1`) or out (`-1`).
///
/// A child that switches to the task's user first makes the memory it runs
/// in non-dumpable ([`ChildSetup::apply`]), and that memory is the agent's:
/// so that no process of the task's user can ptrace the child (and through
/// it the agent) between its switch and its exec. That protection is wanted
/// while such a child may run; after the last one has exec'd, the agent's
/// own flag is put back, so the agent still leaves a core dump if it
/// crashes.
fn user_switches(delta: i64) {
    let mut n = USER_SWITCHES.lock().unwrap_or_else(PoisonError::into_inner);
    if *n == 0 {
        // Read with no such child in flight: the agent's own value.
        // SAFETY: PR_GET_DUMPABLE only reads.
        AGENT_DUMPABLE.get_or_init(|| unsafe { libc::prctl(libc::PR_GET_DUMPABLE) });
    }
    *n = n.saturating_add_signed(delta);
    if *n == 0
        && let Some(&dumpable) = AGENT_DUMPABLE.get()
        && dumpable >= 0
    {
        // SAFETY: sets this process's dumpable flag back to its own value.
        unsafe {
            libc::prctl(
                libc::PR_SET_DUMPABLE,
                libc::c_ulong::try_from(dumpable).unwrap_or(0),
            );
        }
    }
}

/// The child, on its own stack in the agent's memory: only system calls.
extern "C" fn child_main(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildContext` of `start`, alive while the
    // parent is suspended.
    let ctx = unsafe { &*arg.cast::<ChildContext<'_>>() };
    let errno = prepare_and_exec(ctx);
    ctx.error.store(errno.max(1), Ordering::Release);
    // SAFETY: exits this child only (it has no thread group but itself),
    // without running any of the agent's exit handlers.
    unsafe { libc::_exit(127) }
}

/// The child's steps; returns the errno of the first that failed (exec
/// does not return when it succeeds).
fn prepare_and_exec(ctx: &ChildContext<'_>) -> i32 {
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
    };
    // SAFETY, for the calls of this function: plain system calls on
    // integers and on memory prepared by the parent (`ctx`), which stays
    // alive and untouched while the parent is suspended.
    unsafe {
        // Signals the agent catches get their default action back (exec
        // would do so too, but a signal may come before it), as does
        // SIGPIPE, which the Rust runtime ignores and a program must not
        // inherit ignored.
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &raw mut action) != 0 {
                continue;
            }
            let handled =
                action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN;
            if handled || sig == libc::SIGPIPE {
                action.sa_sigaction = libc::SIG_DFL;
                action.sa_flags = 0;
                libc::sigaction(sig, &raw const action, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut none);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut());
        if rc != 0 {
            // It returns the error rather than setting errno.
            return rc;
        }
        if libc::setpgid(0, 0) != 0 {
            return errno();
        }
        for (target, &fd) in (0..).zip(&ctx.stdio) {
            let ok = if fd == target {
                // Already in place: only its close-on-exec flag must go.
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            };
            if !ok {
                return errno();
            }
        }
        if let Err(e) = ctx.setup.apply() {
            return e.raw_os_error().unwrap_or(libc::EINVAL);
        }
        libc::execve(ctx.path, ctx.argv, ctx.envp);
        let failed = errno();
        if failed == libc::ENOEXEC {
            // Not an executable format: a script without a `#!` line,
            // which the shell runs, as `execvp` would.
            libc::execve(SHELL.as_ptr(), ctx.shell_argv, ctx.envp);
        }
        failed
    }
}

fn open_dev_null() -> std::io::Result<OwnedFd> {
    let file = std::fs::File::open("/dev/null")?;
    Ok(OwnedFd::from(file))
}

/// A pipe, both ends close-on-exec (the child's copies on 1 and 2 are
/// not): `(read, write)`.
fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn block_all_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; the calls only fill it and set this
    // thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&raw mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
        old
    }
}

fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: sets this thread's mask back to what it was.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    }
}

/// Reaps the process `pidfd` names, or sees it still running (`None`)
/// when `flags` has `WNOHANG`.
fn wait_pidfd(pidfd: &OwnedFd, flags: libc::c_int) -> std::io::Result<Option<ExitStatus>> {
    // SAFETY: siginfo_t is plain data, filled by waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pidfd` is an open pidfd; waitid fills `info`.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &raw mut info,
                libc::WEXITED | flags,
            )
        };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // SAFETY: after a successful waitid the pid and status fields are set
    // (pid 0: nothing has exited yet under WNOHANG).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    // Back to the wait status encoding ExitStatus reads.
    let raw = match info.si_code {
        libc::CLD_EXITED => (status & 0xff) << 8,
        libc::CLD_DUMPED => (status & 0x7f) | 0x80,
        _ => status & 0x7f,
    };
    Ok(Some(ExitStatus::from_raw(raw)))
}

pub(super) fn wait_blocking(pidfd: &OwnedFd) -> std::io::Result<ExitStatus> {
    wait_pidfd(pidfd, 0)?.ok_or_else(|| std::io::Error::other("waitid returned no child"))
}

/// A running process, waited on through its pidfd by the async runtime.
/// Dropped before its exit (its supervisor was cancelled, as when the
/// runtime shuts down) it goes on running, like a task of an agent that
/// died: the next boot's cleanup stops its group
/// ([`super::process::cleanup_previous`]).
#[derive(Debug)]
pub struct Process {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    /// Set once reaped: the pid may then belong to another process.
    status: Option<ExitStatus>,
}

impl Process {
    /// Registers `spawned`'s pidfd with the runtime, handing back its pipes
    /// as async readers. On failure the process and its group are killed
    /// and it is reaped.
    pub fn register(
        spawned: Spawned,
    ) -> std::io::Result<(Process, pipe::Receiver, pipe::Receiver)> {
        let Spawned {
            pid,
            pidfd,
            stdout,
            stderr,
        } = spawned;
        // SAFETY: an OwnedFd stays open, and the same descriptor, for as
        // long as the AsyncFd that owns it.
        let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
        let pidfd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                let (pidfd, e) = e.into_parts();
                kill_group_and_reap(pid, pidfd);
                return Err(e);
            }
        };
        let pipes = pipe::Receiver::from_owned_fd(stdout)
            .and_then(|out| Ok((out, pipe::Receiver::from_owned_fd(stderr)?)));
        match pipes {
            Ok((out, err)) => Ok((
                Process {
                    pid,
                    pidfd,
                    status: None,
                },
                out,
                err,
            )),
            Err(e) => {
                kill_group_and_reap(pid, pidfd.into_inner());
                Err(e)
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it. Cancel-safe: a wait
    /// dropped before the exit loses nothing.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        loop {
            let mut ready = self.pidfd.readable().await?;
            match wait_pidfd(self.pidfd.get_ref(), libc::WNOHANG)? {
                Some(s) => {
                    self.status = Some(s);
                    return Ok(s);
                }
                None => ready.clear_ready(),
            }
        }
    }
}

/// SIGKILLs the process group led by `pid` and the process `pidfd` names,
/// and reaps it on a thread of its own (the caller may be on the async
/// runtime, where blocking is not allowed). Only for a process not reaped
/// yet: its pid then still names it and its group.
fn kill_group_and_reap(pid: i32, pidfd: OwnedFd) {
    // SAFETY: signals only; the leader is unreaped, so `pid` is still its
    // group's id, and a pidfd never names another process than its own.
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
    let reaper = std::thread::Builder::new()
        .name("meridian-reap".into())
        .spawn(move || wait_blocking(&pidfd));
    if let Err(e) = reaper {
        tracing::warn!(pid, error = %e, "cannot start a thread to reap a killed task process");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::isolation::{ChildSetup, RunAs};

    fn run(program: &Program, setup: &ChildSetup) -> ExitStatus {
        let started = start(program, setup).expect("start");
        wait_blocking(&started.pidfd).expect("wait")
    }

    /// `execvp` runs a file without a `#!` line with the shell; tasks that
    /// relied on it keep working.
    #[test]
    fn a_script_without_an_interpreter_line_is_run_by_the_shell() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("job");
        std::fs::write(&script, "touch \"$1\"\n").expect("write script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let program = Program::new(&script, &["ran".into()], &BTreeMap::new()).expect("program");
        let setup = ChildSetup::new(dir.path()).expect("setup");
        let status = run(&program, &setup);
        assert!(status.success(), "{status:?}");
        assert!(dir.path().join("ran").exists(), "the script did not run");
    }

    /// The child that switches to the task's user makes the memory it runs
    /// in, the agent's, non-dumpable; once it has exec'd the agent's own
    /// flag is back (a root agent switches to `nobody`; another agent keeps
    /// its user and the flag must not move either).
    #[test]
    fn a_child_that_switches_user_leaves_the_agent_as_dumpable_as_it_was() {
        // SAFETY: PR_GET_DUMPABLE only reads.
        let before = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
        let program = Program::new(Path::new("/bin/true"), &[], &BTreeMap::new()).expect("program");
        let mut setup = ChildSetup::new(Path::new("/")).expect("setup");
        setup.user =
            crate::exec::isolation::task_user(&RunAs::Default, nix::unistd::Uid::effective())
                .expect("task user");
        let status = run(&program, &setup);
        assert!(status.success(), "{status:?}");
        // SAFETY: as above.
        let after = unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
        assert_eq!(after, before, "switched user: {}", setup.user.is_some());
    }

    #[test]
    fn a_program_that_cannot_be_found_fails_the_start_with_its_errno() {
        let program = Program::new(Path::new("/nonexistent/program"), &[], &BTreeMap::new())
            .expect("program");
        let setup = ChildSetup::new(Path::new("/")).expect("setup");
        let err = start(&program, &setup).expect_err("no such program");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    }

    #[test]
    fn an_environment_name_with_an_equals_sign_is_refused_by_name() {
        let env = BTreeMap::from([(OsString::from("A=B"), OsString::from("v"))]);
        let err = Program::new(Path::new("/bin/true"), &[], &env).expect_err("refused");
        assert!(err.contains("A=B"), "{err}");
    }
}
