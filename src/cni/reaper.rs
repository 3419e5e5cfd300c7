//! Deleting a DEL's veth pair without making the runtime wait for the kernel.
//!
//! Unregistering a network device ends in an RCU barrier: 15-25 ms here for one veth,
//! whatever else is done, in the deleting process's own system call. DEL therefore moves
//! the node's end into the [`DYING_GROUP`] (one cheap request: it leaves cnet's group;
//! nothing new will use it, its address is released already) and returns; a reaper, a
//! child forked off and detached (a session of its own, stdio on /dev/null, so that the
//! runtime reading DEL's output does not wait for it), deletes the whole group in one
//! request, so DELs that come together share one barrier. The veth's other end, in the
//! container, goes with it.
//!
//! Two locks keep one reaper per burst and never lose a link: `reaper.pending` is held
//! from a reaper's start until it is about to delete, `reaper.active` while it deletes.
//! A DEL that finds `pending` free takes it and starts a reaper (which inherits it); one
//! that finds it held knows that a reaper has yet to delete, and will take its link too.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::apply::netlink::Netlink;

/// The group a released veth waits in for the reaper ("cnxx": cnet, to be deleted).
pub const DYING_GROUP: u32 = 0x636e_7878;

fn lock_path(which: &str) -> PathBuf {
    super::ipam::cni_dir().join(format!("reaper.{which}"))
}

fn open_lock(which: &str) -> Result<File> {
    let p = lock_path(which);
    OpenOptions::new().create(true).truncate(false).write(true).open(&p).with_context(|| format!("cannot open {}", p.display()))
}

/// After a link was moved into the dying group: make sure a reaper will delete it. The
/// caller must be single-threaded (the reaper is forked).
pub fn kick() -> Result<()> {
    let pending = match Flock::lock(open_lock("pending")?, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        // A reaper has not started deleting yet: it takes this link too.
        Err((_, Errno::EWOULDBLOCK)) => return Ok(()),
        Err((_, e)) => return Err(e).context("cannot lock the reaper"),
    };
    crate::sys::process::fork_detached(move || {
        let _ = reap(pending);
    })
    .context("cannot start the reaper")?;
    // `pending` was moved into the closure, which runs only in the child: fork_detached
    // forgets the parent's copy (its Drop would unlock the child's lock, the same open
    // file), and the descriptor closes with this process, unlocking nothing. The child
    // holds the lock until it is about to delete.
    Ok(())
}

/// In the reaper: wait for an earlier reaper to finish, give up `pending` (links moved from
/// now on need another reaper), delete the dying group.
fn reap(pending: Flock<File>) -> Result<()> {
    let active =
        Flock::lock(open_lock("active")?, FlockArg::LockExclusive).map_err(|(_, e)| e).context("cannot lock the reaper")?;
    drop(pending);
    // On a thread of its own: the parent may have forked from inside its async runtime, whose
    // thread-local state this thread inherited (a runtime cannot be started from within one).
    let r = std::thread::spawn(|| -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async { Netlink::here(std::path::Path::new("/run/netns"))?.del_group(DYING_GROUP).await })
    })
    .join()
    .unwrap_or_else(|_| Err(anyhow::anyhow!("the reaper's thread panicked")));
    drop(active);
    r
}

/// Whether a reaper is waiting or deleting.
pub fn busy() -> bool {
    ["pending", "active"].iter().any(|w| crate::sys::process::is_locked(&lock_path(w)))
}

/// Wait (up to `limit`) until no reaper is waiting or deleting: for an ADD whose names are
/// still held by a pair being deleted.
pub fn wait_idle(limit: Duration) {
    let until = Instant::now() + limit;
    while busy() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
}
