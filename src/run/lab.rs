//! The local lab: VM-like nodes made of namespaces on one machine, joined by a switch.
//!
//! A node is a network + mount + UTS namespace (its own hostname, its own /run/netns so that
//! `ip netns` inside lists only its containers), persisted by bind mounts under
//! /run/cnet/lab/nodeN. The underlay L2 network is a bridge in a separate switch namespace;
//! each node's end of its cable is `enp0s8`, as on the talk's Vagrant VMs. Each node is then
//! built by the node runner (`cnet up --host`) run inside it: lab and real hosts share
//! one code path. The host's own network namespace is never touched.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::apply::netlink::Netlink;
use crate::apply::state::{LabState, lab_dir, run_dir};
use crate::model::plan::{GATEWAY_MEMBER, OUTSIDE_MEMBER, ROUTER, RouteSpec, members, router_port};
use crate::model::topology::{Options, Topology, UNDERLAY_DEV};
use crate::run::enter;
use crate::sys::ns::{self, NodeNs};
use anyhow::{Context, Result, anyhow, bail};

const SWITCH_BRIDGE: &str = "underlay";
/// Stages 5-6: the segment between the gateway and the outside host.
const WORLD_BRIDGE: &str = "world";
const LAB_ALIAS: &str = "cnet:lab";

pub fn node_ns(index: u32) -> NodeNs {
    member_ns(&format!("node{index}"))
}

/// A lab member's persisted namespaces: a node (`node2`) or another member (`router`).
pub fn member_ns(name: &str) -> NodeNs {
    let d = lab_dir().join(name);
    NodeNs { net: d.join("net"), mnt: d.join("mnt"), uts: d.join("uts") }
}

/// Every member of a lab record: its nodes, then the others.
fn member_names(state: &LabState) -> Vec<String> {
    state.nodes.iter().map(|i| format!("node{i}")).chain(state.members.iter().cloned()).collect()
}

fn switch_ns() -> PathBuf {
    lab_dir().join("switch").join("net")
}

/// How the node runner is asked to show its steps.
#[derive(Clone, Copy)]
pub enum Verbosity {
    Steps,
    Interactive,
    Quiet,
}

/// The arguments that make `cnet up` inside a node build that node's part of `opts`.
fn node_runner_args(opts: &Options, index: u32, v: Verbosity) -> Vec<String> {
    let mut a = vec![
        "up".to_string(),
        opts.stage.name().into(),
        "--host".into(),
        "--in-lab".into(),
        "--node".into(),
        index.to_string(),
        "--containers".into(),
        opts.containers.to_string(),
    ];
    if opts.stage.is_multi_node() {
        a.extend(["--nodes".into(), opts.nodes.to_string(), "--backend".into(), opts.backend.name().into()]);
        a.extend(["--fabric".into(), opts.fabric.name().into()]);
        if opts.advertise_pod_routes {
            a.push("--advertise-pod-routes".into());
        }
        if opts.direct_routing {
            a.push("--direct-routing".into());
        }
    }
    if let Some(c) = opts.pod_cidr {
        a.extend(["--pod-cidr".into(), c.to_string()]);
    }
    match v {
        Verbosity::Steps => {}
        Verbosity::Interactive => a.push("--step".into()),
        Verbosity::Quiet => a.push("--quiet".into()),
    }
    a
}

