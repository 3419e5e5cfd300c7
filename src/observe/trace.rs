//! `cnet trace FROM TO`: the path a packet takes, hop by hop, read from the live kernel —
//! the talk's "Routing rules 101" slide applied to the network that is up.
//!
//! Two halves. A *hop* is evaluated inside one network namespace (a node or a container),
//! by asking that namespace's kernel over netlink: the route it would use (RTM_GETROUTE for
//! the destination; for a packet that arrived, with RTA_IIF and RTA_SRC, so that the kernel
//! applies its input checks), the route that matched (RTM_F_FIB_MATCH), the next hop's MAC
//! (the neighbour table), the interface it leaves by, and for tun0 or vxlan0 where it is
//! encapsulated to. When the kernel refuses a packet, the hop says why from what the kernel
//! itself reads: forwarding and rp_filter sysctls, the route back to the source, the link
//! states, the tunnel process. The *walk* goes from namespace to namespace with what each
//! hop answered ("leaves by enp0s8 towards 10.0.0.20: that is node2"), using the topology
//! only to name who owns an address.
//!
//! In the lab each hop runs inside its node (and container) through `run::enter`, as the
//! hidden `cnet __trace-hop` answering JSON; on a host (`--host`) hops run in this process,
//! and the walk ends where the packet leaves the machine.
//!
//! Here: what a trace is, the walk, and the API (`trace`); `hop.rs` evaluates one hop,
//! `text.rs` prints a trace.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::apply::state::{LabState, NodeJournal};
use crate::model::plan;
use crate::model::topology::{CLUSTER_PODS, GATEWAY, GATEWAY_OUT, OUTSIDE, Topology, UNDERLAY_DEV};
use crate::run::{enter, lab};

mod hop;
mod text;

use hop::evaluate_here;
pub use text::render;

/// A packet that needs more hops than this is going round in circles (its TTL would end it
/// at 64 anyway; this bounds the walk whatever the TTL).
const MAX_HOPS: usize = 70;

/// ping's default packet: 56 bytes of data, 8 of ICMP header, 20 of IPv4 header.
pub const DEFAULT_SIZE: u16 = 84;

// ---------------------------------------------------------------------------------------
// What a trace is
// ---------------------------------------------------------------------------------------

/// How a packet reaches a hop (none at the source: a program there sends it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Arrival {
    /// Through a link: a veth end, the underlay, or a bridge port. `next_hop` is the address
    /// the sender resolved (the frame is for whoever has it: on a bridge port, the node
    /// itself if the address is its own, else another port); `mac` the MAC it resolved to.
    Link { dev: String, next_hop: Option<Ipv4Addr>, mac: Option<String> },
    /// Out of cnet's tunnel: a UDP datagram from `from` to `to`, arriving on `underlay`.
    Tunnel { from: SocketAddrV4, to: SocketAddrV4, underlay: String },
    /// Out of the kernel's VXLAN: a UDP datagram from `from` to `to`:`port`, arriving on `underlay`.
    Vxlan { from: Ipv4Addr, to: Ipv4Addr, port: u16, vni: Option<u32>, underlay: String },
}

/// What one hop is asked: the packet, and how it got there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopQuery {
    pub dst: Ipv4Addr,
    /// None at the source: the route chooses it (its `src`).
    pub src: Option<Ipv4Addr>,
    /// None at the source: net.ipv4.ip_default_ttl there.
    pub ttl: Option<u8>,
    /// The IP packet's total length in bytes.
    pub size: u16,
    pub arrival: Option<Arrival>,
}

/// One of the hop's checks (forwarding, rp_filter, ...), passed or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The next hop and its MAC, from the neighbour table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHop {
    pub addr: Ipv4Addr,
    pub dev: String,
    /// None when the table has no usable entry (the kernel would ARP first) or the link
    /// has no link layer (tun0).
    pub mac: Option<String>,
    /// The entry's state (REACHABLE, STALE, PERMANENT...), "none" (would ARP), or "noarp".
    pub state: String,
}

/// Where the packet leaves the hop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Out {
    pub dev: String,
    pub kind: Option<String>,
    /// Leaving by a bridge: the port its forwarding table sends the MAC to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub port: Option<String>,
    pub mtu: Option<u32>,
    /// The TTL it leaves with.
    pub ttl: u8,
    /// Its size on the way out (the largest fragment, if the source fragments it).
    pub size: u16,
}

