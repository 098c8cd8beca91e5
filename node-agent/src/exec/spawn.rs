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
//! child has exec'd or exited, nor leave a child that failed to exec
//! unreaped.

use std::collections::BTreeMap;
use std::ffi::{CString, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::isolation::ChildSetup;

/// The child's stack: it runs a few system calls, no deep frames.
const CHILD_STACK: usize = 64 * 1024;

/// A program and what it is given, as the kernel takes them.
#[derive(Debug)]
pub struct Program {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Program {
    /// `path` run with `args` (after `argv[0]`, the path itself) in exactly
    /// `env`. Fails naming the part that has a NUL byte, or an environment
    /// name that is empty or has `=`.
    pub fn new(
        path: &Path,
        args: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let c = |what: &str, bytes: &[u8]| {
            CString::new(bytes).map_err(|_| format!("{what} contains a NUL byte"))
        };
        let path = c("the program path", path.as_os_str().as_bytes())?;
        let mut argv = vec![path.clone()];
        for (i, a) in args.iter().enumerate() {
            argv.push(c(&format!("argument {i}"), a.as_bytes())?);
        }
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            if k.is_empty() || k.contains('=') {
                return Err(format!("environment name {k:?} is empty or contains '='"));
            }
            envp.push(c(
                &format!("environment variable {k}"),
                format!("{k}={v}").as_bytes(),
            )?);
        }
        Ok(Program { path, argv, envp })
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
    let ctx = ChildContext {
        path: program.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdio: [
            stdin.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        ],
        setup,
        error: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let mut pidfd: libc::c_int = -1;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    // Every signal stays blocked on this thread across the clone, so no
    // handler of the agent can run in the child on the shared memory
    // before the child has reset the dispositions.
    let old_mask = block_all_signals();
    // SAFETY: the child runs `child_main` on `stack`, which outlives the
    // call (the parent is suspended until the child exec'd or exited), with
    // `ctx`, whose pointers all point into memory this frame keeps alive
    // (`program`, `argv`, `envp`, `setup`). `pidfd` receives the pidfd
    // (CLONE_PIDFD stores it through the parent-tid argument).
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut c_void,
            flags,
            std::ptr::from_ref(&ctx).cast_mut().cast(),
            &raw mut pidfd,
        )
    };
    let clone_error = std::io::Error::last_os_error();
    restore_signals(&old_mask);
    drop((stdin, stdout_w, stderr_w));
    if pid < 0 {
        return Err(clone_error);
    }
    // SAFETY: CLONE_PIDFD gave us this new descriptor, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
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
        if libc::pthread_sigmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut()) != 0 {
            return errno();
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
    }
    errno()
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
#[derive(Debug)]
pub struct Process {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    /// Set once reaped: the pid may then belong to another process.
    status: Option<ExitStatus>,
}

impl Process {
    /// Registers `spawned`'s pidfd with the runtime, handing back its pipes
    /// as async readers. On failure the process is killed and reaped.
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
                kill_and_reap(pidfd);
                return Err(e);
            }
        };
        // From here a failure drops `process`, which kills and reaps it.
        let process = Process {
            pid,
            pidfd,
            status: None,
        };
        let out = pipe::Receiver::from_owned_fd(stdout)?;
        let err = pipe::Receiver::from_owned_fd(stderr)?;
        Ok((process, out, err))
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

impl Drop for Process {
    fn drop(&mut self) {
        // Never a zombie for the agent's lifetime: a process dropped
        // unreaped (its supervisor was cancelled) is killed and reaped.
        if self.status.is_none()
            && let Ok(dup) = self.pidfd.get_ref().try_clone()
        {
            kill_and_reap(dup);
        }
    }
}

/// SIGKILLs the process `pidfd` names and reaps it on a thread of its own
/// (the caller may be on the async runtime, where blocking is not allowed).
fn kill_and_reap(pidfd: OwnedFd) {
    // SAFETY: `pidfd` is open; a pidfd never names another process than
    // its own, so this cannot hit a recycled pid.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
    std::thread::spawn(move || wait_blocking(&pidfd));
}