/// `cnet up STAGE`: build the lab's nodes, then each node's plan inside it.
pub async fn up(opts: &Options, v: Verbosity) -> Result<()> {
    match LabState::read() {
        Ok(Some(s)) => bail!("the lab is already up with stage {}: run `cnet down` first", s.options.stage),
        Ok(None) => {}
        Err(e) if crate::apply::state::is_unusable(&e) => {
            bail!("a lab's record is here but {e:#}: run `cnet down` first (it removes what carries cnet's marks)")
        }
        Err(e) => return Err(e),
    }
    if let Some(r) = remains() {
        bail!(
            "a lab's namespaces are here with no record ({} node(s) under {}): run `cnet down` first",
            r.nodes.len(),
            lab_dir().display()
        );
    }
    let topo = Topology::new(opts.clone())?;
    let made_run_mount = ns::ensure_mount_dir(&run_dir(), false)?;
    // Each node mounts its own /run/netns over this directory, which must exist for that.
    let made_netns_dir = !Path::new("/run/netns").exists();
    std::fs::create_dir_all("/run/netns").context("cannot create /run/netns")?;
    let mut state = LabState {
        options: opts.clone(),
        nodes: Vec::new(),
        complete: false,
        made_run_mount,
        made_netns_dir,
        faults: Vec::new(),
        members: Vec::new(),
    };
    state.write()?;
    let result = build(&topo, &mut state, v).await;
    if let Err(e) = result {
        let undo = match down_lab(&state).await {
            Ok(()) => "the lab was removed".to_string(),
            Err(u) => format!("removing the lab also failed ({u:#}); run `cnet down`"),
        };
        return Err(crate::error::same_kind(&e, format!("{e:#}; {undo}")));
    }
    state.complete = true;
    state.write()
}

async fn build(topo: &Topology, state: &mut LabState, v: Verbosity) -> Result<()> {
    let routed = !topo.subnets.is_empty();
    let switch = create_switch(topo).await?;
    let hosts = hosts_file(topo);
    if routed {
        create_member(ROUTER, ROUTER, &hosts, state)?;
        for (k, s) in topo.subnets.iter().enumerate() {
            plug(&switch, &format!("{ROUTER}{}", k + 1), &subnet_bridge(k), ROUTER, &router_port(k), topo.options.underlay_mtu)
                .await
                .with_context(|| format!("cannot connect the router to subnet {}", s.net.trunc()))?;
        }
    }
    if topo.stage().has_nat() {
        // The gateway on the nodes' network (eth0) and on a second segment, the world, where
        // the outside host is (its eth0).
        let mtu = topo.options.underlay_mtu;
        create_member(GATEWAY_MEMBER, GATEWAY_MEMBER, &hosts, state)?;
        plug(&switch, GATEWAY_MEMBER, SWITCH_BRIDGE, GATEWAY_MEMBER, "eth0", mtu).await.context("cannot connect the gateway")?;
        plug(&switch, "gateway-world", WORLD_BRIDGE, GATEWAY_MEMBER, "eth1", 1500).await.context("cannot connect the gateway")?;
        create_member(OUTSIDE_MEMBER, OUTSIDE_MEMBER, &hosts, state)?;
        plug(&switch, OUTSIDE_MEMBER, WORLD_BRIDGE, OUTSIDE_MEMBER, "eth0", 1500)
            .await
            .context("cannot connect the outside host")?;
    }
    for n in &topo.nodes {
        create_member(&n.short_name(), &n.hostname, &hosts, state)?;
        cable(&switch, topo, n).await.with_context(|| format!("cannot connect {} to the lab's switch", n.hostname))?;
    }
    // The other members first: the network exists before the nodes are built on it.
    for m in members(topo) {
        run_builder(m, m, &member_runner_args(&topo.options, m, v), v, topo).await?;
    }
    for n in &topo.nodes {
        let place = format!("{} ({})", n.short_name(), n.hostname);
        run_builder(&n.short_name(), &place, &node_runner_args(&topo.options, n.index, v), v, topo).await?;
    }
    Ok(())
}

