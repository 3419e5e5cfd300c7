//! The executor: applies one plan step to the kernel, and undoes finished steps.
//!
//! The `match` over [`Step`] is exhaustive on purpose: a new kind of step does not compile
//! until it can be applied here and undone in [`teardown`].

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::netlink::{link_view, Netlink, RouteSpec, ALIAS_PREFIX, CNET_GROUP};
use crate::plan::{NodePlan, Step};
use crate::state::{run_dir, Done};
use crate::sys::ns;

pub fn alias(stage: &str) -> String {
    format!("{ALIAS_PREFIX}{stage}")
}

pub fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

pub fn read_sysctl(key: &str) -> Result<String> {
    let p = sysctl_path(key);
    Ok(fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?.trim().to_string())
}

pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let p = sysctl_path(key);
    fs::write(&p, value).with_context(|| format!("cannot write {} = {value}", p.display()))
}

pub fn tunnel_stats_path() -> PathBuf {
    run_dir().join("tunnel.json")
}
pub fn tunnel_log_path() -> PathBuf {
    run_dir().join("tunnel.log")
}

/// Test hook: `CNET_FAIL_AT_STEP=N` makes step N (1-based) fail, to prove that a failed
/// `up` leaves nothing behind.
fn injected_failure(index: usize) -> Result<()> {
    if std::env::var("CNET_FAIL_AT_STEP").ok().and_then(|v| v.parse::<usize>().ok()) == Some(index + 1) {
        anyhow::bail!("failure injected by CNET_FAIL_AT_STEP");
    }
    Ok(())
}

/// How many requests of one batch are in flight at once: enough to hide round trips,
/// few enough that the kernel's acknowledgements never overflow the socket's buffer.
const IN_FLIGHT: usize = 64;

/// Apply a batch of independent steps (same `batch_key`) concurrently; one result per step,
/// in order.
pub async fn apply_batch(nl: &Netlink, steps: &[(usize, &Step)], stage: &str) -> Vec<Result<Done>> {
    use futures::StreamExt;
    if let Some((_, Step::AddNetns { .. })) = steps.first() {
        // Stop at an injected failure (test hook) as at a real one.
        let cut = steps.iter().position(|(i, _)| injected_failure(*i).is_err()).unwrap_or(steps.len());
        let names: Vec<&str> = steps[..cut].iter().filter_map(|(_, s)| match s { Step::AddNetns { name } => Some(name.as_str()), _ => None }).collect();
        let mut out: Vec<Result<Done>> = nl.add_netns_many(&names).into_iter().zip(steps)
            .map(|(r, (i, _))| r.map(|()| Done { step: *i, ..Default::default() }))
            .collect();
        if let Some((i, _)) = steps.get(cut) {
            out.push(injected_failure(*i).map(|()| Done::default()));
        }
        return out;
    }
    futures::stream::iter(steps.iter().map(|(i, s)| apply(nl, *i, s, stage))).buffered(IN_FLIGHT).collect().await
}

/// Apply one step; the returned record holds what undoing it needs.
pub async fn apply(nl: &Netlink, index: usize, step: &Step, stage: &str) -> Result<Done> {
    injected_failure(index)?;
    let mut done = Done { step: index, ..Default::default() };
    let tag = alias(stage);
    match step {
        Step::AddNetns { name } => nl.add_netns(name)?,
        Step::AddVeth { name, peer, peer_netns } => nl.add_veth(name, peer, peer_netns, &tag).await?,
        Step::AddBridge { name } => nl.add_bridge(name, &tag).await?,
        Step::AddTun { name } => {
            crate::tunnel::create_persistent_tun(name)?;
            nl.mark(name, &tag).await?;
        }
        Step::AddVxlan { name, vni, local, underlay, port } => nl.add_vxlan(name, *vni, *local, underlay, *port, &tag).await?,
        Step::SetMaster { dev, master } => nl.set_master(dev, master).await?,
        Step::SetMtu { dev, mtu } => nl.set_mtu(dev, *mtu).await?,
        Step::AddAddr { netns, dev, addr } => nl.add_addr(netns.as_deref(), dev, *addr).await?,
        Step::LinkUp { netns, dev } => nl.link_up(netns.as_deref(), dev).await?,
        Step::AddRoute { netns, dst, via, dev, onlink } => {
            nl.add_route(netns.as_deref(), &RouteSpec { dst: *dst, via: *via, dev: dev.clone(), onlink: *onlink }).await?
        }
        Step::AddFdb { dev, dst } => nl.add_fdb(dev, *dst).await?,
        Step::Sysctl { key, value } => {
            done.old = Some(read_sysctl(key)?);
            write_sysctl(key, value)?;
        }
        Step::StartTunnel { dev, local, peers } => done.pid = Some(start_tunnel(dev, *local, peers)?),
    }
    Ok(done)
}