/// Where an overlay wraps the packet in UDP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encap {
    /// "udp" (cnet's tunnel), "ebpf" (cnet's TC programs: the same wire) or "vxlan" (the kernel's).
    pub kind: String,
    /// 10.0.0.10:9000 for the tunnel; 10.0.0.10 for VXLAN (its source port is a hash).
    pub local: String,
    /// 10.0.0.20:9000, or 10.0.0.20:4789 (a flooded VXLAN frame: every remote, comma-separated).
    pub remote: String,
    pub remote_ip: Ipv4Addr,
    pub port: u16,
    /// The tunnel process (udp).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pid: Option<u32>,
    /// The tunnel's framing (udp).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub wire: Option<String>,
    /// The peer's subnet that holds the destination (udp), as 172.16.1.0/24.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vni: Option<u32>,
    /// VXLAN: every remote the frame is flooded to, when no entry names the MAC.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub flooded: Vec<Ipv4Addr>,
    pub outer_ttl: u8,
    pub outer_size: u16,
    /// How the outer packet is routed, as `ip route get` prints it.
    pub outer_route: Option<String>,
    pub outer_dev: Option<String>,
    pub outer_next_hop: Option<NextHop>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Outcome {
    /// The source sends it.
    Sent,
    /// Routed on: this namespace forwards it.
    Forwarded,
    /// A bridge passes it from port to port (L2: nothing routed, the TTL unchanged).
    Switched,
    /// For this namespace: delivered to its own address.
    Delivered,
    Dropped {
        reason: String,
    },
}

/// One hop: a namespace the packet passes, what its kernel decides there, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// node1, node1/con1 (lab); node, con1 (host). Set by the walk.
    #[serde(default)]
    pub at: String,
    /// Taken out of the overlay here (the tunnel or VXLAN that decapsulated it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decap: Option<String>,
    /// The interface the IP layer sees it arrive on (br0 for a bridge port).
    pub arrived_on: Option<String>,
    /// The bridge port it came in through.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub port: Option<String>,
    /// The TTL it arrives with (None at the source).
    pub ttl_in: Option<u8>,
    /// The packet's source address.
    pub src: Option<Ipv4Addr>,
    pub checks: Vec<HopCheck>,
    /// The kernel's routing decision, as `ip route get` prints it.
    pub route: Option<String>,
    /// The route that matched, as `ip route` lists it, and its kind (Routing rules 101).
    pub matched: Option<String>,
    pub next_hop: Option<NextHop>,
    pub out: Option<Out>,
    pub encap: Option<Encap>,
    pub outcome: Outcome,
    /// Anything else worth saying (fragmenting at the source, a failed ARP entry).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub notes: Vec<String>,
}

impl Hop {
    fn new() -> Hop {
        Hop {
            at: String::new(),
            decap: None,
            arrived_on: None,
            port: None,
            ttl_in: None,
            src: None,
            checks: Vec::new(),
            route: None,
            matched: None,
            next_hop: None,
            out: None,
            encap: None,
            outcome: Outcome::Sent,
            notes: Vec::new(),
        }
    }

    fn dropped(mut self, reason: impl Into<String>) -> Hop {
        self.outcome = Outcome::Dropped { reason: reason.into() };
        self
    }
}

/// How the walk ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    Delivered {
        at: String,
        ttl: u8,
    },
    Dropped {
        at: String,
        reason: String,
    },
    /// Host mode: the packet leaves this machine; the rest of its path is on another one.
    LeavesMachine {
        at: String,
        towards: String,
        /// The command that follows it there.
        continue_with: String,
    },
}

/// A packet's whole path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub from: String,
    pub to: Ipv4Addr,
    /// "lab" or "host".
    pub mode: String,
    pub stage: String,
    pub size: u16,
    pub hops: Vec<Hop>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl Trace {
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// "dropped at node2: net.ipv4.ip_forward is 0 (the node does not route)", for a packet
    /// that does not get there (what `cnet test` says about a failed check).
    pub fn drop_reason(&self) -> Option<String> {
        match &self.verdict {
            Verdict::Dropped { at, reason } => Some(format!("dropped at {at}: {reason}")),
            _ => None,
        }
    }

    /// The TTL the packet is delivered with, if it is.
    pub fn delivered_ttl(&self) -> Option<u8> {
        match self.verdict {
            Verdict::Delivered { ttl, .. } => Some(ttl),
            _ => None,
        }
    }

    /// One line: where it ends and how.
    pub fn summary(&self) -> String {
        let n = self.hops.len();
        let hops = if n == 1 { "1 hop".to_string() } else { format!("{n} hops") };
        if let (Some(ttl), Verdict::Delivered { at, .. }) = (self.delivered_ttl(), self.verdict()) {
            return format!("delivered to {at} with ttl {ttl} ({hops})");
        }
        match self.verdict() {
            Verdict::Delivered { .. } => unreachable!("handled above"),
            Verdict::Dropped { at, reason } => format!("dropped at {at}: {reason}"),
            Verdict::LeavesMachine { towards, continue_with, .. } => {
                format!("leaves this machine {towards}; follow it there with: {continue_with}")
            }
        }
    }
}

