//! Namespaces: create, persist, enter, delete. The only place that calls unshare/setns/mount.
//!
//! Why threads: a network namespace can be entered per thread, so a short-lived thread
//! unshares (or setns) and opens whatever socket it needs there; the socket stays bound to
//! that namespace after the thread is gone. A mount namespace can only be entered by a
//! single-threaded process, so lab nodes are entered from a freshly forked child
//! (`Command::pre_exec`), never from the async runtime.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Run `f` on a fresh thread that has entered the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = File::open(netns).with_context(|| format!("cannot open network namespace {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter network namespace {}", netns.display()))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a namespace thread panicked"))?
    })
}

/// Run `f` on the calling thread inside the network namespace at `netns`, and come back:
/// no thread to start and join (on a busy machine that alone cost milliseconds). For short
/// synchronous work such as opening a socket there (which stays bound to that namespace).
/// A network namespace, unlike a mount namespace, may be entered by one thread of many.
pub fn in_netns_here<T>(netns: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let target = File::open(netns).with_context(|| format!("cannot open network namespace {}", netns.display()))?;
    let home = File::open("/proc/thread-self/ns/net").context("cannot open this thread's network namespace")?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("cannot enter network namespace {}", netns.display()))?;
    let r = f();
    if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
        // Going on in the wrong namespace would build in it: stop here.
        panic!("cannot return to this thread's network namespace after entering {}: {e}", netns.display());
    }
    r
}

/// Create a new network namespace persisted at `path` (as `ip netns add` does), and run `f`
/// inside it before returning. Fails with EEXIST if `path` already exists.
pub fn create_netns<T: Send>(path: &Path, f: impl Fn() -> Result<T> + Sync) -> Result<T> {
    create_netns_many(&[path.to_path_buf()], 1, f).pop().expect("one result per path")
}

/// `create_netns` for many paths, on `workers` fresh threads that each create their share
/// one after another: unsharing again from inside a new namespace just makes the next one,
/// so a thread serves many (a thread per namespace cost a spawn each). One result per
/// path, in order.
pub fn create_netns_many<T: Send>(paths: &[PathBuf], workers: usize, f: impl Fn() -> Result<T> + Sync) -> Vec<Result<T>> {
    let chunk = paths.len().div_ceil(workers.max(1)).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let jobs: Vec<_> = paths
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|p| new_netns_here(p, f)).collect::<Vec<_>>()))
            .collect();
        jobs.into_iter()
            .zip(paths.chunks(chunk))
            .flat_map(|(j, part)| {
                j.join().unwrap_or_else(|_| part.iter().map(|_| Err(anyhow::anyhow!("a namespace thread panicked"))).collect())
            })
            .collect()
    })
}

/// Unshare the calling thread into a new network namespace, bind it to `path`, run `f`
/// there. Only for threads made for this (create_netns_many's).
fn new_netns_here<T>(path: &Path, f: &impl Fn() -> Result<T>) -> Result<T> {
    // The file the namespace is bound onto; O_EXCL makes an existing name a conflict.
    OpenOptions::new().write(true).create_new(true).mode(0o444).open(path)?;
    let made = (|| -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(Some("/proc/thread-self/ns/net"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        Ok(())
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    f()
}

/// Remove a persisted namespace file (any kind): unmount, then unlink. Already gone is fine.
pub fn delete_ns_file(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot unmount {}", path.display())),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// The namespace identity of a persisted file or /proc/PID/ns/X (device, inode).
pub fn ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Make `dir` a mount point of its own with the given propagation, as iproute2 does for
/// /run/netns (shared, so namespaces added later are seen by other mount namespaces) and as
/// `unshare --mount=FILE` needs for a mount namespace file's directory (private).
/// Returns true if it had to make the mount (so that whoever made it can undo it).
pub fn ensure_mount_dir(dir: &Path, shared: bool) -> Result<bool> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let prop = if shared { MsFlags::MS_SHARED } else { MsFlags::MS_PRIVATE };
    let set_propagation = || mount(None::<&str>, dir, None::<&str>, prop | MsFlags::MS_REC, None::<&str>);
    // As iproute2 does: setting the propagation fails with EINVAL unless `dir` is a mount
    // point, and only then is the bind mount needed.
    match set_propagation() {
        Ok(()) => return Ok(false),
        Err(Errno::EINVAL) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot set mount propagation of {}", dir.display())),
    }
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("cannot bind-mount {} onto itself", dir.display()))?;
    set_propagation().with_context(|| format!("cannot set mount propagation of {}", dir.display()))?;
    Ok(true)
}

/// Whether `dir` is a bind mount of itself (what [`ensure_mount_dir`] makes), read from
/// /proc/self/mountinfo: its top mount's root is a sub-directory named as `dir` is, not the
/// root of a file system of its own (a tmpfs, say, whose root is "/").
pub fn is_bound_onto_itself(dir: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let Some(name) = dir.file_name() else { return false };
    let top = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4).map(Path::new) == Some(dir)).then(|| f.get(3).copied()).flatten()
        })
        .next_back();
    top.is_some_and(|root| root != "/" && Path::new(root).file_name() == Some(name))
}

