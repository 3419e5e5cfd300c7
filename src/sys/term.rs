//! SIGTERM/SIGINT (and SIGUSR1) handling without async signal handlers: the signals are blocked in the
//! calling thread (and so in every thread it spawns afterwards), and the main thread
//! collects them synchronously with sigtimedwait while it also writes stats once a second.

use std::io;
use std::time::Duration;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

/// Blocks SIGTERM and SIGINT while alive; restores the previous mask on drop.
pub struct TermSignals {
    set: SigSet,
    old: SigSet,
}

impl TermSignals {
    pub fn block() -> io::Result<TermSignals> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        // Not a stop: "write your counters now" (`cnet status` wants them fresh).
        set.add(Signal::SIGUSR1);
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).map_err(io::Error::from)?;
        Ok(TermSignals { set, old })
    }

    /// Wait up to `timeout` for SIGTERM/SIGINT; returns the signal number if one arrived.
    pub fn wait(&self, timeout: Duration) -> io::Result<Option<i32>> {
        let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
        let raw: &libc::sigset_t = self.set.as_ref();
        // SAFETY: raw and ts are live for the call; a null siginfo pointer is allowed.
        let ret = unsafe { libc::sigtimedwait(raw, std::ptr::null_mut(), &ts) };
        if ret >= 0 {
            return Ok(Some(ret));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(err),
        }
    }
}

impl Drop for TermSignals {
    fn drop(&mut self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}
