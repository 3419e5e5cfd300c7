//! The talk's stages, nodes, names and addresses — pure data, no kernel.
//!
//! Every name and address here is the talk's default (TALK.md), so that each command a
//! viewer saw in the talk works verbatim against what cnet builds. Scale options
//! (`--containers`, `--nodes`, `--pod-cidr`) continue the talk's patterns.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// An IPv4 prefix such as 172.16.0.0/24 (the address is kept as given: 172.16.0.1/24 is an
/// interface address, `network()` gives the prefix's first address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Net { addr, prefix }
    }
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) }
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    /// This prefix with its host bits cleared (172.16.0.1/24 -> 172.16.0.0/24).
    pub fn trunc(&self) -> Ipv4Net {
        Ipv4Net::new(self.network(), self.prefix)
    }
    /// The n-th address of the prefix (0 is the network address).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - self.prefix);
        if (n as u64) < size { Some(Ipv4Addr::from(u32::from(self.network()) + n)) } else { None }
    }
    /// Usable host addresses: all but the network and broadcast addresses.
    pub fn host_count(&self) -> u64 {
        (1u64 << (32 - self.prefix)).saturating_sub(2)
    }
    /// Whether `other` lies wholly inside this prefix.
    pub fn contains_net(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && (u32::from(other.addr) & self.mask()) == u32::from(self.network())
    }
    /// Whether the address `ip` lies inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.contains_net(&Ipv4Net::new(ip, 32))
    }
    /// Whether the two prefixes share any address (one then holds the other).
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }
}

/// Address ranges a pod subnet can never be: each would break the node's own networking
/// or cannot be routed to a container at all.
const UNUSABLE_POD_NETS: [(Ipv4Net, &str); 5] = [
    (Ipv4Net::new(Ipv4Addr::new(0, 0, 0, 0), 8), "'this network' (0.0.0.0/8)"),
    (Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8), "loopback (127.0.0.0/8)"),
    (Ipv4Net::new(Ipv4Addr::new(169, 254, 0, 0), 16), "link-local (169.254.0.0/16)"),
    (Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4), "multicast (224.0.0.0/4)"),
    (Ipv4Net::new(Ipv4Addr::new(240, 0, 0, 0), 4), "reserved (240.0.0.0/4, broadcast included)"),
];

/// Refuse a pod subnet that cannot work: the default route, a special range, or one that
/// overlaps the nodes' own network (the node could no longer tell its neighbours from its
/// containers). One line, before anything is built.
pub fn check_pod_net(net: &Ipv4Net, underlay: &Ipv4Net) -> Result<()> {
    if net.prefix == 0 {
        bail!("pod subnet {net} is the whole address space (the default route): give a private prefix such as 172.16.0.0/24");
    }
    for (bad, what) in UNUSABLE_POD_NETS {
        if bad.overlaps(net) {
            bail!("pod subnet {net} lies in {what}, which no container can use: give a private prefix such as 172.16.0.0/24");
        }
    }
    if net.overlaps(&underlay.trunc()) {
        bail!(
            "pod subnet {net} overlaps the nodes' network {}: the node could not tell its neighbours from its containers; give one apart from it, such as 172.16.0.0/24",
            underlay.trunc()
        );
    }
    Ok(())
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().map_err(|_| anyhow::anyhow!("'{s}' is not an IPv4 prefix like 172.16.0.0/24"))?;
        let prefix: u8 =
            p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| anyhow::anyhow!("'{s}': the prefix length must be 0..32"))?;
        Ok(Ipv4Net { addr, prefix })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Namespace,
    SingleNode,
    MultiNode,
    Overlay,
    /// Beyond the talk: stage 4 plus the world outside (egress NAT, a published port).
    Outside,
    /// Beyond the talk: stage 5 plus a ClusterIP-style service.
    Services,
}

impl Stage {
    pub const ALL: [Stage; 6] =
        [Stage::Namespace, Stage::SingleNode, Stage::MultiNode, Stage::Overlay, Stage::Outside, Stage::Services];

