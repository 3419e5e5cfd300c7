//! Starting `cnet tunnel` in the background for stage 4 (in the node's namespaces, as the
//! node runner runs there), with its log, counters and pid under /run/cnet.

use std::fs;
use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::apply::state::run_dir;
use crate::model::topology::Ipv4Net;
use crate::model::wire::WireFormat;

pub fn stats_path() -> PathBuf {
    run_dir().join("tunnel.json")
}
pub fn log_path() -> PathBuf {
    run_dir().join("tunnel.log")
}
/// Written the moment the process exists, so that a `down` after an interrupted `up` finds
/// it even if the step was never recorded.
pub fn pid_path() -> PathBuf {
    run_dir().join("tunnel.pid")
}

/// How long a starting tunnel may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// Start the tunnel and wait until it is ready (device attached, socket bound), over a
/// socket pair that is its stdin (see tunnel::handshake). On failure the process is stopped
/// again. The wait is async so that a Ctrl-C during it is seen at once; if `up` is
/// cancelled here, the process is stopped as well.
///
/// The order is what makes an orphan impossible: spawn, record the pid, and only then let
/// the tunnel start. Killed before the pid is recorded, this process closes its end of the
/// pair and the tunnel, still waiting for the go-ahead, exits without having bound or
/// attached anything; killed after, `down` finds the pid.
pub async fn start(dev: &str, local: SocketAddrV4, peers: &[(SocketAddrV4, Ipv4Net)], wire: WireFormat) -> Result<u32> {
    let log = fs::File::create(log_path()).context("cannot create the tunnel's log")?;
    let stats = stats_path();
    let _ = fs::remove_file(&stats);
    let (ours, theirs) = UnixStream::pair().context("cannot create the tunnel's handshake socket")?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("tunnel").arg("--dev").arg(dev).arg("--local").arg(local.to_string());
    for (addr, net) in peers {
        cmd.arg("--peer").arg(format!("{addr}={net}"));
    }
    cmd.arg("--stats").arg(&stats).arg("--handshake");
    // Only when not the default, so that the command line reads as `explain` prints it.
    if wire != WireFormat::Raw {
        cmd.arg("--wire").arg(wire.name());
    }
    // Test and comparison hook: force the plain path, as on a kernel without TUN offloads.
    if std::env::var_os("CNET_TUNNEL_NO_OFFLOAD").is_some() {
        cmd.arg("--no-offload");
    }
    cmd.stdin(Stdio::from(OwnedFd::from(theirs))).stdout(log.try_clone()?).stderr(log);
    // Its own process group: a Ctrl-C at the terminal that ran `up` must not stop it.
    cmd.process_group(0);
    // Until it is ready, the tunnel is stopped if anything goes wrong here or `up` is
    // cancelled during the wait (Ctrl-C): nothing may be left running that `up` did not hand
    // over to its record.
    let mut child = StopUnlessReady(Some(cmd.spawn().context("cannot start the tunnel process")?));
    let pid = child.id();
    fs::write(pid_path(), pid.to_string()).context("cannot record the tunnel's pid")?;
    let mut ours = tokio::net::UnixStream::from_std({
        ours.set_nonblocking(true)?;
        ours
    })?;
    ours.write_all(GO).await.context("cannot tell the tunnel to start")?;
    let mut said = [0u8; READY.len()];
    let answer = tokio::time::timeout(READY_WITHIN, ours.read_exact(&mut said)).await;
    // "ready", or the end of the stream: the tunnel exited (failed) before saying it.
    match answer {
        Ok(Ok(_)) if said == READY => {
            child.0 = None;
            Ok(pid)
        }
        Ok(_) => {
            let status = child.wait()?;
            let log = fs::read_to_string(log_path()).unwrap_or_default();
            let last = log.lines().last().unwrap_or("no output").to_string();
            Err(anyhow!("the tunnel exited at start ({status}): {last}"))
        }
        Err(_) => Err(anyhow!("the tunnel did not start within {} s (see {})", READY_WITHIN.as_secs(), log_path().display())),
    }
}

use crate::tunnel::handshake::{GO, READY};

/// A starting tunnel process, killed and reaped on drop unless taken out (ready).
struct StopUnlessReady(Option<std::process::Child>);

impl StopUnlessReady {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self.0.take() {
            Some(mut c) => c.wait(),
            None => Err(std::io::Error::other("no process")),
        }
    }
}

impl Drop for StopUnlessReady {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The tunnel's pid as recorded at start, if any.
pub fn recorded_pid() -> Option<u32> {
    fs::read_to_string(pid_path()).ok()?.trim().parse().ok()
}

/// Remove the tunnel's files once it has stopped, and the demo servers' logs.
pub fn remove_files() -> Result<()> {
    for f in [stats_path(), log_path(), pid_path()] {
        crate::apply::state::remove_if_exists(&f)?;
    }
    if let Ok(dir) = fs::read_dir(run_dir()) {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with("serve-") {
                crate::apply::state::remove_if_exists(&e.path())?;
            }
        }
    }
    Ok(())
}

/// Start cnet's demo HTTP server (`cnet serve`) in the network namespace at `netns` (or
/// here), and wait until it listens. It lives in that namespace: `down` stops what runs in a
/// container's namespace before deleting it, and a member's with the member.
pub fn start_server(netns: Option<&std::path::Path>, name: &str, listen: SocketAddrV4) -> Result<u32> {
    let log = fs::File::create(run_dir().join(format!("serve-{name}.log"))).context("cannot create the server's log")?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["serve", "--name", name, "--listen", &listen.to_string()]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    // Its own process group: a Ctrl-C at the terminal that ran `up` must not stop it.
    cmd.process_group(0);
    if let Some(ns) = netns {
        crate::sys::ns::enter_netns(&mut cmd, ns)?;
    }
    let mut child = cmd.spawn().context("cannot start the demo server")?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    // "ready" once it listens; a thread reads it so that the wait can be bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(READY_WITHIN) {
        Ok(line) if line.trim() == "ready" => Ok(pid),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            let said = fs::read_to_string(run_dir().join(format!("serve-{name}.log"))).unwrap_or_default();
            Err(anyhow!("the demo server {name} did not start: {}", said.lines().last().unwrap_or("no output")))
        }
    }
}