/// What `cnet trace` was asked besides FROM and TO.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// This machine (`up --host`), not the lab.
    pub host: bool,
    /// The IP packet's size in bytes.
    pub size: u16,
    /// Host mode: the packet arrives on this interface instead of starting here (to follow
    /// it on the next machine), with this source and TTL.
    pub arrive_on: Option<String>,
    pub src: Option<Ipv4Addr>,
    pub ttl: Option<u8>,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions { host: false, size: DEFAULT_SIZE, arrive_on: None, src: None, ttl: None }
    }
}

// ---------------------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------------------

/// A namespace on the path: a node, one of its containers, or a lab member that is not a
/// node (the routed fabric's `router`, stage 5's `gateway` and `outside`; `node` is 0 then).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Place {
    node: u32,
    container: Option<String>,
    member: Option<&'static str>,
}

impl Place {
    fn node(node: u32) -> Place {
        Place { node, container: None, member: None }
    }
    fn container(node: u32, c: &str) -> Place {
        Place { node, container: Some(c.to_string()), member: None }
    }
    fn member(m: &'static str) -> Place {
        Place { node: 0, container: None, member: Some(m) }
    }
}

/// What the walk knows of the network: the topology (who owns which address) and how to
/// name places.
struct World {
    topo: Topology,
    host: bool,
    /// Host mode: which node this machine is.
    this_node: u32,
    underlay: String,
    netns_dir: PathBuf,
}

impl World {
    fn name(&self, p: &Place) -> String {
        if let Some(m) = p.member {
            return m.to_string();
        }
        match (&p.container, self.host) {
            (None, true) => "node".into(),
            (Some(c), true) => c.clone(),
            (None, false) => format!("node{}", p.node),
            (Some(c), false) => format!("node{}/{c}", p.node),
        }
    }

    /// `node1`, `node1/con1`, `2-single-node/con2` (lab); `node`, `con1` (host).
    fn parse_place(&self, s: &str) -> Result<Place> {
        if self.host {
            if s == "node" || s == "host" || s == "." {
                return Ok(Place::node(self.this_node));
            }
            let me = self.topo.node(self.this_node)?;
            if me.containers.iter().any(|c| c.name == s) {
                return Ok(Place::container(self.this_node, s));
            }
            let names: Vec<&str> = me.containers.iter().map(|c| c.name.as_str()).take(5).collect();
            bail!("'{s}' is neither `node` nor a container here: this machine has {}", names.join(", "));
        }
        if let Some(m) = plan::members(&self.topo).into_iter().find(|m| *m == s) {
            return Ok(Place::member(m));
        }
        let (node, container) = match s.split_once('/') {
            Some((n, c)) => (n, Some(c)),
            None => (s, None),
        };
        let Some(n) = self.topo.find_node(node) else {
            let names: Vec<_> = self
                .topo
                .nodes
                .iter()
                .map(|n| format!("{} ({})", n.short_name(), n.hostname))
                .chain(plan::members(&self.topo).into_iter().map(str::to_string))
                .collect();
            bail!("the lab has no node '{node}': it has {}", names.join(", "));
        };
        if let Some(c) = container
            && !n.containers.iter().any(|x| x.name == c)
        {
            let names: Vec<&str> = n.containers.iter().map(|c| c.name.as_str()).take(5).collect();
            bail!("{node} has no container '{c}' (it has {})", names.join(", "));
        }
        Ok(Place { node: n.index, container: container.map(str::to_string), member: None })
    }

    /// TO: an address, or a place whose address it is (`node2/con1` is 172.16.1.2).
    fn parse_destination(&self, s: &str) -> Result<Ipv4Addr> {
        if let Ok(ip) = s.parse() {
            return Ok(ip);
        }
        let p = self.parse_place(s).map_err(|e| anyhow!("'{s}' is not an IPv4 address, nor a place: {e:#}"))?;
        if let Some(m) = p.member {
            let addrs = self.member_addrs(m);
            return addrs.first().map(|(_, a)| *a).ok_or_else(|| anyhow!("{m} has no address"));
        }
        let n = self.topo.node(p.node)?;
        Ok(match &p.container {
            Some(c) => n.containers.iter().find(|x| &x.name == c).expect("checked").addr.addr,
            None => n.ip.addr,
        })
    }
}

impl World {
    /// A lab member's cables and their addresses, as its plan gives them (the first is the
    /// one `trace` takes for the member's name as a destination).
    fn member_addrs(&self, m: &str) -> Vec<(String, Ipv4Addr)> {
        match m {
            plan::GATEWAY_MEMBER => vec![("eth0".into(), GATEWAY), ("eth1".into(), GATEWAY_OUT.addr)],
            plan::OUTSIDE_MEMBER => vec![("eth0".into(), OUTSIDE.addr)],
            plan::ROUTER => self.topo.subnets.iter().enumerate().map(|(k, s)| (plan::router_port(k), s.router)).collect(),
            _ => Vec::new(),
        }
    }

