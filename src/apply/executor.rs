//! The executor: applies one plan step to the kernel, and undoes finished steps.
//!
//! The `match` over [`Step`] is exhaustive on purpose: a new kind of step does not compile
//! until it can be applied here and undone in [`teardown`].

use std::collections::HashSet;

use anyhow::Result;

use crate::apply::ebpf;
use crate::apply::netlink::{ALIAS_PREFIX, CNET_GROUP, Netlink, RUNTIME_PEER_GROUP, link_view};
use crate::apply::process::{Members, is_cnet_process, stop_process};
use crate::apply::state::{Done, SysctlChange, SysctlLog};
use crate::apply::sysctl;
use crate::model::nat;
use crate::model::plan::RouteSpec;
use crate::model::plan::{Step, Undo};
use crate::nft;
use crate::sys::ns;

pub fn alias(stage: &str) -> String {
    format!("{ALIAS_PREFIX}{stage}")
}

/// Test hook: `CNET_FAIL_AT_STEP=N` makes step N (1-based) fail, to prove that a failed
/// `up` leaves nothing behind; `N:ERRNO` fails it with that OS error, as the kernel would
/// (e.g. `4:95`, EOPNOTSUPP, to check the exit code for "the machine cannot").
fn injected_failure(index: usize) -> Result<()> {
    static FAIL_AT: std::sync::OnceLock<Option<(usize, Option<i32>)>> = std::sync::OnceLock::new();
    let at = FAIL_AT.get_or_init(|| {
        let v = std::env::var("CNET_FAIL_AT_STEP").ok()?;
        let (step, errno) = v.split_once(':').map_or((v.as_str(), None), |(s, e)| (s, e.parse().ok()));
        Some((step.parse().ok()?, errno))
    });
    match *at {
        Some((step, Some(errno))) if step == index + 1 => {
            Err(anyhow::Error::from(std::io::Error::from_raw_os_error(errno)).context("failure injected by CNET_FAIL_AT_STEP"))
        }
        Some((step, None)) if step == index + 1 => anyhow::bail!("failure injected by CNET_FAIL_AT_STEP"),
        _ => Ok(()),
    }
}

