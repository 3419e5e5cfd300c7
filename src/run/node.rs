//! The node runner: builds (and removes) one node's part of a stage on the machine it runs
//! on. On a real host this is `cnet up --host`; the lab runs this same code inside each of
//! its VM-like nodes.

use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::error::join_errors;

use crate::apply::netlink::{Netlink, addr_views, dump_addrs, dump_links, dump_routes, link_view, route_views};
use crate::apply::state::{Done, NodeHeader, NodeJournal};
use crate::apply::{executor, sweep};
use crate::model::plan::{NodePlan, Step, node_plan};
use crate::model::topology::{Backend, GSO_UNDERLAY_MTU, Ipv4Net, Options, Stage, Topology, UNDERLAY_DEV};

/// What the user asked of this node.
#[derive(Clone, Debug)]
pub struct NodeRequest {
    pub options: Options,
    pub node: u32,
    pub underlay: Option<String>,
    pub peers: Vec<Ipv4Addr>,
    pub in_lab: bool,
    /// One of the lab's other members (router, gateway, outside), not a node: its plan is
    /// model::plan::member_plan.
    pub member: Option<String>,
}

pub const NETNS_DIR: &str = "/run/netns";

/// How steps are shown while they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Print each step as it runs.
    Run,
    /// Show each step and wait for Enter first (the talk, live).
    Step,
    /// Print nothing per step (benchmarks, scale).
    Quiet,
}

/// Resolve a request against this machine: the underlay device, this node's IP, the
/// peers' IPs and the underlay MTU. Reads only.
pub async fn resolve(req: &NodeRequest, nl: &Netlink) -> Result<(Topology, NodeHeader)> {
    let links: Vec<_> = dump_links(&nl.node_handle()).await?.iter().map(link_view).collect();
    resolve_with(req, nl, &links).await
}

