//! `cnet status`: what is up, read back from the kernel, and whether it matches the plan.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result};
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};

use crate::apply::netlink::{Netlink, addr_views, dump_addrs, dump_links, dump_routes, link_view, route_views};
use crate::apply::process::is_cnet_process;
use crate::apply::state::NodeJournal;
use crate::model::plan::Step;
use crate::model::topology::Ipv4Net;
use crate::model::wire::WireFormat;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkState {
    pub name: String,
    pub kind: Option<String>,
    pub state: String,
    pub up: bool,
    pub master: Option<String>,
    /// For a veth on the node: its other end, `container:name`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peer: Option<String>,
    pub mtu: Option<u32>,
    pub alias: Option<String>,
    pub addrs: Vec<Ipv4Net>,
    /// For a VXLAN device: its VNI and the UDP port it sends to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vxlan: Option<(u32, u16)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteState {
    pub dst: String,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
    /// `onlink`: the gateway is taken as on the link (stage 4's VXLAN routes).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub onlink: bool,
}

impl std::fmt::Display for RouteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(v) = self.via {
            write!(f, " via {v}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

/// One network namespace as the kernel reports it.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct NsSnapshot {
    pub links: Vec<LinkState>,
    pub routes: Vec<RouteState>,
}

impl NsSnapshot {
    fn link(&self, name: &str) -> Option<&LinkState> {
        self.links.iter().find(|l| l.name == name)
    }
}

pub async fn snapshot(h: &Handle) -> Result<NsSnapshot> {
    let links: Vec<_> = dump_links(h).await?.iter().map(link_view).collect();
    let addrs = addr_views(&dump_addrs(h).await?);
    let routes = route_views(&dump_routes(h).await?);
    let name_of = |i: u32| links.iter().find(|l| l.index == i).map(|l| l.name.clone());
    Ok(NsSnapshot {
        links: links
            .iter()
            .map(|l| LinkState {
                name: l.name.clone(),
                kind: l.kind.clone(),
                state: l.oper.clone(),
                up: l.up,
                master: l.master.and_then(name_of),
                peer: None,
                mtu: l.mtu,
                alias: l.alias.clone(),
                addrs: addrs.iter().filter(|a| a.dev == l.index).map(|a| a.addr).collect(),
                vxlan: l.vxlan,
            })
            .collect(),
        routes: routes
            .iter()
            .map(|r| RouteState {
                dst: r.dst.map_or("default".into(), |d| d.to_string()),
                via: r.via,
                dev: r.dev.and_then(name_of),
                onlink: r.onlink,
            })
            .collect(),
    })
}

/// Read a container's state with a fresh handle.
async fn container_snapshot(nl: &Netlink, name: &str) -> Result<NsSnapshot> {
    let h = nl.handle(Some(name)).with_context(|| format!("container {name}"))?;
    snapshot(&h).await
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: u32,
    pub hostname: String,
    pub stage: String,
    pub namespaces: Vec<String>,
    pub links: Vec<LinkState>,
    pub routes: Vec<RouteState>,
    pub containers: BTreeMap<String, NsSnapshot>,
    /// Plan steps whose effect is in the kernel, of those that can be read back.
    pub verified: usize,
    pub checked: usize,
    /// The commands whose effect is missing.
    pub missing: Vec<String>,
    pub tunnel: Option<serde_json::Value>,
    /// What carries the overlay from this node, as it runs: cnet's tunnel (while its process
    /// runs) or the kernel's VXLAN device (its port and VNI read back from the kernel).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub overlay: Option<Carrier>,
    /// Stages 5-6: the live NAT translations in this node's conntrack table.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub translations: Vec<Translation>,
    /// Containers a runtime attached here through cnet's CNI plugin, from their leases, each
    /// read back from the kernel.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub runtime_containers: Vec<RuntimeContainer>,
}

/// One connection conntrack has translated: who sent it where, and what it became.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Translation {
    pub proto: String,
    /// The client as it sent: source and destination before any rewriting.
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    /// DNAT: who really answers (a published port's container, a service's backend).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub answered_by: Option<SocketAddrV4>,
    /// SNAT (masquerade): the source the other end sees.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seen_as: Option<SocketAddrV4>,
}