/// Run the node runner inside lab member `name` (a node, or the router), showing its steps.
async fn run_builder(name: &str, place: &str, args: &[String], v: Verbosity, topo: &Topology) -> Result<()> {
    if !matches!(v, Verbosity::Quiet) {
        let addr = match (topo.nodes.iter().find(|n| n.short_name() == name), name) {
            (Some(n), _) => n.ip.to_string(),
            (None, GATEWAY_MEMBER) => format!("{}/24 {}", crate::model::topology::GATEWAY, crate::model::topology::GATEWAY_OUT),
            (None, OUTSIDE_MEMBER) => crate::model::topology::OUTSIDE.to_string(),
            (None, _) => topo.subnets.iter().map(|s| format!("{}/{}", s.router, s.net.prefix)).collect::<Vec<_>>().join(" "),
        };
        say!("== {place}: {addr} ==");
    }
    let mut runner = enter::cnet(&member_ns(name), place, None, args, true)?;
    // stdin too: `--step` reads Enter there.
    runner.command().stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    // Awaited, not waited for: a Ctrl-C must be able to stop the build (the runner is
    // killed and the lab's `down` removes what it had made).
    let status = runner.run_async().await?;
    if !status.success() {
        bail!("{place}: its builder failed ({status}) without saying why");
    }
    Ok(())
}

/// The arguments that make `cnet up` inside a lab member build that member's part.
fn member_runner_args(opts: &Options, member: &str, v: Verbosity) -> Vec<String> {
    let mut a = node_runner_args(opts, 1, v);
    a.extend(["--member".into(), member.into()]);
    a
}

/// The lab nodes' /etc/hosts: localhost, the node itself (`{self}`), every node by its
/// hostname and short name, as the talk's Vagrant VMs had them.
fn hosts_file(topo: &Topology) -> String {
    let mut h = String::from("127.0.0.1\tlocalhost\n127.0.1.1\t{self}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for n in &topo.nodes {
        h.push_str(&format!("{}\t{} {}\n", n.ip.addr, n.hostname, n.short_name()));
    }
    h
}

/// The lab's network: a namespace of its own holding a bridge per L2 segment — one for the
/// whole lab on an L2 fabric, one per subnet on a routed fabric. The cables' far ends (the
/// nodes' enp0s8, the router's ports) go into the members under /run/cnet/lab.
async fn create_switch(topo: &Topology) -> Result<Netlink> {
    let path = switch_ns();
    std::fs::create_dir_all(path.parent().unwrap())?;
    let fd = ns::create_netns(&path, ns::open_netlink).context("cannot create the lab's switch namespace")?;
    let switch = Netlink::from_socket(fd, &lab_dir());
    let mut bridges: Vec<String> = if topo.subnets.is_empty() {
        vec![SWITCH_BRIDGE.to_string()]
    } else {
        (0..topo.subnets.len()).map(subnet_bridge).collect()
    };
    if topo.stage().has_nat() {
        bridges.push(WORLD_BRIDGE.to_string());
    }
    for b in bridges {
        switch.add_bridge(&b, LAB_ALIAS).await.context("cannot create the lab's switch bridge")?;
        switch.link_up(None, &b, false).await?;
    }
    Ok(switch)
}

/// The switch's bridge for the k-th subnet of a routed fabric (0-based).
fn subnet_bridge(k: usize) -> String {
    format!("subnet{}", k + 1)
}