    /// Who in the lab answers the ARP for `addr` (other than `me`), and on which of its
    /// interfaces the frame arrives: a node on its underlay, or a member on its cable.
    fn owner_of(&self, addr: Ipv4Addr, me: &Place) -> Option<(Place, String)> {
        if let Some(n) = self.topo.nodes.iter().find(|n| n.ip.addr == addr && (me.member.is_some() || n.index != me.node)) {
            return Some((Place::node(n.index), self.underlay.clone()));
        }
        if self.host {
            return None;
        }
        plan::members(&self.topo)
            .into_iter()
            .filter(|m| me.member != Some(*m))
            .find_map(|m| self.member_addrs(m).into_iter().find(|(_, a)| *a == addr).map(|(dev, _)| (Place::member(m), dev)))
    }
}

/// Where the packet goes after a hop that passed it on.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Arrive(Place, Arrival),
    /// Host mode: to another machine; what to say about where.
    Leaves(String),
    /// Nobody takes it: why.
    Lost(String),
}

/// Who is on the other side of the interface a hop leaves by: the pure part of the walk.
fn next_place(w: &World, here: &Place, hop: &Hop) -> Next {
    let Some(out) = &hop.out else { return Next::Lost("it leaves by no interface".into()) };
    let nh = hop.next_hop.as_ref();
    let nh_addr = nh.map(|n| n.addr);
    let mac = nh.and_then(|n| n.mac.clone());
    if here.member.is_some() {
        // A router, the gateway or the outside host: plain routing, to whoever has the next hop.
        let Some(a) = nh_addr else { return Next::Lost(format!("it leaves by {} to no next hop", out.dev)) };
        return match w.owner_of(a, here) {
            Some((p, dev)) => Next::Arrive(p, Arrival::Link { dev, next_hop: nh_addr, mac }),
            None => Next::Lost(format!("nobody on {}'s network has {a}: its ARP goes unanswered", out.dev)),
        };
    }
    let Ok(node) = w.topo.node(here.node) else { return Next::Lost(format!("node {} is not in the topology", here.node)) };
    if let Some(c) = &here.container {
        // A container's only way out is its veth, whose other end is on its node.
        return match node.containers.iter().find(|x| &x.name == c) {
            Some(con) if con.veth == out.dev => {
                Next::Arrive(Place::node(here.node), Arrival::Link { dev: con.host_veth.clone(), next_hop: nh_addr, mac })
            }
            _ => Next::Lost(format!("it leaves {c} by {}, which cnet did not make", out.dev)),
        };
    }
    if let Some(e) = &hop.encap {
        let owner = match e.kind.as_str() {
            // The node whose overlay address is the next hop (the route's gateway), else the
            // one the datagram is addressed to.
            "vxlan" => w
                .topo
                .nodes
                .iter()
                .find(|n| Some(n.tun_addr().addr) == nh_addr && n.index != here.node)
                .or_else(|| w.topo.nodes.iter().find(|n| n.ip.addr == e.remote_ip)),
            _ => w.topo.nodes.iter().find(|n| n.ip.addr == e.remote_ip),
        };
        if w.host {
            let who = owner.map(|n| format!(" (node {})", n.index)).unwrap_or_default();
            let kind = if e.kind == "vxlan" { "VXLAN" } else { "UDP" };
            return Next::Leaves(format!("in a {kind} datagram to {}{who}", e.remote));
        }
        let Some(owner) = owner else { return Next::Lost(format!("no node of the lab has {}", e.remote_ip)) };
        let from_ip: Ipv4Addr = node.ip.addr;
        let underlay = w.underlay.clone();
        let arrival = match e.kind.as_str() {
            "vxlan" => Arrival::Vxlan { from: from_ip, to: owner.ip.addr, port: e.port, vni: e.vni, underlay },
            _ => {
                let from = e.local.parse().unwrap_or(SocketAddrV4::new(from_ip, e.port));
                Arrival::Tunnel { from, to: SocketAddrV4::new(owner.ip.addr, e.port), underlay }
            }
        };
        return Next::Arrive(Place::node(owner.index), arrival);
    }
    if out.dev == w.underlay {
        if w.host {
            let owner = nh_addr.and_then(|a| w.topo.nodes.iter().find(|n| n.ip.addr == a && n.index != here.node));
            let to = nh_addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
            let who = owner.map(|n| format!(" (node {})", n.index)).unwrap_or_default();
            return Next::Leaves(format!("by {} towards {to}{who}", out.dev));
        }
        return match nh_addr.and_then(|a| w.owner_of(a, here)) {
            Some((p, dev)) => Next::Arrive(p, Arrival::Link { dev, next_hop: nh_addr, mac }),
            None => Next::Lost(format!(
                "nobody on the underlay has {}: its ARP goes unanswered",
                nh_addr.map(|a| a.to_string()).unwrap_or_default()
            )),
        };
    }
    // Leaving by one of its containers' veth ends (stage 1), or by a bridge port (a
    // switched frame), or by the bridge to the port its forwarding table names.
    let port = out.port.as_deref().unwrap_or(&out.dev);
    if let Some(con) = node.containers.iter().find(|c| c.host_veth == port) {
        return Next::Arrive(
            Place::container(here.node, &con.name),
            Arrival::Link { dev: con.veth.clone(), next_hop: nh_addr, mac },
        );
    }
    if out.kind.as_deref() == Some("bridge") {
        // No forwarding entry (the MAC is not known yet): whoever answers the ARP.
        return match nh_addr.and_then(|a| node.containers.iter().find(|c| c.addr.addr == a)) {
            Some(con) => Next::Arrive(
                Place::container(here.node, &con.name),
                Arrival::Link { dev: con.veth.clone(), next_hop: nh_addr, mac },
            ),
            None => Next::Lost(format!(
                "no container on {} has {}: its ARP goes unanswered",
                out.dev,
                nh_addr.map(|a| a.to_string()).unwrap_or_default()
            )),
        };
    }
    Next::Lost(format!("it leaves by {}, which cnet did not make: cnet cannot follow it further", out.dev))
}