    pub fn number(self) -> u8 {
        match self {
            Stage::Namespace => 1,
            Stage::SingleNode => 2,
            Stage::MultiNode => 3,
            Stage::Overlay => 4,
            Stage::Outside => 5,
            Stage::Services => 6,
        }
    }
    /// Stage 4 and those built on it: the nodes are joined by an overlay.
    pub fn has_overlay(self) -> bool {
        matches!(self, Stage::Overlay | Stage::Outside | Stage::Services)
    }
    /// Stages 5 and 6: cnet's NAT table (egress masquerade, the published port).
    pub fn has_nat(self) -> bool {
        matches!(self, Stage::Outside | Stage::Services)
    }
    /// The command-line name: `cnet up single-node`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Namespace => "namespace",
            Stage::SingleNode => "single-node",
            Stage::MultiNode => "multi-node",
            Stage::Overlay => "overlay",
            Stage::Outside => "outside",
            Stage::Services => "services",
        }
    }
    /// The talk's directory / VM name.
    pub fn talk_name(self) -> &'static str {
        match self {
            Stage::Namespace => "1-network-namespace",
            Stage::SingleNode => "2-single-node",
            Stage::MultiNode => "3-multi-node",
            Stage::Overlay => "4-overlay-network",
            Stage::Outside => "5-outside-world",
            Stage::Services => "6-services",
        }
    }
    pub fn is_multi_node(self) -> bool {
        matches!(self, Stage::MultiNode | Stage::Overlay | Stage::Outside | Stage::Services)
    }
    /// The hostname of node `i` (1-based), as the talk's Vagrant VMs were named.
    pub fn hostname(self, i: u32) -> String {
        if self.is_multi_node() { format!("{}-{i}", self.talk_name()) } else { self.talk_name().to_string() }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Stage {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        for st in Stage::ALL {
            if s == st.name() || s == st.number().to_string() || s == st.talk_name() {
                return Ok(st);
            }
        }
        bail!("unknown stage '{s}': use namespace (1), single-node (2), multi-node (3), overlay (4), outside (5) or services (6)")
    }
}

/// How stage 4 carries packets between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// cnet's userspace TUN/UDP tunnel, the talk's wire format (flannel's `udp` backend).
    #[default]
    Udp,
    /// The kernel's VXLAN device (flannel's production `vxlan` backend), for comparison.
    Vxlan,
    /// cnet's tunnel passing whole 64 KB TCP super-packets (`cnet tunnel --wire gso`): cnet
    /// to cnet only, over an underlay that carries 64 KB datagrams (the lab's cables get
    /// MTU 65535). Faster than `udp`, but no longer the talk's wire format.
    UdpGso,
    /// The talk's wire (one IP packet per UDP datagram, port 9000), built and taken apart by
    /// TC eBPF programs in the kernel: no userspace process in the path. Talks to `udp`.
    Ebpf,
}

/// The underlay MTU the udp-gso backend needs: one datagram must hold a 64 KB packet.
pub const GSO_UNDERLAY_MTU: u32 = 65535;

impl Backend {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Udp => "udp",
            Backend::Vxlan => "vxlan",
            Backend::UdpGso => "udp-gso",
            Backend::Ebpf => "ebpf",
        }
    }

    /// The tunnel's datagram framing, for the backends that run cnet's tunnel.
    pub fn wire(self) -> Option<crate::model::wire::WireFormat> {
        match self {
            Backend::Udp => Some(crate::model::wire::WireFormat::Raw),
            Backend::UdpGso => Some(crate::model::wire::WireFormat::Gso),
            Backend::Vxlan | Backend::Ebpf => None,
        }
    }

    /// The underlay MTU to assume until the real one is read off the device (and the one
    /// the lab gives its cables).
    pub fn default_underlay_mtu(self) -> u32 {
        if self == Backend::UdpGso { GSO_UNDERLAY_MTU } else { 1500 }
    }
}