impl std::fmt::Display for Translation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // ICMP has no ports (conntrack keeps the echo id there): addresses only.
        let at = |a: SocketAddrV4| if self.proto == "icmp" { a.ip().to_string() } else { a.to_string() };
        write!(f, "{:<4} {} -> {}", self.proto, at(self.from), at(self.to))?;
        if let Some(b) = self.answered_by {
            write!(f, ", answered by {}", at(b))?;
        }
        if let Some(s) = self.seen_as {
            write!(f, ", seen as {}", at(s))?;
        }
        Ok(())
    }
}

/// The translated connections in this namespace's conntrack table, in the kernel's (hash)
/// order. A reply tuple that is not the original turned round is the NAT.
pub fn translations() -> Vec<Translation> {
    let Ok(entries) = crate::nft::Nft::open().and_then(|mut n| n.conntrack()) else { return Vec::new() };
    entries
        .iter()
        .filter(|c| c.is_dnat() || c.is_snat())
        .map(|c| {
            let at = |a, p| SocketAddrV4::new(a, p);
            Translation {
                proto: match c.proto {
                    6 => "tcp".into(),
                    17 => "udp".into(),
                    1 => "icmp".into(),
                    n => n.to_string(),
                },
                from: at(c.orig.src, c.orig.sport),
                to: at(c.orig.dst, c.orig.dport),
                answered_by: c.is_dnat().then(|| at(c.reply.src, c.reply.sport)),
                seen_as: c.is_snat().then(|| at(c.reply.dst, c.reply.dport)),
            }
        })
        .collect()
}

/// A container a runtime attached through cnet's CNI plugin (src/cni), as its lease says
/// and with what differs in the kernel from what ADD made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuntimeContainer {
    /// The runtime's name for it, else its ID's first 12 characters.
    pub name: String,
    pub container_id: String,
    pub ifname: String,
    pub addr: Ipv4Net,
    pub netns: String,
    pub host_veth: String,
    pub network: String,
    /// Empty when it is as ADD made it.
    pub problems: Vec<String>,
}

/// The runtime's containers on this node, each checked.
async fn runtime_containers(nl: &Netlink) -> Vec<RuntimeContainer> {
    let mut v = Vec::new();
    for (bridge, l) in crate::cni::attach::attachments() {
        let problems = crate::cni::attach::inspect(nl, &l, &bridge).await;
        v.push(RuntimeContainer {
            name: l.label(),
            container_id: l.container_id,
            ifname: l.ifname,
            addr: l.ip,
            netns: l.netns,
            host_veth: l.host_veth,
            network: l.network,
            problems,
        });
    }
    v
}

/// What carries stage 4's overlay between the nodes' devices: the talk's wire format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Carrier {
    /// cnet's tunnel: each packet read from tun0 in a UDP datagram, port to port.
    Udp { port: u16, wire: WireFormat },
    /// The kernel's VXLAN: each Ethernet frame from vxlan0 in a VXLAN header in UDP.
    Vxlan { port: u16, vni: u32 },
    /// cnet's TC eBPF programs: the udp backend's wire, with no process in the path.
    Ebpf { port: u16 },
}

impl std::fmt::Display for Carrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Carrier::Udp { port, wire: WireFormat::Raw } => write!(f, "UDP {port}, one IP packet per datagram"),
            Carrier::Udp { port, wire: WireFormat::TunPi } => write!(f, "UDP {port}, a TUN header + one IP packet per datagram"),
            Carrier::Udp { port, wire: WireFormat::Gso } => write!(f, "UDP {port}, whole TCP super-packets (gso frames)"),
            Carrier::Vxlan { port, vni } => write!(f, "VXLAN {port}, VNI {vni}, one Ethernet frame per datagram"),
            Carrier::Ebpf { port } => write!(f, "UDP {port}, one IP packet per datagram, by TC eBPF programs"),
        }
    }
}

