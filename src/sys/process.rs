//! Processes and locks: signals, waiting for a process to end (pidfd: woken by the kernel,
//! not by polling /proc), and the advisory lock that keeps two cnet commands apart.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// An exclusive advisory lock on `path` (a file or a directory), held for the life of the
/// returned handle; if another holder has it, calls `on_wait` and waits.
pub fn lock_file(path: &Path, on_wait: impl FnOnce()) -> Result<Flock<File>> {
    let f = File::open(path).with_context(|| format!("cannot open {} to lock it", path.display()))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((f, Errno::EWOULDBLOCK)) => {
            on_wait();
            Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| e).with_context(|| format!("cannot lock {}", path.display()))
        }
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Whether another process holds the lock [`lock_file`] takes on `path` (a cnet command
/// that changes the machine is running).
pub fn is_locked(path: &Path) -> bool {
    let Ok(f) = File::open(path) else { return false };
    matches!(Flock::lock(f, FlockArg::LockSharedNonblock), Err((_, Errno::EWOULDBLOCK)))
}

/// Run `f` in a child process of its own, detached: a new session, stdio on /dev/null (so
/// that whoever reads this process's output does not wait for the child), ended with
/// `_exit` when `f` returns. The caller returns at once. The caller must be
/// single-threaded (checked): a forked copy of a multi-threaded process may hold locks
/// whose owners no longer exist. What `f` owns is the child's: the parent's copy is
/// forgotten, not dropped (dropping a moved-in `Flock` would unlock the child's lock, which
/// is the same open file).
pub fn fork_detached(f: impl FnOnce()) -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    if threads != 1 {
        anyhow::bail!("cannot fork a detached child from a process with {threads} threads");
    }
    // SAFETY: the process has one thread (checked above), so the child's copy of every lock
    // and allocator is consistent; the child leaves only through _exit.
    match unsafe { nix::unistd::fork() }.context("cannot fork")? {
        nix::unistd::ForkResult::Parent { .. } => {
            // Its descriptors close when this process exits; no destructor runs here.
            std::mem::forget(f);
            Ok(())
        }
        nix::unistd::ForkResult::Child => {
            let _ = nix::unistd::setsid();
            if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                let _ = nix::unistd::dup2_stdin(&null);
                let _ = nix::unistd::dup2_stdout(&null);
                let _ = nix::unistd::dup2_stderr(&null);
            }
            f();
            // SAFETY: ends the child at once, without running the parent's exit handlers a
            // second time.
            unsafe { libc::_exit(0) }
        }
    }
}

/// Send `sig` to `pid`; false if it is already gone.
pub fn signal(pid: u32, sig: Signal) -> bool {
    kill(Pid::from_raw(pid as i32), sig).is_ok()
}

/// A process to wait for: its pidfd, which becomes readable when it exits.
pub struct PidFd(OwnedFd);

impl PidFd {
    /// None if the process is already gone.
    pub fn open(pid: u32) -> io::Result<Option<PidFd>> {
        // SAFETY: pidfd_open(2) with a plain pid and no flags; a non-negative result is a new
        // descriptor that we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ESRCH) { Ok(None) } else { Err(e) };
        }
        // SAFETY: as above.
        Ok(Some(PidFd(unsafe { OwnedFd::from_raw_fd(fd as i32) })))
    }

    /// Wait up to `timeout` for the process to end (a zombie counts as ended): true if it did.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let [done] = super::poll_readable([self.0.as_raw_fd()], timeout.as_millis().min(i32::MAX as u128) as i32)?;
        Ok(done)
    }
}