/// A VM-like lab member (a node, or the router): a held child unshares its namespaces,
/// they are bound under /run/cnet/lab/NAME, and the child exits.
fn create_member(name: &str, hostname: &str, hosts: &str, state: &mut LabState) -> Result<()> {
    let nsp = member_ns(name);
    let dir = nsp.net.parent().unwrap();
    std::fs::create_dir_all(dir)?;
    match name.strip_prefix("node").and_then(|i| i.parse().ok()) {
        Some(index) => state.nodes.push(index),
        None => state.members.push(name.to_string()),
    }
    state.write()?;
    // The node's own /etc/hosts and /etc/resolv.conf, as a VM has: its name and the other
    // nodes' resolve at once (Python's http.server looks its own name up before it serves),
    // and with no DNS server here a lookup fails at once instead of waiting out the
    // machine's unreachable one.
    let (hosts_file, resolv) = (dir.join("hosts"), dir.join("resolv.conf"));
    std::fs::write(&hosts_file, hosts.replace("{self}", hostname)).context("cannot write the node's /etc/hosts")?;
    std::fs::write(&resolv, "# a cnet lab node: no DNS server; names come from /etc/hosts\n")
        .context("cannot write the node's /etc/resolv.conf")?;
    let etc = [(hosts_file, "/etc/hosts"), (resolv, "/etc/resolv.conf")];
    // First unpinned, then once on each CPU (see `as_new_node` on why binding may fail).
    let attempts = std::iter::once(None).chain(ns::allowed_cpus().into_iter().map(Some));
    let mut last = None;
    for cpu in attempts {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("__hold").stdin(Stdio::piped()).stdout(Stdio::null());
        ns::as_new_node(&mut cmd, hostname, cpu, &etc)?;
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                last = Some(anyhow::Error::new(e).context(format!("cannot create the namespaces of {hostname}")));
                continue;
            }
        };
        let bound = (|| {
            ns::persist_ns(child.id(), "mnt", &nsp.mnt)?;
            ns::persist_ns(child.id(), "net", &nsp.net)?;
            ns::persist_ns(child.id(), "uts", &nsp.uts)
        })();
        drop(child.stdin.take());
        child.wait()?;
        match bound {
            Ok(()) => return Ok(()),
            Err(e) => {
                for p in [&nsp.mnt, &nsp.net, &nsp.uts] {
                    ns::delete_ns_file(p)?;
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// The node's cable to the switch: `enp0s8` in the node, its other end on its segment's
/// bridge; then, inside the node, the VM's own network as its provider gave it: the address
/// (with the routed fabric's small prefix), and on a routed fabric the default route to the
/// router, as DHCP would set it. Cables are Ethernet's 1500 bytes, but 65535 for the udp-gso
/// backend, whose datagrams carry whole 64 KB packets (the node reads tun0's MTU off enp0s8).
async fn cable(switch: &Netlink, topo: &Topology, n: &crate::model::topology::Node) -> Result<()> {
    let mtu = topo.options.underlay_mtu;
    let bridge = match topo.subnets.iter().position(|s| s.nodes.contains(&n.index)) {
        Some(k) => subnet_bridge(k),
        None => SWITCH_BRIDGE.to_string(),
    };
    plug(switch, &n.short_name(), &bridge, &n.short_name(), UNDERLAY_DEV, mtu).await?;
    let node = Netlink::at(&node_ns(n.index).net, &lab_dir())?;
    node.add_addr(None, UNDERLAY_DEV, n.ip).await?;
    let gateway = topo.gateway_of(n.index).or(topo.stage().has_nat().then_some(crate::model::topology::GATEWAY));
    if let Some(gw) = gateway {
        let default = RouteSpec { dst: None, via: Some(gw), dev: UNDERLAY_DEV.into(), onlink: false };
        node.add_route(None, &default).await?;
    }
    Ok(())
}

/// A cable from the switch's `bridge` (port `port`) to lab member `member`, where its end is
/// `dev`; both ends up, and the member's lo too.
async fn plug(switch: &Netlink, port: &str, bridge: &str, member: &str, dev: &str, mtu: u32) -> Result<()> {
    // The member's end is its NIC, not cnet's: it stays out of cnet's group, as a VM's would.
    switch.add_veth(port, dev, &format!("{member}/net"), LAB_ALIAS, None).await?;
    if mtu != 1500 {
        switch.set_mtu(port, mtu).await?;
    }
    switch.set_master(port, bridge, false).await?;
    switch.link_up(None, port, false).await?;
    let m = Netlink::at(&member_ns(member).net, &lab_dir())?;
    m.link_up(None, "lo", false).await?;
    if mtu != 1500 {
        m.set_mtu(dev, mtu).await?;
    }
    m.link_up(None, dev, false).await
}

/// What is left of a lab on disk, whatever its record says: the nodes whose directories
/// are under /run/cnet/lab, and whether the switch is there. The namespaces bound there are
/// the lab's marks; with them `down` needs no record. None if there is nothing.
fn remains() -> Option<LabState> {
    let names: Vec<String> =
        std::fs::read_dir(lab_dir()).ok()?.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect();
    let mut nodes: Vec<u32> = names.iter().filter_map(|n| n.strip_prefix("node")?.parse().ok()).collect();
    nodes.sort_unstable();
    let members: Vec<String> = names
        .iter()
        .filter(|n| *n != "switch" && n.strip_prefix("node").and_then(|i| i.parse::<u32>().ok()).is_none())
        .cloned()
        .collect();
    let switch = switch_ns().exists();
    if nodes.is_empty() && members.is_empty() && !switch {
        return None;
    }
    Some(LabState {
        members,
        options: Options::new(crate::model::topology::Stage::Namespace),
        nodes,
        complete: false,
        // Only a bind of /run/cnet onto itself is cnet's to undo (a tmpfs there is not).
        made_run_mount: ns::is_bound_onto_itself(&run_dir()),
        made_netns_dir: false,
        faults: Vec::new(),
    })
}

/// `cnet down` for the lab: from its record, and from what is on disk when the record is
/// missing or unusable. Returns false if no lab was up.
pub async fn down(quiet: bool) -> Result<bool> {
    // A record half-written by an `up` killed before its rename (under the lock: stale).
    let _ = std::fs::remove_file(crate::apply::state::lab_state_path().with_extension("tmp"));
    let state = match LabState::read() {
        Ok(Some(mut state)) => {
            // Members made after the record's last write are removed as well.
            if let Some(r) = remains() {
                for n in r.nodes {
                    if !state.nodes.contains(&n) {
                        state.nodes.push(n);
                    }
                }
                for m in r.members {
                    if !state.members.contains(&m) {
                        state.members.push(m);
                    }
                }
            }
            state
        }
        Ok(None) => {
            let Some(state) = remains() else { return Ok(false) };
            down_lab(&state).await?;
            tell!(
                "cnet: the lab had no record ({} is missing): removed its {} node(s), found under {}",
                crate::apply::state::lab_state_path().display(),
                state.nodes.len(),
                lab_dir().display()
            );
            return Ok(true);
        }
        Err(e) if crate::apply::state::is_unusable(&e) => {
            let state = remains().unwrap_or_else(remains_none);
            down_lab(&state).await?;
            tell!("cnet: {e:#}; removed the lab's {} node(s) found under {} instead", state.nodes.len(), lab_dir().display());
            return Ok(true);
        }
        Err(e) => return Err(e),
    };
    down_lab(&state).await?;
    if !quiet {
        say!("lab removed: stage {}, {} node(s); nothing of it is left", state.options.stage, state.nodes.len());
    }
    Ok(true)
}

/// An empty lab, for a record that names nothing that is left.
fn remains_none() -> LabState {
    LabState {
        options: Options::new(crate::model::topology::Stage::Namespace),
        nodes: Vec::new(),
        complete: false,
        made_run_mount: false,
        made_netns_dir: false,
        faults: Vec::new(),
        members: Vec::new(),
    }
}

async fn down_lab(state: &LabState) -> Result<()> {
    let mut errors = Vec::new();
    // Undo each node's plan from inside, as on a real host (restores what it changed). The
    // nodes are independent: all at once, so that their tunnels stop in parallel.
    let mut running = Vec::new();
    let members = member_names(state);
    for name in members.iter().rev() {
        let nsp = member_ns(name);
        if ns::is_ns_file(&nsp.net) && ns::is_ns_file(&nsp.mnt) {
            let args = ["down", "--host", "--quiet", "--in-lab"].map(String::from);
            let mut remover = match enter::cnet(&nsp, name, None, &args, false) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            // Their own process group: a second Ctrl-C at the terminal must not cut the
            // removal short half-way. What they say on stderr (a record they found unusable)
            // reaches the user as it is.
            remover.command().stdout(Stdio::null()).process_group(0);
            match remover.spawn() {
                Ok(r) => running.push(r),
                Err(e) => errors.push(e),
            }
        }
    }
    for r in running {
        if let Err(e) = r.wait() {
            errors.push(e);
        }
    }
    let (mnt, net) = (crate::apply::process::Members::scan("mnt"), crate::apply::process::Members::scan("net"));
    for name in members.iter().rev() {
        let nsp = member_ns(name);
        // Whatever still runs in the node (a demo server, a shell) goes with the VM.
        let mut pids = mnt.of(&nsp.mnt);
        pids.extend(net.of(&nsp.net));
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            if let Err(e) = crate::apply::process::stop_process(pid) {
                errors.push(e.context(name.clone()));
            }
        }
    }
    // The switch's ports take the nodes' enp0s8 ends with them: one request for all.
    if ns::is_ns_file(&switch_ns()) {
        let deleted = match Netlink::at(&switch_ns(), &lab_dir()) {
            Ok(switch) => switch.del_cnet_group().await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            errors.push(e.context("cannot delete the switch's links"));
        }
    }
    for name in &members {
        let nsp = member_ns(name);
        for p in [&nsp.net, &nsp.uts, &nsp.mnt] {
            if let Err(e) = ns::delete_ns_file(p) {
                errors.push(e);
            }
        }
        let dir = nsp.net.parent().unwrap();
        for f in ["hosts", "resolv.conf"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let _ = std::fs::remove_dir(dir);
    }
    if let Err(e) = ns::delete_ns_file(&switch_ns()) {
        errors.push(e);
    }
    let _ = std::fs::remove_dir(switch_ns().parent().unwrap());
    let _ = std::fs::remove_dir(lab_dir());
    if !errors.is_empty() {
        return Err(anyhow!(crate::error::join_errors(&errors)));
    }
    LabState::remove()?;
    if state.made_run_mount {
        ns::unmount_dir(&run_dir())?;
    }
    if state.made_netns_dir {
        let _ = std::fs::remove_dir("/run/netns"); // only if still empty
    }
    Ok(())
}

/// The lab's record, for commands that use the lab (not `up` or `down`): one line saying
/// what to do when there is none or it is unusable.
fn lab_in_use() -> Result<LabState> {
    match LabState::read() {
        Ok(Some(s)) => Ok(s),
        Ok(None) if remains().is_some() => bail!(
            "a lab's namespaces are here with no record ({} is missing): run `cnet down` to remove them",
            crate::apply::state::lab_state_path().display()
        ),
        Ok(None) => bail!("no lab is up: start one with `cnet up <stage>`"),
        Err(e) if crate::apply::state::is_unusable(&e) => bail!("{e:#}: run `cnet down` to remove the lab by its marks"),
        Err(e) => Err(e),
    }
}

/// The lab's topology and one node of it, by name (`node1`, `2-single-node`, `1`).
pub fn find_node(name: &str) -> Result<(LabState, u32)> {
    let state = lab_in_use()?;
    let topo = Topology::new(state.options.clone())?;
    let Some(n) = topo.find_node(name) else {
        let names: Vec<_> = topo.nodes.iter().map(|n| format!("{} ({})", n.short_name(), n.hostname)).collect();
        bail!("the lab has no node '{name}': it has {}", names.join(", "));
    };
    Ok((state, n.index))
}

/// Split `node1/con1` into the lab member and a container of it, checked against the lab:
/// a node (node1, 2, 3-multi-node-1) or another member (router).
fn target(target: &str) -> Result<(NodeNs, Option<String>)> {
    let (node, container) = match target.split_once('/') {
        Some((n, c)) => (n, Some(c)),
        None => (target, None),
    };
    if let Ok(state) = lab_in_use()
        && state.members.iter().any(|m| m == node)
    {
        if container.is_some() {
            bail!("{node} has no containers");
        }
        return Ok((member_ns(node), None));
    }
    let (state, index) = find_node(node)?;
    if let Some(c) = container {
        let topo = Topology::new(state.options.clone())?;
        if !topo.node(index)?.containers.iter().any(|x| x.name == c) {
            bail!(
                "{node} has no container '{c}' (stage {} has {})",
                state.options.stage,
                topo.node(index)?.containers.iter().map(|x| x.name.as_str()).take(5).collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok((node_ns(index), container.map(str::to_string)))
}

/// A program that runs inside a lab member, or one of a node's containers (`node1/con1`).
pub fn command_in(target_name: &str, program: &str, args: &[String]) -> Result<Command> {
    let (nsp, container) = target(target_name)?;
    enter::command_in(&nsp, container.as_deref(), program, args)
}

/// cnet itself inside a lab member or one of a node's containers (`cnet capture node1 ...`).
pub fn cnet_in(target_name: &str, args: &[String]) -> Result<enter::CnetInNode> {
    let (nsp, container) = target(target_name)?;
    enter::cnet(&nsp, target_name, container.as_deref(), args, false)
}

/// Run the same cnet subcommand inside every node and gather each one's exit status and
/// stdout (a JSON answer); a node's failure comes back as an error naming the node.
pub fn in_every_node(args: &[&str]) -> Result<Vec<(u32, ExitStatus, Vec<u8>)>> {
    let state = lab_in_use()?;
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut out = Vec::new();
    for index in &state.nodes {
        if !ns::is_ns_file(&node_ns(*index).net) {
            bail!("the lab is incomplete (node{index} is gone): run `cnet down` to remove the rest");
        }
        let mut c = enter::cnet(&node_ns(*index), &format!("node{index}"), None, &args, false)?;
        c.command().stdin(Stdio::null());
        let (status, stdout) = c.run()?;
        out.push((*index, status, stdout));
    }
    Ok(out)
}

/// Whether a lab is here: its record, or what is left of one.
pub fn is_up() -> bool {
    crate::apply::state::lab_state_path().exists() || remains().is_some()
}

/// What to try once the lab is up, for its stage, from the machine's own shell: said once,
/// after every node is built.
pub fn print_next_steps(topo: &Topology) {
    let stage = topo.stage();
    say!("\nThe lab is up: stage {} ({}) on {} node(s). Try this next:", stage.number(), stage.name(), topo.nodes.len());
    match stage {
        _ if topo.nodes[0].containers.is_empty() && stage != crate::model::topology::Stage::Namespace => {
            say!("  cnet exec node1 -- ip -br addr    # the node's part alone: no containers of its own");
        }
        crate::model::topology::Stage::Namespace => {
            say!("  cnet exec node1/con -- ping -c1 10.0.0.10    # the node answers, TTL 64");
            say!("  cnet shell node1    # inside the node, the talk's commands work as they are:");
            say!("    ip netns exec con python3 -m http.server 8000 &");
            say!("    curl --retry 5 --retry-connrefused -s 172.16.0.1:8000 | head -3");
        }
        crate::model::topology::Stage::SingleNode => {
            let c = &topo.nodes[0].containers;
            let second = c.get(1).unwrap_or(&c[0]);
            say!("  cnet exec node1/{} -- ping -c1 {}    # TTL 64: same L2", c[0].name, second.addr.addr);
        }
        _ => {
            let far = topo.nodes[1].containers[0].addr.addr;
            say!("  cnet exec node1/con1 -- ping -c1 {far}    # TTL 62: both nodes route it");
            say!("  cnet exec node1 -- ping -c1 {far}    # TTL 63: node 2 routes it");
            if stage.has_overlay() {
                say!("  cnet capture node2 enp0s8 --only icmp -c 2    # the ICMP inside UDP");
            }
        }
    }
    say!("  cnet test    # the talk's checks; cnet down removes it all");
}

/// Note in the lab's record that `fault` was put into `node` (status shows it).
pub fn record_fault(node: &str, fault: &str) -> Result<()> {
    let (mut state, index) = find_node(node)?;
    state.faults.push(format!("{fault} on node{index}"));
    state.write()
}