/// Read this node back. None when nothing is up.
pub async fn node_status() -> Result<Option<NodeStatus>> {
    let Some(crate::apply::state::NodeRecord { header, done, .. }) = NodeJournal::read()? else { return Ok(None) };
    let topo = header.topology()?;
    let plan = &header.steps;
    let nl = Netlink::here(&header.netns_dir)?;
    let node_snap = snapshot(&nl.node_handle()).await?;
    let mut namespaces: Vec<String> = std::fs::read_dir(&header.netns_dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    namespaces.sort();
    let mut containers = BTreeMap::new();
    for c in &topo.node(header.node)?.containers {
        if nl.netns_path(&c.name).exists()
            && let Ok(s) = container_snapshot(&nl, &c.name).await
        {
            containers.insert(c.name.clone(), s);
        }
    }
    // Name each cnet veth's other end (the kernel reports only its index, in another namespace).
    let mut node_snap = node_snap;
    for s in plan {
        if let Step::AddVeth { name, peer, peer_netns } = s {
            let present = containers.get(peer_netns).is_some_and(|c| c.links.iter().any(|l| &l.name == peer));
            if let Some(l) = node_snap.links.iter_mut().find(|l| &l.name == name) {
                l.peer = Some(if present { format!("{peer_netns}:{peer}") } else { format!("{peer_netns}:{peer} (missing)") });
            }
        }
    }
    let runtime_containers = runtime_containers(&nl).await;
    for rc in &runtime_containers {
        if let Some(l) = node_snap.links.iter_mut().find(|l| l.name == rc.host_veth) {
            l.peer = Some(format!("{}:{}", rc.name, rc.ifname));
        }
    }
    let mut verified = 0;
    let mut checked = 0;
    let mut missing = Vec::new();
    let mut tunnel = None;
    let mut overlay = None;
    // cnet's nftables table, read once: whether it is there, and how many rules each chain holds.
    let nat = if plan.iter().any(|s| matches!(s, Step::AddNatTable)) { nat_view() } else { None };
    let mut nat_rules_so_far: std::collections::HashMap<&str, usize> = Default::default();
    for s in plan {
        let snap = |netns: &Option<String>| match netns {
            None => Some(&node_snap),
            Some(n) => containers.get(n),
        };
        let ok = match s {
            Step::AddNetns { name } => Some(nl.netns_path(name).exists()),
            Step::AddVxlan { name, .. } => {
                let vxlan = node_snap.link(name).and_then(|l| l.vxlan);
                overlay = vxlan.map(|(vni, port)| Carrier::Vxlan { port, vni });
                Some(node_snap.link(name).is_some())
            }
            Step::AddVeth { name, .. } | Step::AddBridge { name } | Step::AddTun { name } => Some(node_snap.link(name).is_some()),
            Step::SetMaster { dev, master, .. } => Some(node_snap.link(dev).and_then(|l| l.master.as_deref()) == Some(master)),
            Step::SetMtu { dev, mtu } => Some(node_snap.link(dev).and_then(|l| l.mtu) == Some(*mtu)),
            Step::AddAddr { netns, dev, addr } => {
                Some(snap(netns).and_then(|s| s.link(dev)).is_some_and(|l| l.addrs.contains(addr)))
            }
            Step::LinkUp { netns, dev, .. } => Some(snap(netns).and_then(|s| s.link(dev)).is_some_and(|l| l.up)),
            Step::AddRoute { netns, dst, via, dev, .. } => {
                let want = dst.map_or("default".to_string(), |d| d.trunc().to_string());
                Some(
                    snap(netns).is_some_and(|s| {
                        s.routes.iter().any(|r| r.dst == want && r.via == *via && r.dev.as_deref() == Some(dev))
                    }),
                )
            }
            // The bridge FDB is not part of the snapshot; the checks prove it.
            Step::AddFdb { .. } => None,
            Step::Sysctl { key, value } => Some(crate::apply::sysctl::read(key).ok().as_deref() == Some(value.as_str())),
            Step::AddNatTable | Step::AddNatChain { .. } => Some(nat.is_some()),
            Step::AddNatRule { chain, .. } => {
                let n = nat_rules_so_far.entry(chain.name()).or_default();
                *n += 1;
                Some(nat.as_ref().is_some_and(|t| t.get(chain.name()).copied().unwrap_or(0) >= *n))
            }
            Step::StartServer { listen, .. } => {
                Some(!crate::apply::process::cnet_processes_anywhere(&["serve", "--listen", &listen.to_string()]).is_empty())
            }
            // The port's mode is not part of the snapshot; the checks prove it.
            Step::SetHairpin { .. } => None,
            Step::AddClsact { dev } => Some(crate::apply::ebpf::has_clsact(&nl, dev).await.unwrap_or(false)),
            Step::LoadEbpf { local, .. } => {
                tunnel = ebpf_counters();
                if tunnel.is_some() {
                    overlay = Some(Carrier::Ebpf { port: local.port() });
                }
                Some(tunnel.is_some())
            }
            Step::AttachBpf { dev, hook, program, .. } => {
                Some(crate::apply::ebpf::has_filter(&nl, dev, *hook, program).await.unwrap_or(false))
            }
            Step::StartTunnel { local, wire, .. } => {
                let pid = done.iter().find_map(|d| d.pid).filter(|p| is_cnet_process(*p, &["tunnel", &local.to_string()]));
                tunnel = fresh_tunnel_counters(pid).await;
                if pid.is_some() {
                    overlay = Some(Carrier::Udp { port: local.port(), wire: *wire });
                }
                Some(pid.is_some())
            }
        };
        if let Some(ok) = ok {
            checked += 1;
            if ok { verified += 1 } else { missing.push(s.command()) }
        }
    }
    Ok(Some(NodeStatus {
        node: header.node,
        hostname: crate::run::node::hostname(),
        stage: topo.stage().name().to_string(),
        namespaces,
        links: node_snap.links,
        routes: node_snap.routes,
        containers,
        verified,
        checked,
        missing,
        tunnel,
        overlay,
        translations: if nat.is_some() { translations() } else { Vec::new() },
        runtime_containers,
    }))
}

/// cnet's nftables table here: rules per chain, or None if there is no such table of cnet's.
fn nat_view() -> Option<std::collections::HashMap<String, usize>> {
    let mut n = crate::nft::Nft::open().ok()?;
    let t = n.find_table(crate::nft::Family::Ip, crate::model::nat::TABLE).ok()??;
    if !t.is_cnet() {
        return None;
    }
    let mut counts = std::collections::HashMap::new();
    for r in n.list_rules(crate::nft::Family::Ip, crate::model::nat::TABLE).ok()? {
        *counts.entry(r.chain).or_insert(0) += 1;
    }
    Some(counts)
}

/// The eBPF datapath's counters, read from its per-CPU map now, in the userspace tunnel's
/// shape (tunnel::Stats) so that both read alike.
fn ebpf_counters() -> Option<serde_json::Value> {
    let c = crate::apply::ebpf::counters()?;
    let get = |name: &str| c.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
    let st = crate::tunnel::Stats {
        datapath: "ebpf: TC programs (tun0 egress encapsulates, the underlay's ingress decapsulates)".into(),
        at_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        tun_to_udp: crate::tunnel::Direction { packets: get("tx_packets"), bytes: get("tx_bytes") },
        udp_to_tun: crate::tunnel::Direction { packets: get("rx_packets"), bytes: get("rx_bytes") },
        drops: crate::tunnel::Drops {
            unknown_peer: get("unknown_peer"),
            truncated: get("truncated"),
            malformed: get("malformed"),
            not_ipv4: get("not_ipv4"),
            spoofed_source: get("spoofed_source"),
            tun_write_error: get("tun_write_error"),
            tun_not_ipv4: get("tun_not_ipv4"),
            no_route: get("no_route"),
            send_error: get("send_error"),
            bad_offload: get("bad_offload"),
            gso_batch: get("gso_batch"),
        },
        syscalls: Default::default(),
    };
    serde_json::to_value(st).ok()
}

/// The tunnel's counters, fresh: it writes them four times a second, and at once when
/// asked with SIGUSR1; wait up to 200 ms for that write, else take what is there.
async fn fresh_tunnel_counters(pid: Option<u32>) -> Option<serde_json::Value> {
    let path = crate::apply::launch::stats_path();
    let read = || std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let asked = now_ms();
    if let Some(pid) = pid
        && crate::sys::process::signal(pid, nix::sys::signal::Signal::SIGUSR1)
    {
        for _ in 0..40 {
            if read().is_some_and(|v| v["at_ms"].as_u64().unwrap_or(0) >= asked) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    read()
}

fn link_line(l: &LinkState) -> String {
    // As `ip -br link` would sum it up: down, up, or up without a carrier. A bridge or a
    // TUN/VXLAN device reports its operational state as "unknown" while it works: up.
    let state = match (l.up, l.state.as_str()) {
        (false, _) => "down",
        (true, "up" | "unknown") => "up",
        (true, "lowerlayerdown" | "down") => "no-carrier",
        (true, other) => other,
    };
    let mut s = format!("{:<10} {:<7} {:<10}", l.name, l.kind.as_deref().unwrap_or("-"), state);
    if let Some(m) = &l.master {
        s.push_str(&format!(" master {m}"));
    }
    if let Some(p) = &l.peer {
        s.push_str(&format!(" peer {p}"));
    }
    if let Some(mtu) = l.mtu
        && mtu != 1500
        && l.name != "lo"
    {
        s.push_str(&format!(" mtu {mtu}"));
    }
    for a in &l.addrs {
        s.push_str(&format!(" {a}"));
    }
    s.trim_end().to_string()
}

pub fn print(st: &NodeStatus) {
    let verdict = if st.missing.is_empty() {
        format!("matches the plan ({}/{} steps verified)", st.verified, st.checked)
    } else {
        format!("DIFFERS from the plan: {} of {} steps missing", st.missing.len(), st.checked)
    };
    println!("node{} ({}): stage {}, {verdict}", st.node, st.hostname, st.stage);
    for m in &st.missing {
        println!("  missing: {m}");
    }
    println!("  namespaces: {}", if st.namespaces.is_empty() { "-".into() } else { st.namespaces.join(" ") });
    println!("  links:");
    for l in &st.links {
        println!("    {}", link_line(l));
    }
    println!("  routes:");
    for r in &st.routes {
        println!("    {r}");
    }
    for (name, c) in &st.containers {
        println!("  {name}:");
        for l in c.links.iter().filter(|l| l.name != "lo" || !l.up) {
            println!("    {}", link_line(l));
        }
        for r in &c.routes {
            println!("    route {r}");
        }
    }
    if !st.runtime_containers.is_empty() {
        println!("  runtime containers (attached by cnet's CNI plugin):");
        for c in &st.runtime_containers {
            let verdict = if c.problems.is_empty() { "ok" } else { "DIFFERS" };
            println!("    {:<12} {:<6} {:<18} {:<13} {}  {verdict}", c.name, c.ifname, c.addr.to_string(), c.host_veth, c.netns);
            for p in &c.problems {
                println!("      {p}");
            }
        }
    }
    if let Some(t) = &st.tunnel {
        println!("  tunnel: {}", tunnel_line(t));
    }
    if !st.translations.is_empty() {
        println!("  translations (conntrack, live; from -> to as sent):");
        for t in st.translations.iter().take(TRANSLATIONS_SHOWN) {
            println!("    {t}");
        }
        if st.translations.len() > TRANSLATIONS_SHOWN {
            println!("    ... {} more (--json lists every one)", st.translations.len() - TRANSLATIONS_SHOWN);
        }
    }
}

/// Translations printed; `--json` has them all.
const TRANSLATIONS_SHOWN: usize = 12;

/// The tunnel's counters on two lines: its data path and traffic, then drops by reason.
pub fn tunnel_line(t: &serde_json::Value) -> String {
    let Ok(st) = serde_json::from_value::<crate::tunnel::Stats>(t.clone()) else { return t.to_string() };
    let drops = serde_json::to_value(&st.drops).unwrap_or_default();
    let reasons: Vec<String> = drops
        .as_object()
        .map(|m| m.iter().filter(|(_, v)| v.as_u64() != Some(0)).map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let age = match now.saturating_sub(st.at_ms) {
        _ if st.at_ms == 0 => String::new(),
        ms if ms < 1000 => " (counters read just now)".into(),
        ms => format!(" (counters as of {:.1} s ago: the tunnel did not answer)", ms as f64 / 1000.0),
    };
    format!(
        "data path {}{age}\n    tun0 -> udp: {} packets ({} B); udp -> tun0: {} packets ({} B)\n    drops: {}",
        st.datapath,
        st.tun_to_udp.packets,
        st.tun_to_udp.bytes,
        st.udp_to_tun.packets,
        st.udp_to_tun.bytes,
        if reasons.is_empty() { "none".into() } else { reasons.join(", ") }
    )
}