/// What the user chose; everything else is derived from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    pub stage: Stage,
    pub containers: u32,
    pub nodes: u32,
    /// Stage 2 only: the node's pod subnet (default 172.16.0.0/24).
    pub pod_cidr: Option<Ipv4Net>,
    pub backend: Backend,
    /// The underlay MTU, from which tun0's MTU is computed (underlay − 28; − 42 for udp-gso).
    pub underlay_mtu: u32,
    /// Stages 3-4 in the lab: how the nodes' network joins them.
    #[serde(default)]
    pub fabric: Fabric,
    /// Routed fabric: the router knows the pod subnets, as a BGP speaker on each node would
    /// have announced them (Calico's BIRD); stage 3 then works through the router.
    #[serde(default)]
    pub advertise_pod_routes: bool,
    /// Stage 4: route straight to peers on this node's own subnet, encapsulate only to the
    /// others (flannel's DirectRouting, Calico's CrossSubnet).
    #[serde(default)]
    pub direct_routing: bool,
}

/// The nodes' own network in the lab.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fabric {
    /// One L2 network (a switch): the talk's "same L2 network".
    #[default]
    L2,
    /// Each node on a small subnet of its own (nodes 2 and 3 share one when there are 3 or
    /// more), joined by a router that knows only the node subnets: a cloud network or a
    /// data-centre fabric.
    Routed,
}

impl Fabric {
    pub fn name(self) -> &'static str {
        match self {
            Fabric::L2 => "l2",
            Fabric::Routed => "routed",
        }
    }
}

/// Routed fabric: the most nodes whose addresses 10.0.0.(10·i) each fit a subnet without a
/// neighbour's (10.0.0.80 sits on a /28 boundary).
pub const MAX_ROUTED_NODES: u32 = 7;

/// One subnet of a routed fabric: its prefix, the router's address on it, its nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Subnet {
    pub net: Ipv4Net,
    pub router: Ipv4Addr,
    pub nodes: Vec<u32>,
}

/// The routed fabric's subnets: node 1 alone (the talk's pair must be apart), nodes 2 and 3
/// together when there are three or more (both cases in one lab), every other node alone.
/// Each is the smallest aligned prefix (/30 up to /27) that holds its nodes' addresses as
/// hosts and no other node's; the router takes its first free host address.
pub fn routed_subnets(nodes: u32) -> Result<Vec<Subnet>> {
    let ip = |i: u32| u32::from(Ipv4Addr::new(10, 0, 0, (10 * i) as u8));
    let mut groups: Vec<Vec<u32>> = vec![vec![1]];
    let mut i = 2;
    while i <= nodes {
        if i == 2 && nodes >= 3 {
            groups.push(vec![2, 3]);
            i += 2;
        } else {
            groups.push(vec![i]);
            i += 1;
        }
    }
    let mut out = Vec::new();
    for g in groups {
        let found = (27..=30u8).rev().find_map(|prefix| {
            let mask = u32::MAX << (32 - prefix);
            let base = ip(g[0]) & mask;
            let (net, bcast) = (base, base | !mask);
            let hosts_ok = g.iter().all(|n| ip(*n) & mask == base && ip(*n) != net && ip(*n) != bcast);
            let alone = (1..=nodes).filter(|n| !g.contains(n)).all(|n| ip(n) & mask != base);
            let router = (net + 1..bcast).find(|a| !(1..=nodes).any(|n| ip(n) == *a));
            (hosts_ok && alone).then_some(router).flatten().map(|r| Subnet {
                net: Ipv4Net::new(Ipv4Addr::from(base), prefix),
                router: Ipv4Addr::from(r),
                nodes: g.clone(),
            })
        });
        match found {
            Some(s) => out.push(s),
            None => bail!(
                "--fabric routed takes at most {MAX_ROUTED_NODES} nodes: node i's address 10.0.0.(10·i) must fit a subnet of its own"
            ),
        }
    }
    Ok(out)
}