async fn resolve_with(
    req: &NodeRequest,
    nl: &Netlink,
    links: &[crate::apply::netlink::LinkView],
) -> Result<(Topology, NodeHeader)> {
    let mut topo = Topology::new(req.options.clone())?;
    let me = topo.node(req.node)?.clone();
    let addrs = addr_views(&dump_addrs(&nl.node_handle()).await?);
    let underlay = match &req.underlay {
        Some(u) => {
            if !links.iter().any(|l| &l.name == u) {
                bail!("there is no interface {u} here: give the underlay interface with --underlay DEV");
            }
            Some(u.clone())
        }
        None => {
            // The interface holding the node's talk address, else the talk's enp0s8.
            let by_ip = addrs
                .iter()
                .find(|a| a.addr.addr == me.ip.addr)
                .and_then(|a| links.iter().find(|l| l.index == a.dev))
                .map(|l| l.name.clone());
            by_ip.or_else(|| links.iter().find(|l| l.name == UNDERLAY_DEV).map(|l| l.name.clone()))
        }
    };
    let node_net = match &underlay {
        Some(u) => {
            // The talk's address if the underlay holds it (a VM may have several), else its first.
            let idx = links.iter().find(|l| &l.name == u).map(|l| l.index);
            let on_dev: Vec<Ipv4Net> = addrs.iter().filter(|a| Some(a.dev) == idx).map(|a| a.addr).collect();
            on_dev.iter().find(|a| a.addr == me.ip.addr).or(on_dev.first()).copied()
        }
        None => None,
    };
    let node_ip = node_net.map(|n| n.addr);
    if topo.stage().is_multi_node() {
        let Some(u) = &underlay else {
            bail!(
                "no underlay interface: this node's address {} is on no interface and there is no {UNDERLAY_DEV}; give --underlay DEV",
                me.ip.addr
            )
        };
        let Some(net) = node_net else {
            bail!("the underlay interface {u} has no IPv4 address: give it the node's address first")
        };
        let ip = net.addr;
        // With its real prefix: which peers are on-link is decided from it.
        topo.set_node_net(req.node, net);
        let others: Vec<u32> = topo.peers_of(req.node).map(|n| n.index).collect();
        if req.peers.len() > others.len() {
            bail!("{} --peer addresses given, but this stage has only {} other node(s)", req.peers.len(), others.len());
        }
        for (i, ip) in others.iter().zip(&req.peers) {
            topo.set_node_ip(*i, *ip);
        }
        if let Some(mtu) = links.iter().find(|l| &l.name == u).and_then(|l| l.mtu) {
            topo.options.underlay_mtu = mtu;
        }
        if topo.options.backend == Backend::UdpGso && topo.options.underlay_mtu < GSO_UNDERLAY_MTU {
            bail!(
                "the udp-gso backend sends 64 KB datagrams, but the underlay {u} has MTU {}: it needs {GSO_UNDERLAY_MTU} (the lab's cables have it); on a real network use --backend udp",
                topo.options.underlay_mtu
            );
        }
        // A machine that cannot load BPF says so in one line (exit 2) before anything is built.
        if topo.options.backend == Backend::Ebpf && topo.stage().has_overlay() {
            crate::apply::ebpf::check_loadable()?;
        }
        for p in topo.peers_of(req.node) {
            if p.ip.addr == ip {
                bail!("node {}'s address {ip} is this node's own: give the other node's with --peer IP", p.index);
            }
        }
        // On a real machine a static route to a peer off this subnet is found out before
        // anything is built (the lab lets the kernel refuse it, as a lesson).
        if topo.stage() == Stage::MultiNode && !req.in_lab {
            for p in topo.peers_of(req.node) {
                if !topo.on_link(req.node, p.index) {
                    bail!(
                        "stage 3 needs the nodes on one L2 network, but node {} ({}) is not on this node's subnet {}: {}",
                        p.index,
                        p.ip.addr,
                        net.trunc(),
                        crate::model::plan::not_on_link_why(&p.pod_net, p.ip.addr, u)
                    );
                }
            }
        }
    } else if let Some(ip) = node_ip {
        topo.set_node_ip(req.node, ip);
    }
    if topo.stage().has_nat() {
        // Masquerade where the world is: the default route's interface (the lab's nodes get
        // theirs from the plan, via the gateway on the underlay, so none is found here).
        let routes = route_views(&dump_routes(&nl.node_handle()).await?);
        let default_dev = routes.iter().filter(|r| r.dst.is_none_or(|d| d.prefix == 0)).find_map(|r| r.dev);
        if let Some(l) = default_dev.and_then(|i| links.iter().find(|l| l.index == i)) {
            topo.set_node_egress(req.node, l.name.clone());
        }
    }
    let header = NodeHeader {
        format: crate::apply::state::RECORD_FORMAT,
        options: topo.options.clone(),
        node: req.node,
        underlay: underlay.clone().unwrap_or_default(),
        node_ip: node_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        peers: topo.peers_of(req.node).map(|n| (n.index, n.ip.addr)).collect(),
        netns_dir: PathBuf::from(NETNS_DIR),
        in_lab: req.in_lab,
        made_netns_mount: false,
        steps: Vec::new(),
    };
    Ok((topo, header))
}

/// Refuse pod subnets (and stage 4's overlay /16) that overlap an address this machine
/// already has, its underlay's first: the node could not tell its neighbours from its
/// containers. cnet's own links are left to the conflict check (they mean a stage is up).
fn check_pod_nets_against(
    topo: &Topology,
    addrs: &[crate::apply::netlink::AddrView],
    links: &[crate::apply::netlink::LinkView],
) -> Result<()> {
    let mut ours: Vec<Ipv4Net> = topo.nodes.iter().filter(|n| n.bridge.is_some()).map(|n| n.pod_net).collect();
    if topo.stage().has_overlay() {
        ours.extend(topo.nodes.first().map(|n| n.tun_addr().trunc()));
    }
    for a in addrs {
        let Some(dev) = links.iter().find(|l| l.index == a.dev) else { continue };
        if dev.group == crate::apply::netlink::CNET_GROUP || a.addr.addr.is_loopback() {
            continue;
        }
        if let Some(p) = ours.iter().find(|p| p.overlaps(&a.addr.trunc())) {
            bail!(
                "the pod subnet {p} overlaps this machine's own network {} (on {}): the node could not tell its neighbours from its containers; use another machine, or for stage 2 another --pod-cidr",
                a.addr.trunc(),
                dev.name
            );
        }
    }
    Ok(())
}