/// The walk itself, asking each place with `ask`.
fn walk(
    w: &World,
    from: &Place,
    dst: Ipv4Addr,
    opts: &TraceOptions,
    ask: &dyn Fn(&Place, &HopQuery) -> Result<Hop>,
) -> Result<(Vec<Hop>, Verdict)> {
    let mut place = from.clone();
    let arrival = opts.arrive_on.as_ref().map(|dev| Arrival::Link { dev: dev.clone(), next_hop: None, mac: None });
    let mut q = HopQuery { dst, src: opts.src, ttl: opts.ttl, size: opts.size, arrival };
    let mut hops: Vec<Hop> = Vec::new();
    loop {
        let at = w.name(&place);
        if hops.len() >= MAX_HOPS {
            let reason = format!("more than {MAX_HOPS} hops: it goes round in circles");
            return Ok((hops, Verdict::Dropped { at, reason }));
        }
        let mut hop = ask(&place, &q).with_context(|| format!("cannot evaluate the hop at {at}"))?;
        hop.at = at.clone();
        let outcome = hop.outcome.clone();
        let ttl_in = hop.ttl_in;
        hops.push(hop.clone());
        match outcome {
            Outcome::Delivered => {
                let ttl = ttl_in.or(hop.out.as_ref().map(|o| o.ttl)).unwrap_or(0);
                return Ok((hops, Verdict::Delivered { at, ttl }));
            }
            Outcome::Dropped { reason } => return Ok((hops, Verdict::Dropped { at, reason })),
            Outcome::Sent | Outcome::Forwarded | Outcome::Switched => {}
        }
        let out = hop.out.clone().expect("a hop that passes the packet on says where");
        let next = next_place(w, &place, &hop);
        if let Next::Arrive(to, _) = &next
            && let Some(note) = nat_note(w, &place, to, hop.src, dst)
        {
            hops.last_mut().expect("just pushed").notes.push(note);
        }
        match next {
            Next::Arrive(p, arrival) => {
                q = HopQuery { dst, src: hop.src, ttl: Some(out.ttl), size: out.size, arrival: Some(arrival) };
                place = p;
            }
            Next::Leaves(towards) => {
                let mut cmd = format!("cnet trace --host node {dst}");
                let arrive = match &hop.encap {
                    Some(e) if e.kind == "udp" || e.kind == "ebpf" => "tun0".to_string(),
                    Some(_) => "vxlan0".to_string(),
                    None => w.underlay.clone(),
                };
                cmd.push_str(&format!(" --in {arrive}"));
                if let Some(s) = hop.src {
                    cmd.push_str(&format!(" --src {s}"));
                }
                cmd.push_str(&format!(" --ttl {}", out.ttl));
                return Ok((hops, Verdict::LeavesMachine { at, towards, continue_with: cmd }));
            }
            Next::Lost(reason) => {
                if let Some(h) = hops.last_mut() {
                    h.outcome = Outcome::Dropped { reason: reason.clone() };
                }
                return Ok((hops, Verdict::Dropped { at, reason }));
            }
        }
    }
}

/// Stages 5-6: the walk follows routes, not cnet's nftables rules. Where a pod's packet
/// leaves its node for the gateway, say what the masquerade rule does to it there.
fn nat_note(w: &World, here: &Place, to: &Place, src: Option<Ipv4Addr>, dst: Ipv4Addr) -> Option<String> {
    let pods = CLUSTER_PODS;
    let src = src?;
    if !w.topo.stage().has_nat() || here.member.is_some() || here.container.is_some() || to.member != Some(plan::GATEWAY_MEMBER) {
        return None;
    }
    if !pods.contains(src) || pods.contains(dst) {
        return None;
    }
    let node = w.topo.node(here.node).ok()?;
    Some(format!(
        "cnet's masquerade rule rewrites the source {src} to {} as it leaves (nft: table ip cnet, chain postrouting), so the answer can find its way back; the hops below show the packet as routed, with its original source (`cnet status` lists the live translations)",
        node.ip.addr
    ))
}

