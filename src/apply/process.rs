//! Processes cnet starts or must stop: identity checks, a bounded stop, and finding what
//! runs inside a namespace. (Signals and waits themselves go through `sys::process`.)

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

use nix::sys::signal::Signal;

use crate::sys::ns;
use crate::sys::process::{PidFd, signal};

/// Whether `pid` is still a cnet process whose command line has every one of `words` as an
/// argument (guards against a recorded pid that the kernel has since given to another
/// program, or to another node's cnet).
pub fn is_cnet_process(pid: u32, words: &[&str]) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let exe_is_cnet = fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cnet")))
        .unwrap_or(false);
    exe_is_cnet && words.iter().all(|w| cmdline.split(|b| *b == 0).any(|a| a == w.as_bytes()))
}

/// The tunnels `cnet up` started in this network namespace, found by their marks alone:
/// cnet's binary, `tunnel` with `--stats` at cnet's own counters file, and this very network
/// namespace (lab nodes share a PID namespace but not a network one). A `cnet tunnel` a user
/// runs by hand does not write there, and is left alone.
pub fn cnet_tunnels_here() -> Vec<u32> {
    let stats = crate::apply::launch::stats_path();
    let stats = stats.to_string_lossy();
    let here = ns::ns_id(Path::new("/proc/self/ns/net"));
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| here.is_some() && ns::ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == here)
        .filter(|pid| {
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&b"tunnel".as_slice())
                && args.windows(2).any(|w| w[0] == b"--stats" && w[1] == stats.as_bytes())
                && is_cnet_process(*pid, &["tunnel"])
        })
        .collect()
}

/// cnet processes in this network namespace whose command line has every one of `words`.
pub fn cnet_processes_with(words: &[&str]) -> Vec<u32> {
    let here = ns::ns_id(Path::new("/proc/self/ns/net"));
    cnet_processes_anywhere(words)
        .into_iter()
        .filter(|pid| ns::ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == here)
        .collect()
}

/// cnet processes, in any namespace this one can see, whose command line has every one of
/// `words`.
pub fn cnet_processes_anywhere(words: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && is_cnet_process(*pid, words))
        .collect()
}

/// SIGTERM; after 2 s SIGKILL; an error if it is still there 3 s after that (stuck in the
/// kernel), so that `down` reports it instead of hanging. The kernel wakes us when it exits
/// (pidfd), no polling.
pub fn stop_process(pid: u32) -> Result<()> {
    let Some(pidfd) = PidFd::open(pid)? else { return Ok(()) };
    if !signal(pid, Signal::SIGTERM) {
        return Ok(());
    }
    if pidfd.wait(Duration::from_secs(2))? {
        return Ok(());
    }
    signal(pid, Signal::SIGKILL);
    if pidfd.wait(Duration::from_secs(3))? {
        return Ok(());
    }
    bail!("process {pid} did not stop within 3 s of SIGKILL")
}

/// Which processes are in which namespace of one kind ("net", "mnt"): one pass over /proc,
/// then any number of lookups (a `down` with 1000 namespaces must not read /proc 1000 times).
pub struct Members {
    kind: &'static str,
    by_ns: HashMap<(u64, u64), Vec<u32>>,
    /// The namespaces cnet itself and the machine's init run in: never emptied.
    own: [Option<(u64, u64)>; 2],
}

impl Members {
    pub fn scan(kind: &'static str) -> Members {
        let me = std::process::id();
        let mut by_ns: HashMap<(u64, u64), Vec<u32>> = HashMap::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter(|pid| *pid != me) {
                if let Some(id) = ns::ns_id(Path::new(&format!("/proc/{pid}/ns/{kind}"))) {
                    by_ns.entry(id).or_default().push(pid);
                }
            }
        }
        let own = [format!("/proc/self/ns/{kind}"), format!("/proc/1/ns/{kind}")].map(|p| ns::ns_id(Path::new(&p)));
        Members { kind, by_ns, own }
    }

    /// Processes whose namespace is the one persisted at `ns_file` — never the namespace
    /// cnet itself or the machine's init runs in, whatever the file says.
    pub fn of(&self, ns_file: &Path) -> Vec<u32> {
        let Some(want) = ns::ns_id(ns_file) else { return Vec::new() };
        if self.own.contains(&Some(want)) {
            tracing::warn!("{} is this machine's own {} namespace: no process is stopped", ns_file.display(), self.kind);
            return Vec::new();
        }
        self.by_ns.get(&want).cloned().unwrap_or_default()
    }
}
