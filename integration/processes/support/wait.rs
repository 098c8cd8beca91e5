//! Waiting on events of processes: a process's exit through its pidfd
//! (readable once it has exited, whoever its parent is), a line a task
//! writes into a FIFO the test reads, and a condition on a file that tasks
//! write (looked at again on each inotify notice of a write in its
//! directory). Nothing here sleeps or polls on a timer: each wait blocks on
//! the kernel's notice of the event, bounded by a failure guard that only
//! stops a hang.
//!
//! Owns the unsafe calls the harness makes (`pidfd_open`, `poll`, the
//! registration of a pidfd with tokio); the rest of the harness waits
//! through these functions. The node agent's tests include this same file
//! (`node-agent/tests/common`), so each wait exists once.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::libc;
use tokio::io::AsyncBufReadExt;
use tokio::io::unix::AsyncFd;

/// A pidfd of `pid`; `None` when no such process exists any more.
pub fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ESRCH),
            "pidfd_open({pid}): {err}"
        );
        return None;
    }
    let fd = i32::try_from(fd).expect("a descriptor fits an i32");
    // SAFETY: `fd` was just returned by pidfd_open and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks until the process behind `fd` has exited or `within` has passed;
/// true when it exited. The wait is `poll(2)` on the pidfd, which becomes
/// readable when the process ends.
pub fn exited_within(fd: &OwnedFd, within: Duration) -> bool {
    readable_within(fd.as_raw_fd(), within)
}

/// Blocks until `fd` is readable or `within` has passed; true when it is.
fn readable_within(fd: std::os::fd::RawFd, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        let mut entry = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid, initialised pollfd, and its count.
        let ready = unsafe { libc::poll(&mut entry, 1, ms) };
        match ready {
            1.. => return true,
            0 => return false,
            _ => {
                let err = std::io::Error::last_os_error();
                assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "poll: {err}");
            }
        }
    }
}

/// Waits until process `pid` (any process, not only a child of the test)
/// has exited; true when it did within `guard`. A process already gone
/// counts as exited; a zombie too (it has exited, its parent has not
/// reaped it yet).
pub async fn process_exit(pid: i32, guard: Duration) -> bool {
    let Some(fd) = pidfd(pid) else {
        return true;
    };
    pidfd_exit(fd, guard).await
}

/// Waits until the process behind pidfd `fd` has exited; true when it did
/// within `guard`. For a caller that opened the pidfd itself (to check,
/// before waiting, that the pid is still the process it means).
pub async fn pidfd_exit(fd: OwnedFd, guard: Duration) -> bool {
    // SAFETY: the AsyncFd owns the pidfd; nothing replaces or closes it
    // while registered.
    let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .expect("register a pidfd");
    tokio::time::timeout(guard, fd.readable()).await.is_ok()
}

/// A FIFO `name` in `dir` that a task can open whatever user it runs as
/// (a root agent runs tasks as `nobody`): the directory becomes searchable
/// and the FIFO readable and writable by all.
pub fn task_fifo(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let fifo = dir.join(name);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", fifo.display()));
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .unwrap_or_else(|e| panic!("open {} to tasks: {e}", dir.display()));
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666))
        .unwrap_or_else(|e| panic!("open {} to tasks: {e}", fifo.display()));
    fifo
}

/// The first line a task writes into the FIFO at `path` (without its
/// newline). The FIFO is opened for reading and writing, so it never reads
/// as ended before a task has opened it; the wait is the read itself.
pub async fn fifo_line(path: &Path, guard: Duration) -> String {
    let receiver = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut line = String::new();
    tokio::time::timeout(
        guard,
        tokio::io::BufReader::new(receiver).read_line(&mut line),
    )
    .await
    .unwrap_or_else(|_| panic!("no line in {} within {guard:?}", path.display()))
    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    line.trim_end_matches('\n').to_string()
}

/// Writes the kernel reports in one directory (inotify): a file written,
/// closed after writing, created, or renamed into it. Set up before the
/// first look at what the writes change, so no write falls in between.
pub struct DirWrites {
    inotify: AsyncFd<Watch>,
    dir: PathBuf,
}

/// An inotify instance as tokio registers it (by its raw descriptor).
struct Watch(nix::sys::inotify::Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWrites {
    /// Starts watching `dir`, which must exist.
    pub fn watch(dir: &Path) -> DirWrites {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .unwrap_or_else(|e| panic!("inotify: {e}"));
        inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO,
            )
            .unwrap_or_else(|e| panic!("watch {}: {e}", dir.display()));
        // SAFETY: the AsyncFd owns the inotify instance; nothing replaces
        // or closes its descriptor while registered.
        let inotify = unsafe {
            AsyncFd::register_with_interest(Watch(inotify), tokio::io::Interest::READABLE)
        }
        .unwrap_or_else(|e| panic!("register inotify: {e}"));
        DirWrites {
            inotify,
            dir: dir.to_path_buf(),
        }
    }

    /// Waits for the next write (or several, if they came together) since
    /// the last call; `false` when none came before `deadline`.
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> bool {
        loop {
            let Ok(ready) = tokio::time::timeout_at(deadline, self.inotify.readable()).await else {
                return false;
            };
            let mut guard = ready.unwrap_or_else(|e| panic!("inotify {}: {e}", self.dir.display()));
            // Drained: the next wait is for writes after this one.
            match guard.get_inner().0.read_events() {
                Ok(events) if !events.is_empty() => return true,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => panic!("inotify read {}: {e}", self.dir.display()),
            }
        }
    }
}

/// Looks at `check` until it gives a value, again after every write, file
/// creation or rename the kernel reports in the directory of `path` (which
/// may not exist yet); panics after `guard`, naming `what`.
pub async fn file_until<T>(
    path: &Path,
    what: &str,
    guard: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut writes = DirWrites::watch(dir);
    let deadline = tokio::time::Instant::now() + guard;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(writes.next(deadline).await, "{what}: not within {guard:?}");
    }
}