/// Trace a packet from `from` (`node1`, `node1/con1`, `2-single-node/con2`; `node` or a
/// container's name with `host`) to `to` (an address, or a place) through what is up now.
pub fn trace(from: &str, to: &str, opts: &TraceOptions) -> Result<Trace> {
    let host = opts.host || (!lab::is_up() && NodeJournal::read().ok().flatten().is_some());
    if !host && (opts.arrive_on.is_some() || opts.src.is_some() || opts.ttl.is_some()) {
        bail!(
            "--in, --src and --ttl follow a packet on a machine it reaches (with --host); in the lab, trace it from its source"
        );
    }
    let w = if host { host_world()? } else { lab_world()? };
    let place = w.parse_place(from)?;
    let dst = w.parse_destination(to)?;
    if opts.arrive_on.is_some() && place.container.is_some() {
        bail!("--in applies to the node (a packet arriving from the network): use `node` as FROM");
    }
    let (hops, verdict) = if host {
        let netns_dir = w.netns_dir.clone();
        walk(&w, &place, dst, opts, &|p, q| ask_here(&netns_dir, p.container.as_deref(), q))?
    } else {
        walk(&w, &place, dst, opts, &ask_lab)?
    };
    Ok(Trace {
        from: w.name(&place),
        to: dst,
        mode: if host { "host" } else { "lab" }.into(),
        stage: w.topo.stage().name().into(),
        size: opts.size,
        hops,
        verdict,
    })
}

fn lab_world() -> Result<World> {
    let state = match LabState::read() {
        Ok(Some(s)) => s,
        Ok(None) => bail!("nothing is up: start a stage with `cnet up <stage>` (or trace this machine with --host)"),
        Err(e) if crate::apply::state::is_unusable(&e) => bail!("{e:#}: run `cnet down` to remove the lab by its marks"),
        Err(e) => return Err(e),
    };
    if !state.complete {
        bail!("the lab is not complete (being built or removed, or a failed `up`): wait for it, or run `cnet down`");
    }
    Ok(World {
        topo: Topology::new(state.options)?,
        host: false,
        this_node: 1,
        underlay: UNDERLAY_DEV.into(),
        netns_dir: PathBuf::from(crate::run::node::NETNS_DIR),
    })
}

fn host_world() -> Result<World> {
    let Some(r) = NodeJournal::read()? else {
        bail!("nothing cnet built is up on this machine: start a stage with `cnet up <stage> --host`")
    };
    Ok(World {
        topo: r.header.topology()?,
        host: true,
        this_node: r.header.node,
        underlay: if r.header.underlay.is_empty() { UNDERLAY_DEV.into() } else { r.header.underlay.clone() },
        netns_dir: r.header.netns_dir.clone(),
    })
}

/// A hop in the lab: `cnet __trace-hop` inside the node (and container), answering JSON.
fn ask_lab(p: &Place, q: &HopQuery) -> Result<Hop> {
    let (name, ns) = match (p.member, &p.container) {
        (Some(m), _) => (m.to_string(), lab::member_ns(m)),
        (None, Some(c)) => (format!("node{}/{c}", p.node), lab::node_ns(p.node)),
        (None, None) => (format!("node{}", p.node), lab::node_ns(p.node)),
    };
    let args = vec!["__trace-hop".to_string(), "--query".into(), serde_json::to_string(q)?];
    let mut c = enter::cnet(&ns, &name, p.container.as_deref(), &args, false)?;
    c.command().stdin(Stdio::null());
    let (status, out) = c.run()?;
    if !status.success() {
        bail!("{name}: cnet __trace-hop ended with {status} without saying why");
    }
    serde_json::from_slice(&out).with_context(|| format!("{name} answered no hop"))
}

/// A hop on this machine: in this process, inside the container's namespace if it is one.
fn ask_here(netns_dir: &Path, container: Option<&str>, q: &HopQuery) -> Result<Hop> {
    match container {
        None => std::thread::scope(|s| s.spawn(|| evaluate_here(q)).join().map_err(|_| anyhow!("the hop's thread panicked"))?),
        Some(c) => crate::sys::ns::in_netns(&netns_dir.join(c), || evaluate_here(q)),
    }
}