impl Options {
    pub fn new(stage: Stage) -> Self {
        Options {
            stage,
            containers: 2,
            nodes: 2,
            pod_cidr: None,
            backend: Backend::Udp,
            underlay_mtu: 1500,
            fabric: Fabric::L2,
            advertise_pod_routes: false,
            direct_routing: false,
        }
    }

    /// With `backend` and the underlay MTU that goes with it.
    pub fn with_backend(self, backend: Backend) -> Self {
        Options { backend, underlay_mtu: backend.default_underlay_mtu(), ..self }
    }
}

pub const UNDERLAY_DEV: &str = "enp0s8";
/// Node i gets 10.0.0.(10·i) on the underlay /24: 25 nodes is the last that fits.
pub const MAX_NODES: u32 = 25;
/// Containers per node: con1..con9999.
pub const MAX_CONTAINERS: u32 = 9999;
pub const UNDERLAY_PREFIX: u8 = 24;
pub const TUNNEL_PORT: u16 = 9000;
pub const VXLAN_PORT: u16 = 4789;
pub const VXLAN_VNI: u32 = 1;

// Stages 5 and 6: the world beyond the nodes (documentation addresses, TEST-NET-3), the
// published port and the service.
/// The nodes' gateway on their network (the lab's `gateway` member).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The gateway's address towards the outside world, and the `outside` host's.
pub const GATEWAY_OUT: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(203, 0, 113, 1), 24);
pub const OUTSIDE: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(203, 0, 113, 10), 24);
/// The port the demo servers (and the outside host's) listen on, in each container.
pub const SERVER_PORT: u16 = 8000;
/// Node 1's published port, forwarded to its con1:8000 (docker's `-p 8080:8000`).
pub const PUBLISHED_PORT: u16 = 8080;
/// Stage 6's service: a virtual IP on no interface (kube-proxy's ClusterIP), port 80.
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVICE_PORT: u16 = 80;

/// Every node's pod subnet lies in this range (stages 3-6): what tun0's /16 catches, and
/// what stage 5's masquerade leaves alone as pod-to-pod traffic.
pub const CLUSTER_PODS: Ipv4Net = Ipv4Net::new(Ipv4Addr::new(172, 16, 0, 0), 16);

/// Node i's pod subnet, 172.16.(i−1).0/24, as the talk gives node 1 and node 2.
pub fn multi_node_pod_net(i: u32) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(172, 16, (i - 1) as u8, 0), 24)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Container {
    pub name: String,
    /// The veth end that stays on the node (`veth10`).
    pub host_veth: String,
    /// The veth end inside the container (`veth11`).
    pub veth: String,
    pub addr: Ipv4Net,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    /// 1-based, as in `node1`.
    pub index: u32,
    pub hostname: String,
    /// The node's address on the underlay (`enp0s8`), 10.0.0.10/24 for node 1.
    pub ip: Ipv4Net,
    /// The node's pod subnet (172.16.0.0/24 on node 1).
    pub pod_net: Ipv4Net,
    /// Stage 2+: the bridge `br0` and its address (the pod subnet's .1).
    pub bridge: Option<Ipv4Net>,
    pub containers: Vec<Container>,
    /// Stages 5-6: the interface holding the node's default route, where pod traffic leaves
    /// for the world and is masqueraded (found on the machine; none: the underlay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
}

impl Node {
    pub fn short_name(&self) -> String {
        format!("node{}", self.index)
    }
    /// Stage 4: the tunnel device's address, the pod subnet's .100 with a /16 so that the
    /// connected route `172.16.0.0/16 dev tun0` catches every other node's subnet.
    pub fn tun_addr(&self) -> Ipv4Net {
        Ipv4Net::new(self.pod_net.nth(100).expect("pod subnets are /24 in stage 4"), 16)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub options: Options,
    pub nodes: Vec<Node>,
    /// A routed fabric's subnets (empty on an L2 fabric or a real machine).
    pub subnets: Vec<Subnet>,
}

impl Topology {
    pub fn stage(&self) -> Stage {
        self.options.stage
    }