/// Refuse, changing nothing, when anything the plan would create already exists.
async fn check_conflicts(nl: &Netlink, plan: &NodePlan, links: &[crate::apply::netlink::LinkView]) -> Result<()> {
    match NodeJournal::read() {
        Ok(Some(r)) => bail!("stage {} is already up here: run `cnet down` first", r.header.options.stage),
        Ok(None) => {}
        Err(e) if crate::apply::state::is_unusable(&e) => {
            bail!("an earlier build's record is here but {e:#}: run `cnet down` first (it removes what carries cnet's marks)")
        }
        Err(e) => return Err(e),
    }
    if let Some(pid) = crate::apply::process::cnet_tunnels_here().first() {
        bail!("a tunnel started by an earlier cnet run is still running here (pid {pid}): run `cnet down` first");
    }
    let marked: Vec<&str> =
        links.iter().filter(|l| l.group == crate::apply::netlink::CNET_GROUP).map(|l| l.name.as_str()).collect();
    if !marked.is_empty() {
        bail!("links an earlier cnet run made are still here with no record ({}): run `cnet down` first", marked.join(", "));
    }
    let routes = route_views(&dump_routes(&nl.node_handle()).await?);
    if plan.steps.iter().any(|s| s.step == Step::AddNatTable)
        && let Some(t) = crate::nft::Nft::open()?.find_table(crate::nft::Family::Ip, crate::model::nat::TABLE)?
    {
        if t.is_cnet() {
            bail!("cnet's nftables table (table ip cnet) is left from an earlier run: run `cnet down` first");
        }
        bail!(
            "an nftables table named 'ip cnet' already exists and is not cnet's: cnet will not touch it; rename or delete it (nft delete table ip cnet) first"
        );
    }
    for s in &plan.steps {
        match &s.step {
            Step::AddNetns { name } if nl.netns_path(name).exists() => {
                bail!(
                    "a network namespace named '{name}' already exists and is not cnet's: remove it (ip netns del {name}) or use another machine"
                );
            }
            Step::AddVxlan { underlay, .. } if !links.iter().any(|l| &l.name == underlay) => {
                bail!("the underlay interface {underlay} does not exist");
            }
            Step::AddRoute { netns: None, dst: Some(dst), .. } if routes.iter().any(|r| r.dst == Some(dst.trunc())) => {
                bail!("a route to {dst} is already in this machine's table: cnet will not replace it");
            }
            _ => {}
        }
        if let Some(name) = s.step.created_link()
            && let Some(l) = links.iter().find(|l| l.name == name)
        {
            let whose = match &l.alias {
                Some(a) if a.starts_with(crate::apply::netlink::ALIAS_PREFIX) => {
                    "left by an earlier cnet run; `cnet down` removes it".to_string()
                }
                _ => "not cnet's".to_string(),
            };
            bail!("an interface named {name} already exists ({whose})");
        }
    }
    Ok(())
}

/// Wait for Enter (or `q` to stop, or `s` for a shell here). The read runs on a blocking
/// thread so that the runtime stays free to notice a Ctrl-C meanwhile.
async fn wait_for_enter() -> Result<()> {
    loop {
        {
            let mut out = std::io::stdout();
            let _ = write!(out, "        (Enter: run it; s: a shell here first; q: stop) ");
            let _ = out.flush();
        }
        let line = tokio::task::spawn_blocking(read_line_unbuffered).await??;
        match line.trim() {
            "q" => return Err(crate::error::Failure::stopped("stopped at your request")),
            "s" => shell_here().await?,
            _ => return Ok(()),
        }
    }
}