/// Start `cnet tunnel` in the background, in this node's namespaces, logging to /run/cnet.
fn start_tunnel(dev: &str, local: std::net::SocketAddrV4, peers: &[(std::net::SocketAddrV4, crate::topology::Ipv4Net)]) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let log = fs::File::create(tunnel_log_path()).context("cannot create the tunnel's log")?;
    let stats = tunnel_stats_path();
    let _ = fs::remove_file(&stats);
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg("tunnel").arg("--dev").arg(dev).arg("--local").arg(local.to_string());
    for (addr, net) in peers {
        cmd.arg("--peer").arg(format!("{addr}={net}"));
    }
    cmd.arg("--stats").arg(&stats);
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Its own process group: a Ctrl-C at the terminal that ran `up` must not stop it.
    cmd.process_group(0);
    let mut child = cmd.spawn().context("cannot start the tunnel process")?;
    let pid = child.id();
    // Ready once it has written its first counters (device attached, socket bound).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(tunnel_log_path()).unwrap_or_default();
            let last = log.lines().last().unwrap_or("no output").to_string();
            return Err(anyhow!("the tunnel exited at start ({status}): {last}"));
        }
        if stats.exists() {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the tunnel did not start within 5 s (see {})", tunnel_log_path().display()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `pid` is still a cnet process whose command line contains `word`.
pub fn is_cnet_process(pid: u32, word: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let exe_is_cnet = fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cnet")))
        .unwrap_or(false);
    exe_is_cnet && args.iter().any(|a| *a == word.as_bytes())
}

/// SIGTERM, wait up to 2 s, then SIGKILL; returns once the process is gone.
pub fn stop_process(pid: u32) {
    if !ns::signal(pid, libc::SIGTERM) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        if Instant::now() > deadline {
            ns::signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Processes whose namespace of `kind` ("net", "mnt") is the one persisted at `ns_file`.
pub fn processes_in(ns_file: &Path, kind: &str) -> Vec<u32> {
    let Some(want) = ns::ns_id(ns_file) else { return Vec::new() };
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| ns::ns_id(Path::new(&format!("/proc/{pid}/ns/{kind}"))) == Some(want))
        .collect()
}

/// Undo finished steps, newest first, collecting errors rather than stopping at the first
/// (as CNI's DEL does): whatever is already gone counts as undone.
pub async fn teardown(nl: &Netlink, plan: &NodePlan, done: &[Done], stage: &str) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let steps: Vec<(&Step, &Done)> = done.iter().filter_map(|d| plan.steps.get(d.step).map(|s| (&s.step, d))).collect();
    let created: HashSet<&str> = steps.iter().filter_map(|(s, _)| s.created_link()).collect();

    // 1. Background processes first: the tunnel holds tun0.
    for (s, d) in steps.iter().rev() {
        if let (Step::StartTunnel { .. }, Some(pid)) = (s, d.pid) {
            if is_cnet_process(pid, "tunnel") {
                stop_process(pid);
            }
            for f in [tunnel_stats_path(), tunnel_log_path()] {
                if let Err(e) = crate::state::remove_if_exists(&f) {
                    errors.push(e);
                }
            }
        }
    }
    // 2. Routes on the node through devices cnet did not make (they would outlive `down`).
    for (s, _) in steps.iter().rev() {
        if let Step::AddRoute { netns: None, dst, via, dev, onlink } = s {
            if !created.contains(dev.as_str()) {
                let r = RouteSpec { dst: *dst, via: *via, dev: dev.clone(), onlink: *onlink };
                if let Err(e) = nl.del_route(None, &r).await {
                    if !crate::netlink::is_gone(&e) {
                        errors.push(e.context(format!("cannot delete the route {}", s.command())));
                    }
                }
            }
        }
    }
    // 3. Sysctls back to what they were, except on devices about to disappear.
    for (s, d) in steps.iter().rev() {
        if let (Step::Sysctl { key, .. }, Some(old)) = (s, &d.old) {
            let on_our_dev = created.iter().any(|dev| key.contains(&format!(".conf.{dev}.")));
            if !on_our_dev {
                if let Err(e) = write_sysctl(key, old) {
                    errors.push(e);
                }
            }
        }
    }
    // 4. Links: all of cnet's in one request when the group holds only cnet's links.
    if !created.is_empty() {
        if let Err(e) = delete_links(nl, &created, stage).await {
            errors.push(e);
        }
    }
    // 5. Container namespaces, after stopping what still runs in them.
    for (s, _) in steps.iter().rev() {
        if let Step::AddNetns { name } = s {
            let path = nl.netns_path(name);
            for pid in processes_in(&path, "net") {
                stop_process(pid);
            }
            if let Err(e) = nl.del_netns(name) {
                errors.push(e);
            }
        }
    }
    errors
}

async fn delete_links(nl: &Netlink, created: &HashSet<&str>, stage: &str) -> Result<()> {
    let links: Vec<_> = nl.links(None).await?.iter().map(link_view).collect();
    let in_group: Vec<_> = links.iter().filter(|l| l.group == CNET_GROUP).collect();
    let all_ours = in_group.iter().all(|l| l.alias.as_deref().is_some_and(|a| a.starts_with(ALIAS_PREFIX)));
    if all_ours && !in_group.is_empty() {
        nl.del_cnet_group().await.context("cannot delete cnet's links")?;
    }
    // Anything recorded that is still there: delete it one by one if it is cnet's.
    let links: Vec<_> = nl.links(None).await?.iter().map(link_view).collect();
    for name in created {
        if let Some(l) = links.iter().find(|l| l.name == *name) {
            if l.alias.as_deref() == Some(alias(stage).as_str()) {
                match nl.del_link(name).await {
                    Err(e) if !crate::netlink::is_gone(&e) => return Err(e.context(format!("cannot delete {name}"))),
                    _ => {}
                }
            } else {
                tracing::warn!("{name} is not marked as cnet's (alias {:?}): left alone", l.alias);
            }
        }
    }
    Ok(())
}