/// Commit one nftables transaction in this process's network namespace.
fn nft_commit(b: nft::Batch) -> Result<()> {
    nft::Nft::open()?.commit(b).map(drop)
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
        let names: Vec<&str> = steps[..cut]
            .iter()
            .filter_map(|(_, s)| match s {
                Step::AddNetns { name } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let mut out: Vec<Result<Done>> = nl
            .add_netns_many(&names)
            .into_iter()
            .zip(steps)
            .map(|(r, (i, s))| {
                r.map(|()| {
                    let ns = match s {
                        Step::AddNetns { name } => ns::ns_id(&nl.netns_path(name)),
                        _ => None,
                    };
                    Done { step: *i, ns, ..Default::default() }
                })
            })
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
        Step::AddNetns { name } => {
            nl.add_netns(name)?;
            done.ns = ns::ns_id(&nl.netns_path(name));
        }
        Step::AddVeth { name, peer, peer_netns } => {
            // A namespace given by path is a container runtime's (CNI): its end is marked
            // as cnet's, but not as making the namespace cnet's (netlink::RUNTIME_PEER_GROUP).
            let group = if std::path::Path::new(peer_netns).is_absolute() { RUNTIME_PEER_GROUP } else { CNET_GROUP };
            nl.add_veth(name, peer, peer_netns, &tag, Some(group)).await?
        }
        Step::AddBridge { name } => nl.add_bridge(name, &tag).await?,
        Step::AddTun { name } => {
            // The ioctl cannot put the device in cnet's group, so it is marked over netlink
            // while only this process holds it, and made persistent after that: killed or
            // failed before then, the device goes with the process, never left unmarked.
            let tun = crate::tunnel::create_tun(name)?;
            nl.mark(name, &tag).await?;
            tun.keep(name)?;
        }
        Step::AddVxlan { name, vni, local, underlay, port } => nl.add_vxlan(name, *vni, *local, underlay, *port, &tag).await?,
        Step::SetMaster { dev, master, addrgen_none } => nl.set_master(dev, master, *addrgen_none).await?,
        Step::SetMtu { dev, mtu } => nl.set_mtu(dev, *mtu).await?,
        Step::AddAddr { netns, dev, addr } => nl.add_addr(netns.as_deref(), dev, *addr).await?,
        Step::LinkUp { netns, dev, addrgen_none } => nl.link_up(netns.as_deref(), dev, *addrgen_none).await?,
        Step::AddRoute { netns, dst, via, dev, onlink } => {
            nl.add_route(netns.as_deref(), &RouteSpec { dst: *dst, via: *via, dev: dev.clone(), onlink: *onlink }).await?
        }
        Step::AddFdb { dev, dst } => nl.add_fdb(dev, *dst).await?,
        Step::Sysctl { key, value } => {
            let old = sysctl::read(key)?;
            SysctlLog::append(&SysctlChange { key: key.clone(), old: old.clone(), set: value.clone() })?;
            sysctl::write(key, value)?;
            done.old = Some(old);
        }
        Step::AddNatTable => {
            let mut b = nft::Batch::new();
            // Exclusive: a `table ip cnet` already there (not cnet's) is not taken over.
            b.add_table(&nat::table_skeleton(), true);
            nft_commit(b)?;
        }
        Step::AddNatChain { chain } => {
            let mut b = nft::Batch::new();
            let c = nft::Chain { name: chain.name().into(), base: Some(chain.base()), rules: Vec::new() };
            b.add_chain(&nat::table_skeleton(), &c);
            nft_commit(b)?;
        }
        Step::AddNatRule { chain, rule } => {
            let mut b = nft::Batch::new();
            b.add_rule(&nat::table_skeleton(), chain.name(), &rule.to_nft());
            nft_commit(b)?;
        }
        Step::StartServer { netns, name, listen } => {
            let path = netns.as_ref().map(|n| nl.netns_path(n));
            // Not recorded as the step's pid (that is the tunnel's): the server goes with its
            // namespace, or is found by its command line.
            crate::apply::launch::start_server(path.as_deref(), name, *listen)?;
        }
        Step::SetHairpin { dev } => nl.set_hairpin(dev).await?,
        Step::StartTunnel { dev, local, peers, wire } => {
            done.pid = Some(crate::apply::launch::start(dev, *local, peers, *wire).await?)
        }
        Step::AddClsact { dev } => done.existed = !ebpf::add_clsact(nl, dev).await?,
        Step::LoadEbpf { local, tun, underlay, peers, pods, direct } => {
            ebpf::load(*local, tun, underlay, &crate::model::plan::ebpf_peers(peers), pods, *direct)?
        }
        Step::AttachBpf { dev, hook, program, last } => ebpf::attach(dev, *hook, program, *last)?,
    }
    Ok(done)
}

/// Undo finished steps, newest first, collecting errors rather than stopping at the first
/// (as CNI's DEL does): whatever is already gone counts as undone. `started_until` covers
/// steps an interrupted `up` may have run without recording them: what they would have
/// created is removed too if it is there and marked as cnet's.
pub async fn teardown(nl: &Netlink, plan: &[Step], done: &[Done], started_until: usize, stage: &str) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let recorded: HashSet<usize> = done.iter().map(|d| d.step).collect();
    let steps: Vec<(&Step, &Done)> = done.iter().filter_map(|d| plan.get(d.step).map(|s| (s, d))).collect();
    let unrecorded: Vec<&Step> = (0..started_until.min(plan.len())).filter(|i| !recorded.contains(i)).map(|i| &plan[i]).collect();
    let all = || steps.iter().map(|(s, _)| *s).chain(unrecorded.iter().copied());
    let created_list: Vec<&str> = all().filter_map(|s| s.created_link()).collect();
    let created: HashSet<&str> = created_list.iter().copied().collect();
    // What each step takes to undo (plan::Step::undo, the rules `explain --format sh-down`
    // prints too), applied here in the order that is safe rather than strictly reversed.
    let undos: Vec<(Undo, Option<&Done>)> = steps
        .iter()
        .filter_map(|(s, d)| s.undo(&created_list).map(|u| (u, Some(*d))))
        .chain(unrecorded.iter().filter_map(|s| s.undo(&created_list).map(|u| (u, None))))
        .collect();
    let recorded_undos = || undos.iter().filter_map(|(u, d)| d.map(|d| (u, d)));

    // 1. The tunnel first (it holds tun0): by its recorded pid, or the pid file it left.
    if let Some(local) = undos.iter().find_map(|(u, _)| match u {
        Undo::StopTunnel { local, .. } => Some(local.to_string()),
        _ => None,
    }) {
        let pid = steps.iter().find_map(|(_, d)| d.pid).or_else(crate::apply::launch::recorded_pid);
        // This node's tunnel only: lab nodes share a PID namespace, so a stale or reused
        // pid could name another node's.
        if let Some(pid) = pid.filter(|p| is_cnet_process(*p, &["tunnel", &local]))
            && let Err(e) = stop_process(pid)
        {
            errors.push(e.context("cannot stop the tunnel"));
        }
        if let Err(e) = crate::apply::launch::remove_files() {
            errors.push(e);
        }
    }
    // 2. Routes on the node through devices cnet did not make (they would outlive `down`);
    //    an unrecorded one too (a request in flight when `up` was stopped may still have
    //    been carried out): `up` refused to start if a route to that destination existed.
    for (u, _) in undos.iter().rev() {
        if let Undo::DeleteRoute { route, added_by } = u
            && let Err(e) = nl.del_route(None, route).await
            && !crate::apply::netlink::is_gone(&e)
        {
            errors.push(e.context(format!("cannot delete the route {}", added_by.command())));
        }
    }
    // 2b. cnet's nftables table, whole (its chains and rules go with it) — only if its
    //     comment says it is cnet's; and demo servers outside any container.
    for (u, _) in &undos {
        match u {
            Undo::DeleteNatTable => match nft::Nft::open().and_then(|mut n| n.delete_cnet_table(nft::Family::Ip, nat::TABLE)) {
                Ok(_) => {}
                Err(e) if e.is::<nft::NotCnets>() => tracing::warn!("{e:#}: left alone"),
                Err(e) => errors.push(e.context("cannot delete cnet's nftables table")),
            },
            Undo::StopServer { listen } => {
                for pid in crate::apply::process::cnet_processes_with(&["serve", "--listen", &listen.to_string()]) {
                    if let Err(e) = stop_process(pid) {
                        errors.push(e);
                    }
                }
            }
            _ => {}
        }
    }
    // 2c. cnet's TC filter and the clsact qdisc it added on the underlay (on tun0 they go
    //     with the device): the programs and maps go with the last filter holding them.
    for (u, d) in &undos {
        match u {
            Undo::DetachBpf { dev, hook, program } => {
                if let Err(e) = ebpf::detach(dev, *hook, program) {
                    errors.push(e);
                }
            }
            // Only a qdisc cnet is recorded to have added: an AddClsact cut short before
            // its record may have found one already there, with other tools' filters on it.
            Undo::DeleteClsact(dev) if d.is_some_and(|d| !d.existed) => {
                if let Err(e) = ebpf::del_clsact(nl, dev).await {
                    errors.push(e);
                }
            }
            _ => {}
        }
    }
    if undos.iter().any(|(u, _)| matches!(u, Undo::DetachBpf { .. }))
        && let Err(e) = ebpf::remove_record()
    {
        errors.push(e);
    }
    // 3. Sysctls back to what they were — unless someone else changed them since (then
    //    theirs wins), or their interface is gone or about to go.
    for (u, d) in recorded_undos().rev() {
        if let (Undo::RestoreSysctl { key, set_to: value }, Some(old)) = (u, &d.old) {
            if created.iter().any(|dev| key.contains(&format!(".conf.{dev}."))) {
                continue;
            }
            match sysctl::read(key) {
                Ok(now) if now == *value => {
                    if let Err(e) = sysctl::write(key, old) {
                        errors.push(e);
                    }
                }
                Ok(now) => tracing::warn!("{key} is {now} now, not the {value} cnet set: left as it is"),
                Err(e) if sysctl::is_missing(&e) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    // 4. Links: all of cnet's in one request when that is exactly what the group holds.
    if !created.is_empty() {
        delete_links(nl, &created, stage, &mut errors).await;
    }
    // 5. Container namespaces — only the very ones cnet made — after stopping what still
    //    runs in them.
    let netns: Vec<(&str, Option<(u64, u64)>)> = undos
        .iter()
        .filter_map(|(u, d)| match u {
            Undo::DeleteNetns(name) => Some((*name, d.and_then(|d| d.ns))),
            _ => None,
        })
        .collect();
    let members = if netns.is_empty() { None } else { Some(Members::scan("net")) };
    for (name, id) in netns.into_iter().rev() {
        let path = nl.netns_path(name);
        if !path.exists() {
            continue;
        }
        // An empty file where the namespace was bound: a deletion cut short between unmount
        // and unlink (a killed `down`). Nothing lives there any more; finish the job.
        if ns::is_dead_ns_file(&path) {
            if let Err(e) = ns::delete_ns_file(&path) {
                errors.push(e);
            }
            continue;
        }
        if id.is_some() && ns::ns_id(&path) != id {
            tracing::warn!("the namespace now named '{name}' is not the one cnet made: left alone");
            continue;
        }
        if id.is_some() {
            for pid in members.as_ref().map(|m| m.of(&path)).unwrap_or_default() {
                if let Err(e) = stop_process(pid) {
                    errors.push(e);
                }
            }
        }
        if let Err(e) = nl.del_netns(name) {
            errors.push(e);
        }
    }
    errors
}

/// Delete the links cnet recorded (`created`). One request for the whole group when the
/// group holds exactly those links, each marked for this stage; otherwise one by one, and
/// only links in cnet's group (set atomically at creation, so it marks even a link whose
/// alias an interrupted `up` never set).
async fn delete_links(nl: &Netlink, created: &HashSet<&str>, stage: &str, errors: &mut Vec<anyhow::Error>) {
    let tag = alias(stage);
    let links: Vec<_> = match nl.links(None).await {
        Ok(l) => l.iter().map(link_view).collect(),
        Err(e) => return errors.push(e.context("cannot list the links")),
    };
    // cnet's: in its group (set atomically at creation), with this stage's alias or none yet
    // (an interrupted `up` may not have set it).
    let ours = |l: &crate::apply::netlink::LinkView| l.group == CNET_GROUP && l.alias.as_deref().is_none_or(|a| a == tag);
    let in_group: Vec<_> = links.iter().filter(|l| l.group == CNET_GROUP).collect();
    if !in_group.is_empty() && in_group.iter().all(|l| created.contains(l.name.as_str()) && ours(l)) {
        if let Err(e) = nl.del_cnet_group().await {
            errors.push(e.context("cannot delete cnet's links"));
        }
        return;
    }
    for l in links.iter().filter(|l| created.contains(l.name.as_str())) {
        if !ours(l) {
            tracing::warn!("{} is not marked as cnet's (alias {:?}): left alone", l.name, l.alias);
            continue;
        }
        // Each failure is reported, and the other links still go.
        match nl.del_link(&l.name).await {
            Err(e) if !crate::apply::netlink::is_gone(&e) => errors.push(e.context(format!("cannot delete {}", l.name))),
            _ => {}
        }
    }
}