/// `cnet __trace-hop --query JSON`: evaluate one hop in this namespace and print it as JSON.
pub fn hop_command(query: &str) -> Result<()> {
    let q: HopQuery = serde_json::from_str(query).context("the hop's query is not valid JSON")?;
    let hop = evaluate_here(&q)?;
    say!("{}", serde_json::to_string(&hop)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::topology::{Backend, Options, Stage};

    fn world(stage: Stage, backend: Backend, host: bool) -> World {
        World {
            topo: Topology::new(Options::new(stage).with_backend(backend)).unwrap(),
            host,
            this_node: 1,
            underlay: UNDERLAY_DEV.into(),
            netns_dir: PathBuf::from("/run/netns"),
        }
    }

    fn hop_out(dev: &str, kind: Option<&str>, port: Option<&str>, nh: &str) -> Hop {
        let mut h = Hop::new();
        h.out = Some(Out {
            dev: dev.into(),
            kind: kind.map(str::to_string),
            port: port.map(str::to_string),
            mtu: Some(1500),
            ttl: 63,
            size: 84,
        });
        h.next_hop = Some(NextHop {
            addr: nh.parse().unwrap(),
            dev: dev.into(),
            mac: Some("aa:bb:cc:dd:ee:ff".into()),
            state: "REACHABLE".into(),
        });
        h
    }

    fn node(n: u32) -> Place {
        Place::node(n)
    }
    fn con(n: u32, c: &str) -> Place {
        Place::container(n, c)
    }

    #[test]
    fn places_parse_as_exec_targets() {
        let w = world(Stage::MultiNode, Backend::Udp, false);
        assert_eq!(w.parse_place("node1/con1").unwrap(), con(1, "con1"));
        assert_eq!(w.parse_place("3-multi-node-2").unwrap(), node(2));
        assert_eq!(w.parse_place("2/con2").unwrap(), con(2, "con2"));
        assert!(w.parse_place("node3").unwrap_err().to_string().contains("no node 'node3'"));
        assert!(w.parse_place("node1/con9").unwrap_err().to_string().contains("no container 'con9'"));
        assert_eq!(w.parse_destination("node2/con1").unwrap(), Ipv4Addr::new(172, 16, 1, 2));
        assert_eq!(w.parse_destination("node2").unwrap(), Ipv4Addr::new(10, 0, 0, 20));
        assert_eq!(w.parse_destination("172.16.1.3").unwrap(), Ipv4Addr::new(172, 16, 1, 3));
        let s2 = world(Stage::SingleNode, Backend::Udp, false);
        assert_eq!(s2.parse_place("2-single-node/con2").unwrap(), con(1, "con2"));
        let h = world(Stage::SingleNode, Backend::Udp, true);
        assert_eq!(h.parse_place("node").unwrap(), node(1));
        assert_eq!(h.parse_place("con2").unwrap(), con(1, "con2"));
        assert!(h.parse_place("node1/con1").is_err());
        assert_eq!(h.name(&con(1, "con2")), "con2");
        assert_eq!(w.name(&con(1, "con2")), "node1/con2");
    }

    #[test]
    fn the_walk_follows_the_talks_links() {
        let w = world(Stage::MultiNode, Backend::Udp, false);
        // A container's veth: its node, on the host end (a bridge port).
        let n = next_place(&w, &con(1, "con1"), &hop_out("veth11", Some("veth"), None, "172.16.0.1"));
        assert_eq!(
            n,
            Next::Arrive(
                node(1),
                Arrival::Link {
                    dev: "veth10".into(),
                    next_hop: Some("172.16.0.1".parse().unwrap()),
                    mac: Some("aa:bb:cc:dd:ee:ff".into())
                }
            )
        );
        // The underlay: the node that has the next hop.
        let n = next_place(&w, &node(1), &hop_out("enp0s8", Some("veth"), None, "10.0.0.20"));
        assert!(matches!(n, Next::Arrive(ref p, Arrival::Link { ref dev, .. }) if *p == node(2) && dev == "enp0s8"), "{n:?}");
        // The bridge, to the port its forwarding table names, or to whoever has the address.
        let n = next_place(&w, &node(2), &hop_out("br0", Some("bridge"), Some("veth20"), "172.16.1.3"));
        assert!(
            matches!(n, Next::Arrive(ref p, Arrival::Link { ref dev, .. }) if *p == con(2, "con2") && dev == "veth21"),
            "{n:?}"
        );
        let n = next_place(&w, &node(2), &hop_out("br0", Some("bridge"), None, "172.16.1.2"));
        assert!(matches!(n, Next::Arrive(ref p, _) if *p == con(2, "con1")), "{n:?}");
        let n = next_place(&w, &node(2), &hop_out("br0", Some("bridge"), None, "172.16.1.9"));
        assert!(matches!(n, Next::Lost(ref why) if why.contains("no container on br0 has 172.16.1.9")), "{n:?}");
        let n = next_place(&w, &node(1), &hop_out("enp0s8", Some("veth"), None, "10.0.0.99"));
        assert!(matches!(n, Next::Lost(ref why) if why.contains("10.0.0.99")), "{n:?}");
        // Host mode: the underlay leaves the machine.
        let h = world(Stage::MultiNode, Backend::Udp, true);
        let n = next_place(&h, &node(1), &hop_out("enp0s8", None, None, "10.0.0.20"));
        assert_eq!(n, Next::Leaves("by enp0s8 towards 10.0.0.20 (node 2)".into()));
        // Stage 1: the node's veth1 leads into `con`.
        let s1 = world(Stage::Namespace, Backend::Udp, false);
        let n = next_place(&s1, &node(1), &hop_out("veth1", Some("veth"), None, "172.16.0.1"));
        assert!(
            matches!(n, Next::Arrive(ref p, Arrival::Link { ref dev, .. }) if *p == con(1, "con") && dev == "veth2"),
            "{n:?}"
        );
    }

    #[test]
    fn the_walk_goes_through_the_labs_other_members() {
        // Stage 5: node 1's default route leads to the gateway, and on to the outside host.
        let w = world(Stage::Outside, Backend::Udp, false);
        assert_eq!(w.parse_place("outside").unwrap(), Place::member(plan::OUTSIDE_MEMBER));
        assert_eq!(w.parse_destination("outside").unwrap(), Ipv4Addr::new(203, 0, 113, 10));
        let n = next_place(&w, &node(1), &hop_out("enp0s8", Some("veth"), None, "10.0.0.1"));
        assert!(
            matches!(n, Next::Arrive(ref p, Arrival::Link { ref dev, .. }) if *p == Place::member("gateway") && dev == "eth0"),
            "{n:?}"
        );
        let gw = Place::member(plan::GATEWAY_MEMBER);
        let n = next_place(&w, &gw, &hop_out("eth1", Some("veth"), None, "203.0.113.10"));
        assert!(
            matches!(n, Next::Arrive(ref p, Arrival::Link { ref dev, .. }) if *p == Place::member("outside") && dev == "eth0"),
            "{n:?}"
        );
        let n = next_place(&w, &gw, &hop_out("eth0", Some("veth"), None, "10.0.0.20"));
        assert!(matches!(n, Next::Arrive(ref p, Arrival::Link { ref dev, .. }) if *p == node(2) && dev == "enp0s8"), "{n:?}");
        let n = next_place(&w, &gw, &hop_out("eth0", Some("veth"), None, "10.0.0.99"));
        assert!(matches!(n, Next::Lost(ref why) if why.contains("nobody on eth0's network has 10.0.0.99")), "{n:?}");
        // Stage 3 has no members: the name is not a place.
        let s3 = world(Stage::MultiNode, Backend::Udp, false);
        assert!(s3.parse_place("gateway").is_err());
    }

    #[test]
    fn the_walk_follows_the_overlays() {
        let w = world(Stage::Overlay, Backend::Udp, false);
        let mut h = hop_out("tun0", Some("tun"), None, "172.16.1.2");
        h.encap = Some(Encap {
            kind: "udp".into(),
            local: "10.0.0.10:9000".into(),
            remote: "10.0.0.20:9000".into(),
            remote_ip: "10.0.0.20".parse().unwrap(),
            port: 9000,
            pid: Some(1),
            wire: Some("raw".into()),
            subnet: None,
            vni: None,
            flooded: Vec::new(),
            outer_ttl: 64,
            outer_size: 112,
            outer_route: None,
            outer_dev: None,
            outer_next_hop: None,
        });
        let n = next_place(&w, &node(1), &h);
        assert_eq!(
            n,
            Next::Arrive(
                node(2),
                Arrival::Tunnel {
                    from: "10.0.0.10:9000".parse().unwrap(),
                    to: "10.0.0.20:9000".parse().unwrap(),
                    underlay: "enp0s8".into()
                }
            )
        );
        let v = world(Stage::Overlay, Backend::Vxlan, false);
        let mut h = hop_out("vxlan0", Some("vxlan"), None, "172.16.1.100");
        h.encap = Some(Encap {
            kind: "vxlan".into(),
            local: "10.0.0.10".into(),
            remote: "10.0.0.20:4789".into(),
            port: 4789,
            vni: Some(1),
            ..h_encap(&h)
        });
        let n = next_place(&v, &node(1), &h);
        assert!(matches!(n, Next::Arrive(ref p, Arrival::Vxlan { port: 4789, .. }) if *p == node(2)), "{n:?}");
    }

    fn h_encap(h: &Hop) -> Encap {
        Encap {
            kind: String::new(),
            local: String::new(),
            remote: String::new(),
            remote_ip: "10.0.0.20".parse().unwrap(),
            port: 0,
            pid: None,
            wire: None,
            subnet: None,
            vni: None,
            flooded: Vec::new(),
            outer_ttl: 64,
            outer_size: h.out.as_ref().map_or(0, |o| o.size + 50),
            outer_route: None,
            outer_dev: None,
            outer_next_hop: None,
        }
    }
}