/// Undo [`ensure_mount_dir`]'s bind mount.
pub fn unmount_dir(dir: &Path) -> Result<()> {
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot unmount {}", dir.display())),
    }
}

/// Bind `/proc/PID/ns/KIND` onto `dest` so the namespace outlives the process.
pub fn persist_ns(pid: u32, kind: &str, dest: &Path) -> Result<()> {
    File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let src = format!("/proc/{pid}/ns/{kind}");
    mount(Some(src.as_str()), dest, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("cannot bind {src} onto {}", dest.display()))
}

/// Set up `cmd` so that, in the forked child before exec, it unshares new mount, network
/// and UTS namespaces and becomes a fresh VM-like node: private mounts, its own empty
/// /run/netns and /run/cnet (tmpfs), its own /sys (so that /sys/class/net lists the node's
/// interfaces, as on a VM), and `hostname`.
///
/// `cpu` pins the child to one CPU first. Why: a mount namespace file can only be bound into
/// an older mount namespace, and the kernel compares namespace ids that it hands out in
/// per-CPU batches, so a node made on another CPU than the caller's own mount namespace
/// can look "older" and the bind fails with EINVAL. Retrying on each CPU finds one whose
/// ids are newer (seen with parallel sandboxes on kernel 6.18).
///
/// `etc` are files bound over the node's own copies (`/etc/hosts`, `/etc/resolv.conf`):
/// a VM resolves its own name locally, and a lab node cannot reach the machine's DNS
/// server. Each is bound only where the target exists.
pub fn as_new_node(cmd: &mut Command, hostname: &str, cpu: Option<usize>, etc: &[(PathBuf, &str)]) -> Result<()> {
    let host = CString::new(hostname)?;
    let etc: Vec<(CString, CString)> = etc
        .iter()
        .filter(|(_, dst)| Path::new(dst).exists())
        .map(|(src, dst)| Ok((CString::new(src.as_os_str().as_encoded_bytes())?, CString::new(*dst)?)))
        .collect::<Result<_>>()?;
    let netns = CString::new("/run/netns")?;
    let run = CString::new("/run/cnet")?;
    let tmpfs = CString::new("tmpfs")?;
    let sys = CString::new("/sys")?;
    let sysfs = CString::new("sysfs")?;
    let root = CString::new("/")?;
    let mode = CString::new("mode=755")?;
    // SAFETY: the closure runs in the forked child and calls only async-signal-safe syscalls
    // on data prepared above; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(cpu) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let flags = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS;
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Nothing mounted inside the node may propagate back to the host.
            if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
                != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Before /run/cnet is replaced below: the sources live under it.
            for (src, dst) in &etc {
                if libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Drop the copies of the host's namespace mounts (they would keep the host's
            // namespaces alive), then give the node its own empty directories.
            for dir in [&netns, &run] {
                while libc::umount2(dir.as_ptr(), libc::MNT_DETACH) == 0 {}
                if libc::mount(tmpfs.as_ptr(), dir.as_ptr(), tmpfs.as_ptr(), 0, mode.as_ptr() as *const libc::c_void) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // A sysfs mounted from inside the node's network namespace shows that namespace's
            // interfaces (what `ip netns exec` does for each command). Mounted over the host's
            // /sys; if the kernel refuses, the node still works and only /sys shows the host.
            let _ = libc::mount(
                sysfs.as_ptr(),
                sys.as_ptr(),
                sysfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            );
            if libc::sethostname(host.as_ptr(), host.as_bytes().len()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Whether `path` is a bound namespace file (on nsfs), not a leftover plain file.
pub fn is_ns_file(path: &Path) -> bool {
    const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);
    nix::sys::statfs::statfs(path).is_ok_and(|st| st.filesystem_type() == NSFS_MAGIC)
}

/// Whether `path` is what a namespace deletion cut short leaves: an empty regular file
/// with nothing bound on it.
pub fn is_dead_ns_file(path: &Path) -> bool {
    !is_ns_file(path) && fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0)
}

pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The CPUs this process may run on (a cpuset may allow only some).
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else { return Vec::new() };
    (0..nix::sched::CpuSet::count()).filter(|c| set.is_set(*c).unwrap_or(false)).collect()
}

/// Set up `cmd` to run in the network namespace persisted at `netns` (what `ip netns exec`
/// does for the network part).
pub fn enter_netns(cmd: &mut Command, netns: &Path) -> Result<()> {
    let fd: OwnedFd = File::open(netns).with_context(|| format!("cannot open network namespace {}", netns.display()))?.into();
    // SAFETY: in the forked child: only setns on a descriptor opened above.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The persisted namespaces of one lab node.
pub struct NodeNs {
    pub net: PathBuf,
    pub mnt: PathBuf,
    pub uts: PathBuf,
}

/// What a process started inside a lab node gets besides the node's namespaces.
#[derive(Default)]
pub struct Entry {
    /// Enter this container's network namespace too (a file under the node's /run/netns).
    pub container: Option<String>,
    /// Hand this descriptor to the child as fd [`REPORT_FD`] (its error report channel).
    pub report: Option<OwnedFd>,
    /// Kill the child if the process that started it dies (a killed `up` must not leave a
    /// node runner building on its own).
    pub die_with_parent: bool,
}

/// The descriptor a child started with [`Entry::report`] finds its report channel on.
pub const REPORT_FD: RawFd = 3;

/// Set up `cmd` to run inside a lab node (its network, UTS and mount namespaces), and as
/// `entry` says.
pub fn enter_node(cmd: &mut Command, node: &NodeNs, entry: Entry) -> Result<()> {
    let open = |p: &Path| File::open(p).with_context(|| format!("cannot open {} (is the lab up?)", p.display()));
    let net: OwnedFd = open(&node.net)?.into();
    let uts: OwnedFd = open(&node.uts)?.into();
    let mnt: OwnedFd = open(&node.mnt)?.into();
    let con = entry.container.map(|c| CString::new(format!("/run/netns/{c}"))).transpose()?;
    let root = CString::new("/")?;
    let report = entry.report;
    let die_with_parent = entry.die_with_parent;
    // This process, as the child will see its parent (compared after the prctl).
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: in the forked child: only prctl/getppid/setns/open/chdir/dup2/close on data
    // prepared above.
    unsafe {
        cmd.pre_exec(move || {
            if die_with_parent {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            for (fd, kind) in [(&net, libc::CLONE_NEWNET), (&uts, libc::CLONE_NEWUTS), (&mnt, libc::CLONE_NEWNS)] {
                if libc::setns(fd.as_raw_fd(), kind) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::chdir(root.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(con) = &con {
                let fd = libc::open(con.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let r = libc::setns(fd, libc::CLONE_NEWNET);
                libc::close(fd);
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // dup2 clears close-on-exec on the copy: the channel survives into the child.
            if let Some(fd) = &report
                && libc::dup2(fd.as_raw_fd(), REPORT_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The report channel a parent handed this process as fd `fd` (see [`Entry::report`]),
/// made close-on-exec at once so that nothing this process starts (the tunnel) inherits it
/// and keeps the parent waiting.
pub fn take_report_channel(fd: RawFd) -> io::Result<File> {
    // SAFETY: the parent put an open descriptor there for us alone (dup2 in enter_node);
    // we take sole ownership of it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(File::from(owned))
}

/// A route-netlink socket opened in the calling thread's network namespace. Handed to the
/// async runtime later with [`into_tokio_netlink`].
pub fn open_netlink() -> Result<OwnedFd> {
    let sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).context("cannot open a netlink socket")?;
    // SAFETY: into_raw_fd hands over sole ownership of a valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(sock.into_raw_fd()) })
}

/// Wrap a netlink socket for tokio. Must be called inside the runtime.
pub fn into_tokio_netlink(fd: OwnedFd) -> netlink_sys::TokioSocket {
    // SAFETY: `fd` is an owned netlink socket; ownership moves into the TokioSocket.
    unsafe { netlink_sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) }
}

/// Whether the caller may administer networks (CAP_NET_ADMIN and CAP_SYS_ADMIN in its
/// effective set), read from /proc so that it needs no extra crate.
pub fn has_admin_caps() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else { return false };
    let Some(hex) = status.lines().find_map(|l| l.strip_prefix("CapEff:")) else { return false };
    let caps = u64::from_str_radix(hex.trim(), 16).unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    caps & (1 << CAP_NET_ADMIN) != 0 && caps & (1 << CAP_SYS_ADMIN) != 0
}