    /// Validate the options and derive every name and address.
    pub fn new(options: Options) -> Result<Topology> {
        let stage = options.stage;
        // Stages 2-4 take 0 containers: the node's part alone (bridge, routes, tunnel), as
        // flannel's daemon builds it, for a container runtime to attach its containers
        // through cnet's CNI plugin (src/cni).
        if stage == Stage::Namespace && options.containers != 1 && options.containers != 2 {
            bail!("stage 1 has exactly one container, 'con'; --containers applies to stages 2-4");
        }
        // Stages 5 and 6 publish con1's port and balance over every node's con1: they need it.
        if stage.has_nat() && options.containers == 0 {
            bail!(
                "stage {stage} publishes con1's port, so it needs --containers 1 or more (0 is for stages 2-4 under cnet's CNI plugin)"
            );
        }
        if options.backend != Backend::Udp && !stage.has_overlay() {
            bail!("--backend applies to stage 4 (overlay) only");
        }
        if options.pod_cidr.is_some() && stage != Stage::SingleNode {
            bail!("--pod-cidr applies to stage 2 (single-node) only; stages 3 and 4 give node i 172.16.(i-1).0/24");
        }
        // What the stage really has, whatever the defaults said (stage 1: one node, one
        // container; stage 2: one node), so that `explain --format json` and the record
        // tell the truth.
        let mut options = options;
        if !stage.is_multi_node() {
            options.nodes = 1;
        }
        if stage == Stage::Namespace {
            options.containers = 1;
        }
        let node_count = options.nodes;
        if stage.is_multi_node() && !(2..=MAX_NODES).contains(&node_count) {
            // Node i gets 10.0.0.(10*i): 25 nodes is the last that fits 10.0.0.0/24.
            bail!("--nodes must be 2..25 (node i gets 10.0.0.(10*i) on the underlay /24)");
        }
        if !stage.is_multi_node() && options.nodes != 2 && options.nodes != 1 {
            bail!("--nodes applies to stages 3 and 4 (multi-node, overlay) only");
        }
        if options.fabric == Fabric::Routed && !stage.is_multi_node() {
            bail!("--fabric applies to stages 3 and 4 (multi-node, overlay): a single node has no fabric");
        }
        if options.advertise_pod_routes && options.fabric != Fabric::Routed {
            bail!("--advertise-pod-routes teaches the routed fabric's router: give --fabric routed too");
        }
        if options.direct_routing && !stage.has_overlay() {
            bail!("--direct-routing applies to stage 4 (overlay): it chooses, per peer, between a direct route and the tunnel");
        }
        if options.fabric == Fabric::Routed && stage.has_nat() {
            bail!("stages 5 and 6 put a gateway on the nodes' one network (10.0.0.1): --fabric routed applies to stages 3 and 4");
        }
        let subnets = if options.fabric == Fabric::Routed { routed_subnets(node_count)? } else { Vec::new() };
        let mut nodes = Vec::new();
        for i in 1..=node_count {
            let addr = Ipv4Addr::new(10, 0, 0, (10 * i) as u8);
            let prefix = subnets.iter().find(|s| s.nodes.contains(&i)).map_or(UNDERLAY_PREFIX, |s| s.net.prefix);
            let ip = Ipv4Net::new(addr, prefix);
            let hostname = stage.hostname(i);
            let node = match stage {
                Stage::Namespace => Node {
                    index: i,
                    hostname,
                    ip,
                    pod_net: Ipv4Net::new(Ipv4Addr::new(172, 16, 0, 1), 32),
                    bridge: None,
                    containers: vec![Container {
                        name: "con".into(),
                        host_veth: "veth1".into(),
                        veth: "veth2".into(),
                        // The talk gives no prefix: a /32.
                        addr: Ipv4Net::new(Ipv4Addr::new(172, 16, 0, 1), 32),
                    }],
                    egress: None,
                },
                _ => {
                    let pod_net = match options.pod_cidr {
                        Some(c) => c.trunc(),
                        None => multi_node_pod_net(i),
                    };
                    if pod_net.prefix > 30 {
                        bail!("pod subnet {pod_net} is too small: it needs the bridge and at least one container");
                    }
                    check_pod_net(&pod_net, &ip)?;
                    // .1 is the bridge, containers from .2; stage 4 keeps .100 for tun0.
                    let mut reserved = vec![1u32];
                    if stage.has_overlay() {
                        reserved.push(100);
                    }
                    let usable = pod_net.host_count() as u32;
                    let fits = usable.saturating_sub(reserved.iter().filter(|r| **r <= usable).count() as u32);
                    if options.containers > MAX_CONTAINERS {
                        bail!(
                            "{} containers: a node holds at most {MAX_CONTAINERS} (con1..con{MAX_CONTAINERS})",
                            options.containers
                        );
                    }
                    if options.containers > fits {
                        // The smallest prefix that holds them all, with the bridge and tun0's .100.
                        let need = u64::from(options.containers) + reserved.len() as u64 + 2;
                        let prefix = 32 - need.next_power_of_two().trailing_zeros() as u8;
                        let hint = if stage == Stage::SingleNode {
                            format!(" or a larger --pod-cidr, e.g. {}", Ipv4Net::new(pod_net.addr, prefix).trunc())
                        } else {
                            String::new()
                        };
                        bail!(
                            "{} containers do not fit the pod subnet {pod_net} (room for {fits}): use fewer{hint}",
                            options.containers
                        );
                    }
                    let mut containers = Vec::new();
                    let mut host = 2u32;
                    for c in 1..=options.containers {
                        while reserved.contains(&host) {
                            host += 1;
                        }
                        containers.push(Container {
                            name: format!("con{c}"),
                            // The talk's pattern: veth10/veth11 for con1, veth20/veth21 for con2.
                            host_veth: format!("veth{c}0"),
                            veth: format!("veth{c}1"),
                            addr: Ipv4Net::new(pod_net.nth(host).unwrap(), pod_net.prefix),
                        });
                        host += 1;
                    }
                    Node {
                        index: i,
                        hostname,
                        ip,
                        pod_net,
                        bridge: Some(Ipv4Net::new(pod_net.nth(1).unwrap(), pod_net.prefix)),
                        containers,
                        egress: None,
                    }
                }
            };
            nodes.push(node);
        }
        Ok(Topology { options, nodes, subnets })
    }

