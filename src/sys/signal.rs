//! SIGINT/SIGTERM to a stop flag, for the capture loop, with the previous handlers put back
//! when the last guard is dropped.
//!
//! The handler only stores to an atomic (async-signal-safe). It is installed without
//! `SA_RESTART`, so a blocked `poll` in the capturing thread returns `EINTR` at once; any
//! other thread that takes the signal still sets the flag, and the capture loop notices it
//! within one poll interval.

use std::io;
use std::mem;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

struct Installed {
    users: usize,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

// SAFETY-relevant note: `libc::sigaction` holds a handler address and flags only.
static STATE: Mutex<Installed> = Mutex::new(Installed { users: 0, previous: Vec::new() });

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The flag the handler sets.
pub fn stop_flag() -> &'static AtomicBool {
    &STOP
}

/// While alive, SIGINT and SIGTERM set [`stop_flag`] instead of killing the process.
pub struct StopSignals(());

/// Installs the handlers (the first guard clears the flag) and returns the guard.
pub fn catch_stop_signals() -> io::Result<StopSignals> {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if st.users == 0 {
        STOP.store(false, Ordering::SeqCst);
        // SAFETY: sigaction is plain old data; an empty mask and a handler that only
        // touches an atomic are valid for any signal.
        let mut act: libc::sigaction = unsafe { mem::zeroed() };
        act.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
        act.sa_flags = 0; // no SA_RESTART: interrupt poll()
        // SAFETY: sa_mask is a live sigset_t inside `act`.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        let mut previous = Vec::new();
        for sig in SIGNALS {
            // SAFETY: as above: plain old data, filled by the kernel below.
            let mut old: libc::sigaction = unsafe { mem::zeroed() };
            // SAFETY: valid signal number, valid pointers.
            if unsafe { libc::sigaction(sig, &act, &mut old) } != 0 {
                let e = io::Error::last_os_error();
                restore(&previous);
                return Err(e);
            }
            previous.push((sig, old));
        }
        st.previous = previous;
    }
    st.users += 1;
    Ok(StopSignals(()))
}

fn restore(previous: &[(libc::c_int, libc::sigaction)]) {
    for (sig, old) in previous {
        // SAFETY: puts back exactly what sigaction() returned for this signal.
        unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
        st.users -= 1;
        if st.users == 0 {
            let previous = mem::take(&mut st.previous);
            restore(&previous);
        }
    }
}

/// Let a write to a closed pipe end the process quietly (`cnet test | head`), as command-line
/// tools do, instead of the Rust runtime's default of ignoring SIGPIPE and panicking in
/// `println!`.
pub fn default_sigpipe() {
    // SAFETY: resetting one signal's disposition to its default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