/// One line from stdin, read a byte at a time: a buffered read would swallow what follows
/// (what the user types into the shell that `s` opens next, when stdin is a pipe).
fn read_line_unbuffered() -> std::io::Result<String> {
    use std::io::Read;
    use std::os::fd::AsFd;
    let mut f = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while f.read(&mut b)? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// A shell where this node runner is (inside the lab node, or on this machine), to look at
/// the stage half-built; the build goes on when it exits.
async fn shell_here() -> Result<()> {
    let sh = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
    say!("        {} shell on {}: look around (ip -br link, ip route, ip netns); exit to go on", sh, hostname());
    let status = tokio::task::spawn_blocking(move || std::process::Command::new(&sh).status()).await??;
    if !status.success() {
        tracing::info!("the shell ended with {status}");
    }
    Ok(())
}

/// `cnet up STAGE --host`: build this node, recording each step; on failure undo them all.
pub async fn up(req: &NodeRequest, pace: Pace) -> Result<()> {
    let nl = Netlink::here(&PathBuf::from(NETNS_DIR))?;
    let links: Vec<_> = dump_links(&nl.node_handle()).await?.iter().map(link_view).collect();
    let (topo, header, plan) = if let Some(member) = &req.member {
        // A lab member's plan: nothing to resolve (the lab cabled it).
        let topo = Topology::new(req.options.clone())?;
        let plan = crate::model::plan::member_plan(&topo, member);
        let header = NodeHeader {
            format: crate::apply::state::RECORD_FORMAT,
            options: topo.options.clone(),
            node: 0,
            underlay: String::new(),
            node_ip: Ipv4Addr::UNSPECIFIED,
            peers: Vec::new(),
            netns_dir: PathBuf::from(NETNS_DIR),
            in_lab: true,
            made_netns_mount: false,
            steps: Vec::new(),
        };
        (topo, header, plan)
    } else {
        let (topo, header) = resolve_with(req, &nl, &links).await?;
        check_pod_nets_against(&topo, &addr_views(&dump_addrs(&nl.node_handle()).await?), &links)?;
        let plan = node_plan(&topo, topo.node(req.node)?, &header.underlay);
        (topo, header, plan)
    };
    check_conflicts(&nl, &plan, &links).await?;
    // As `ip netns add` does, so `ip netns` sees cnet's namespaces from any mount namespace.
    let mut header = header;
    header.made_netns_mount = crate::sys::ns::ensure_mount_dir(&PathBuf::from(NETNS_DIR), true)?;
    header.steps = plan.steps.iter().map(|s| s.step.clone()).collect();
    let mut journal = NodeJournal::create(&header)?;
    let stage = topo.stage().name();
    let mut done: Vec<Done> = Vec::with_capacity(plan.steps.len());
    let total = plan.steps.len();
    let mut i = 0;
    while i < total {
        // A run of independent steps (one per container) goes as one pipelined batch,
        // except when the user steps through them one by one.
        let key = plan.steps[i].step.batch_key();
        let mut end = i + 1;
        if pace != Pace::Step && key.is_some() {
            while end < total && plan.steps[end].step.batch_key() == key {
                end += 1;
            }
        }
        if pace != Pace::Quiet {
            for j in i..end {
                crate::out::print_step(j, total, &plan.steps[j].why, &plan.steps[j].command);
            }
        }
        if pace == Pace::Step
            && let Err(e) = wait_for_enter().await
        {
            return Err(fail(&nl, &header, &plan, &done, (i, i), e).await);
        }
        if let Err(e) = journal.started(i, end) {
            return Err(fail(&nl, &header, &plan, &done, (i, i), e).await);
        }
        let batch: Vec<(usize, &Step)> = (i..end).map(|j| (j, &plan.steps[j].step)).collect();
        let started = std::time::Instant::now();
        let results = if batch.len() == 1 {
            vec![executor::apply(&nl, i, batch[0].1, stage).await]
        } else {
            executor::apply_batch(&nl, &batch, stage).await
        };
        let mut failed = None;
        for (j, r) in (i..end).zip(results) {
            match r {
                Ok(d) => {
                    if let Err(e) = journal.record(&d) {
                        failed.get_or_insert((j, e));
                    }
                    done.push(d);
                }
                Err(e) => {
                    failed.get_or_insert((j, e));
                }
            }
        }
        // -v shows where the time goes, batch by batch.
        tracing::info!("steps {}..{} ({}) took {:?}", i + 1, end, plan.steps[i].command, started.elapsed());
        if let Some((j, e)) = failed {
            return Err(fail(&nl, &header, &plan, &done, (j, end), e).await);
        }
        i = end;
    }
    // In the lab, the lab says what to try, once, when every node is built.
    if pace != Pace::Quiet && !req.in_lab {
        say!();
        print_next_steps(&topo, req.node);
    }
    Ok(())
}

/// Undo what is done and say which step failed and why, in one line. `(step, ran_until)`:
/// the step that failed, and the end of the steps that may have run (those of a failed
/// batch; none past `step` when it failed before running, at a prompt or in the journal),
/// so that nothing that never ran is taken for something cnet made.
async fn fail(
    nl: &Netlink,
    header: &NodeHeader,
    plan: &NodePlan,
    done: &[Done],
    (step, ran_until): (usize, usize),
    e: anyhow::Error,
) -> anyhow::Error {
    let stage = header.options.stage.name();
    let started_until = done.iter().map(|d| d.step + 1).max().unwrap_or(0).max(ran_until);
    let errors = executor::teardown(nl, &header.steps, done, started_until, stage).await;
    let undo = if errors.is_empty() {
        match NodeJournal::remove()
            .and_then(|()| crate::apply::state::SysctlLog::remove())
            .and_then(|()| release_netns_mount(header))
        {
            Ok(()) => "the steps already done were undone".to_string(),
            Err(r) => format!("the steps already done were undone, but {r:#}"),
        }
    } else {
        format!("undoing the steps already done also failed ({}); run `cnet down`", join_errors(&errors))
    };
    // A static route refused because its gateway is not on-link (a routed fabric): the
    // kernel's words, then what they mean.
    let unreachable =
        e.chain().any(|c| c.downcast_ref::<std::io::Error>().and_then(|io| io.raw_os_error()) == Some(libc::ENETUNREACH));
    let why = match &plan.steps[step].step {
        Step::AddRoute { dst: Some(dst), via: Some(via), dev, .. } if unreachable => {
            format!(" — {}", crate::model::plan::not_on_link_why(dst, *via, dev))
        }
        _ => String::new(),
    };
    let message = if crate::error::kind(&e) == Some(crate::error::FailureKind::Stopped) {
        format!("stopped at your request before step {} ({}); {undo}", step + 1, plan.steps[step].command)
    } else {
        format!("step {} ({}) failed: {e:#}{why}; {undo}", step + 1, plan.steps[step].command)
    };
    crate::error::same_kind(&e, message)
}

/// Unmount the /run/netns mount `up` made (as `ip netns add` would have), once empty.
fn release_netns_mount(header: &NodeHeader) -> Result<()> {
    if header.made_netns_mount {
        let empty = std::fs::read_dir(&header.netns_dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if empty {
            crate::sys::ns::unmount_dir(&header.netns_dir)?;
        }
    }
    Ok(())
}

/// `cnet down --host`: undo what the record says was done, then remove whatever still
/// carries cnet's marks (sweep.rs) — everything, when the record is missing or unusable.
/// Returns false if nothing was up.
/// `in_lab`: run by the lab in one of its nodes, which is removed whole afterwards.
pub async fn down(quiet: bool, in_lab: bool) -> Result<bool> {
    NodeJournal::remove_stale_tmp()?;
    let (record, unusable) = match NodeJournal::read() {
        Ok(r) => (r, None),
        Err(e) if crate::apply::state::is_unusable(&e) => (None, Some(e)),
        Err(e) => return Err(e),
    };
    let netns_dir = record.as_ref().map_or_else(|| PathBuf::from(NETNS_DIR), |r| r.header.netns_dir.clone());
    let nl = Netlink::here(&netns_dir)?;
    let known: HashSet<String> = record
        .iter()
        .flat_map(|r| r.header.steps.iter())
        .filter_map(|s| match s {
            Step::AddNetns { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    // Surveyed before anything is removed: a container's namespace is known by the marked
    // veth end inside it, which goes with its node end.
    let marks = sweep::survey(&nl, &netns_dir, &known, record.is_none()).await?;
    if record.is_none() && unusable.is_none() && marks.is_empty() && !crate::cni::attach::has_state() {
        return Ok(false);
    }
    let mut errors = Vec::new();
    if let Some(r) = &record {
        errors = executor::teardown(&nl, &r.header.steps, &r.done, r.started_until, r.header.options.stage.name()).await;
    }
    sweep::remove(&nl, &marks, &mut errors).await;
    // What cnet's CNI plugin left (its leases, veths it released; its veths in cnet's group
    // went above). The runtime's containers are the runtime's: their processes and
    // namespaces stay, without their cnet interface.
    let detached = crate::cni::attach::remove_all(&nl, &mut errors).await;
    if detached > 0 {
        tell!(
            "cnet: {}: {detached} container(s) a runtime attached through cnet's CNI plugin lost their cnet interface; they and their namespaces are the runtime's and still there (`podman rm` them: its DEL finds nothing left to do)",
            hostname()
        );
    }
    let restored = if record.is_none() { sweep::restore_sysctls(&mut errors) } else { Some(0) };
    if !errors.is_empty() {
        bail!("could not remove everything: {}; fix that and run `cnet down` again", join_errors(&errors));
    }
    // The journal last: a `down` killed before it is done finds it again.
    if let Some(r) = &record {
        release_netns_mount(&r.header)?;
    }
    crate::apply::state::SysctlLog::remove()?;
    crate::apply::launch::remove_files()?;
    NodeJournal::remove()?;
    if let Some(r) = &record {
        if !quiet {
            say!("{}: stage {} removed ({} steps undone)", hostname(), r.header.options.stage, r.done.len());
        }
    } else {
        // Said even with -q: what cnet set that has no mark (ip_forward, rp_filter) cannot be
        // put back without the record, and the user should know.
        let why = match &unusable {
            Some(e) => format!("{e:#}"),
            None => format!("there is no record ({} is missing)", crate::apply::state::node_journal_path().display()),
        };
        let sysctls = match (in_lab, restored) {
            (true, _) | (false, Some(0)) => String::new(),
            (false, Some(n)) => {
                format!("; {n} sysctl(s) put back as they were, from {}", crate::apply::state::SysctlLog::describe())
            }
            (false, None) => format!(
                "; sysctls cnet set (ip_forward, rp_filter) are left as they are ({} is gone too)",
                crate::apply::state::SysctlLog::describe()
            ),
        };
        tell!("cnet: {}: {why}; removed what carries cnet's marks instead ({marks}){sysctls}", hostname());
    }
    Ok(true)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The talk's demo commands for the stage, to try next on this machine (host mode).
pub fn print_next_steps(topo: &Topology, node: u32) {
    let n = topo.node(node).expect("node exists");
    say!("Try this next:");
    if n.containers.is_empty() && topo.stage() != Stage::Namespace {
        // The node's part alone: containers come from a runtime, through the CNI plugin.
        say!("  a runtime's containers join it through cnet's CNI plugin: cnet as /opt/cni/bin/cnet,");
        say!("  a conflist with {{\"type\": \"cnet\"}} (README: cnet as a CNI plugin)");
        say!("  cnet status --host; cnet test --host    # they show and check those containers too");
        return;
    }
    match topo.stage() {
        Stage::Namespace => {
            say!("  ip netns exec con ping -c1 10.0.0.10    # the node answers, TTL 64");
            say!("  ip netns exec con python3 -m http.server 8000 &");
            say!("  curl --retry 5 --retry-connrefused -s 172.16.0.1:8000 | head -3");
        }
        Stage::SingleNode => {
            let c = &n.containers;
            let second = c.get(1).unwrap_or(&c[0]);
            say!("  ip netns exec {} ping -c1 {}    # TTL 64: same L2", c[0].name, second.addr.addr);
            say!("  cnet test --host");
        }
        Stage::MultiNode | Stage::Overlay | Stage::Outside | Stage::Services => {
            let other = topo.peers_of(node).next().expect("a peer");
            let far = other.containers[0].addr.addr;
            say!("  ip netns exec con1 ping -c1 {far}    # TTL 62: both nodes route it");
            say!("  ping -c1 {far}    # TTL 63");
            say!("  cnet test --host    # once the other node is up too");
        }
    }
}