    pub fn node(&self, index: u32) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.index == index)
            .ok_or_else(|| anyhow::anyhow!("stage {} has no node {index} (it has {})", self.stage(), self.nodes.len()))
    }

    /// Find a node by `node1`, `1` or its hostname (`3-multi-node-1`).
    pub fn find_node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| name == n.hostname || name == n.short_name() || name == n.index.to_string())
    }

    /// The other nodes, as node `index` sees them (for routes and tunnel peers).
    pub fn peers_of(&self, index: u32) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.index != index)
    }

    /// Whether node `b`'s address is on node `a`'s own subnet: a next hop the kernel can
    /// reach directly (on-link), without a router in between.
    pub fn on_link(&self, a: u32, b: u32) -> bool {
        match (self.nodes.iter().find(|n| n.index == a), self.nodes.iter().find(|n| n.index == b)) {
            (Some(x), Some(y)) => x.ip.contains_net(&Ipv4Net::new(y.ip.addr, 32)),
            _ => false,
        }
    }

    /// The routed fabric's router address on node `index`'s subnet (its gateway).
    pub fn gateway_of(&self, index: u32) -> Option<Ipv4Addr> {
        self.subnets.iter().find(|s| s.nodes.contains(&index)).map(|s| s.router)
    }

    /// Use a real host's underlay address and prefix for node `index` (host mode).
    pub fn set_node_net(&mut self, index: u32, net: Ipv4Net) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.index == index) {
            n.ip = net;
        }
    }

    /// The interface holding node `index`'s default route (stages 5-6: where it masquerades).
    pub fn set_node_egress(&mut self, index: u32, dev: String) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.index == index) {
            n.egress = Some(dev);
        }
    }

    /// Use a real host's underlay address for node `index` (host mode, `--peer`).
    pub fn set_node_ip(&mut self, index: u32, ip: Ipv4Addr) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.index == index) {
            n.ip.addr = ip;
        }
    }

    pub fn tun_mtu(&self) -> u32 {
        // 28 bytes: the outer IPv4 (20) and UDP (8) headers around each inner packet (and
        // the gso wire's 14-byte framing).
        let wire = self.options.backend.wire().unwrap_or_default();
        self.options.underlay_mtu - wire.overhead()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(stage: Stage) -> Topology {
        Topology::new(Options::new(stage)).unwrap()
    }

    #[test]
    fn stage_names_parse() {
        for (s, st) in [
            ("1", Stage::Namespace),
            ("namespace", Stage::Namespace),
            ("1-network-namespace", Stage::Namespace),
            ("2", Stage::SingleNode),
            ("2-single-node", Stage::SingleNode),
            ("3-multi-node", Stage::MultiNode),
            ("overlay", Stage::Overlay),
            ("4-overlay-network", Stage::Overlay),
            ("5", Stage::Outside),
            ("5-outside-world", Stage::Outside),
            ("services", Stage::Services),
            ("6-services", Stage::Services),
        ] {
            assert_eq!(s.parse::<Stage>().unwrap(), st, "{s}");
        }
        assert!("7".parse::<Stage>().is_err());
    }

    #[test]
    fn stage1_is_the_talks() {
        let t = topo(Stage::Namespace);
        let n = &t.nodes[0];
        assert_eq!(n.hostname, "1-network-namespace");
        assert_eq!(n.ip.to_string(), "10.0.0.10/24");
        let c = &n.containers[0];
        assert_eq!((c.name.as_str(), c.host_veth.as_str(), c.veth.as_str()), ("con", "veth1", "veth2"));
        assert_eq!(c.addr.to_string(), "172.16.0.1/32");
    }

    #[test]
    fn stage2_is_the_talks() {
        let t = topo(Stage::SingleNode);
        let n = &t.nodes[0];
        assert_eq!(n.hostname, "2-single-node");
        assert_eq!(n.bridge.unwrap().to_string(), "172.16.0.1/24");
        let names: Vec<_> =
            n.containers.iter().map(|c| (c.name.clone(), c.host_veth.clone(), c.veth.clone(), c.addr.to_string())).collect();
        assert_eq!(
            names,
            vec![
                ("con1".into(), "veth10".into(), "veth11".into(), "172.16.0.2/24".into()),
                ("con2".into(), "veth20".into(), "veth21".into(), "172.16.0.3/24".into()),
            ]
        );
    }

    #[test]
    fn multi_node_subnets_and_ips() {
        let t = topo(Stage::MultiNode);
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[1].hostname, "3-multi-node-2");
        assert_eq!(t.nodes[1].ip.addr, Ipv4Addr::new(10, 0, 0, 20));
        assert_eq!(t.nodes[1].pod_net.to_string(), "172.16.1.0/24");
        assert_eq!(t.nodes[1].containers[0].addr.to_string(), "172.16.1.2/24");
        let o = topo(Stage::Overlay);
        assert_eq!(o.nodes[0].tun_addr().to_string(), "172.16.0.100/16");
        assert_eq!(o.nodes[1].tun_addr().to_string(), "172.16.1.100/16");
        assert_eq!(o.nodes[0].hostname, "4-overlay-network-1");
        assert_eq!(o.tun_mtu(), 1472);
    }

    #[test]
    fn scale_allocation_and_bounds() {
        let mut o = Options::new(Stage::SingleNode);
        o.containers = 253;
        let t = Topology::new(o.clone()).unwrap();
        let last = t.nodes[0].containers.last().unwrap();
        assert_eq!(
            (last.name.as_str(), last.host_veth.as_str(), last.addr.addr),
            ("con253", "veth2530", Ipv4Addr::new(172, 16, 0, 254))
        );
        o.containers = 254;
        let err = Topology::new(o.clone()).unwrap_err().to_string();
        assert!(err.contains("do not fit") && err.contains("--pod-cidr"), "{err}");
        o.pod_cidr = Some("172.16.0.0/20".parse().unwrap());
        o.containers = 1000;
        let t = Topology::new(o).unwrap();
        assert_eq!(t.nodes[0].containers[999].addr.to_string(), "172.16.3.233/20");
        // Stage 4 skips .100, which tun0 holds.
        let mut o = Options::new(Stage::Overlay);
        o.containers = 100;
        let t = Topology::new(o).unwrap();
        assert!(t.nodes[0].containers.iter().all(|c| c.addr.addr != Ipv4Addr::new(172, 16, 0, 100)));
        assert_eq!(t.nodes[0].containers[98].addr.addr, Ipv4Addr::new(172, 16, 0, 101));
    }

    #[test]
    fn unworkable_pod_cidrs_are_refused() {
        for bad in [
            "10.0.0.0/24",
            "10.0.0.0/16",
            "10.0.0.128/25",
            "10.0.0.0/8",
            "127.0.0.0/24",
            "224.0.0.0/24",
            "0.0.0.0/0",
            "169.254.1.0/24",
            "255.255.255.0/24",
        ] {
            let mut o = Options::new(Stage::SingleNode);
            o.pod_cidr = Some(bad.parse().unwrap());
            let err = Topology::new(o).unwrap_err().to_string();
            assert!(err.contains(bad) || err.contains(&bad.parse::<Ipv4Net>().unwrap().trunc().to_string()), "{bad}: {err}");
        }
        for good in ["172.16.0.0/24", "192.168.7.0/24", "10.1.0.0/16"] {
            let mut o = Options::new(Stage::SingleNode);
            o.pod_cidr = Some(good.parse().unwrap());
            assert!(Topology::new(o).is_ok(), "{good}");
        }
    }

    #[test]
    fn too_many_containers_hint_fits() {
        let mut o = Options::new(Stage::SingleNode);
        o.containers = 1000;
        o.pod_cidr = Some("172.16.0.0/24".parse().unwrap());
        let err = Topology::new(o.clone()).unwrap_err().to_string();
        assert!(err.contains("172.16.0.0/22"), "{err}");
        o.containers = 100000;
        o.pod_cidr = Some("172.0.0.0/8".parse().unwrap());
        let err = Topology::new(o).unwrap_err().to_string();
        assert!(err.contains("at most 9999"), "{err}");
    }

    #[test]
    fn zero_containers_is_the_node_part_alone() {
        for stage in [Stage::SingleNode, Stage::MultiNode, Stage::Overlay] {
            let mut o = Options::new(stage);
            o.containers = 0;
            let t = Topology::new(o).unwrap();
            assert!(t.nodes.iter().all(|n| n.containers.is_empty() && n.bridge.is_some()), "{stage}");
        }
        for stage in [Stage::Namespace, Stage::Outside, Stage::Services] {
            let mut o = Options::new(stage);
            o.containers = 0;
            assert!(Topology::new(o).is_err(), "{stage}");
        }
    }

    #[test]
    fn nodes_bounds() {
        let mut o = Options::new(Stage::MultiNode);
        o.nodes = 3;
        let t = Topology::new(o.clone()).unwrap();
        assert_eq!(t.nodes[2].ip.addr, Ipv4Addr::new(10, 0, 0, 30));
        assert_eq!(t.nodes[2].pod_net.to_string(), "172.16.2.0/24");
        o.nodes = 26;
        assert!(Topology::new(o.clone()).is_err());
        o.nodes = 1;
        assert!(Topology::new(o).is_err());
    }

    #[test]
    fn find_node_by_any_name() {
        let t = topo(Stage::MultiNode);
        assert_eq!(t.find_node("node2").unwrap().index, 2);
        assert_eq!(t.find_node("3-multi-node-1").unwrap().index, 1);
        assert!(t.find_node("node3").is_none());
    }
}
