//! Plans: for one node of a stage, the ordered steps that build it — pure data.
//!
//! Each step carries the talk's explanation and prints as the equivalent iproute2/sysctl
//! command, so `cnet up` reads like the talk's script and `cnet explain --format sh` is a
//! script that builds the same thing.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::model::ebpf::{self, Hook};
use crate::model::nat::{NatChain, NatRule};
use crate::model::topology::{
    Backend, CLUSTER_PODS, GATEWAY, GATEWAY_OUT, Ipv4Net, Node, OUTSIDE, PUBLISHED_PORT, SERVER_PORT, SERVICE_PORT, SERVICE_VIP,
    Stage, TUNNEL_PORT, Topology, UNDERLAY_PREFIX, VXLAN_PORT, VXLAN_VNI,
};
use crate::model::wire::WireFormat;

/// Where a step runs: the node itself, or inside one of its containers (a named netns).
pub type Netns = Option<String>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Step {
    AddNetns {
        name: String,
    },
    /// A veth pair whose peer is created straight inside `peer_netns`: a namespace's name
    /// under the node's netns directory (one cnet made), or an absolute path (one a
    /// container runtime made, CNI_NETNS: see [`attach_steps`]).
    AddVeth {
        name: String,
        peer: String,
        peer_netns: String,
    },
    AddBridge {
        name: String,
    },
    /// A persistent TUN device, attached to later by the tunnel process.
    AddTun {
        name: String,
    },
    AddVxlan {
        name: String,
        vni: u32,
        local: Ipv4Addr,
        underlay: String,
        port: u16,
    },
    /// `addrgen_none`: in the same request, no IPv6 link-local address for the port (see
    /// NO_LINK_LOCAL).
    SetMaster {
        dev: String,
        master: String,
        addrgen_none: bool,
    },
    SetMtu {
        dev: String,
        mtu: u32,
    },
    AddAddr {
        netns: Netns,
        dev: String,
        addr: Ipv4Net,
    },
    /// `addrgen_none`: in the same request, no IPv6 link-local address for this link (see
    /// NO_LINK_LOCAL).
    LinkUp {
        netns: Netns,
        dev: String,
        addrgen_none: bool,
    },
    /// `dst: None` is the default route.
    AddRoute {
        netns: Netns,
        dst: Option<Ipv4Net>,
        via: Option<Ipv4Addr>,
        dev: String,
        onlink: bool,
    },
    /// A VXLAN forwarding entry: flood unknown and broadcast frames to this peer too.
    AddFdb {
        dev: String,
        dst: Ipv4Addr,
    },
    Sysctl {
        key: String,
        value: String,
    },
    StartTunnel {
        dev: String,
        local: SocketAddrV4,
        peers: Vec<(SocketAddrV4, Ipv4Net)>,
        wire: WireFormat,
    },
    /// `table ip cnet`, marked as cnet's by its comment (stages 5-6).
    AddNatTable,
    AddNatChain {
        chain: NatChain,
    },
    AddNatRule {
        chain: NatChain,
        rule: NatRule,
    },
    /// cnet's demo HTTP server (`cnet serve`) in a container (or on the member itself).
    StartServer {
        netns: Netns,
        name: String,
        listen: SocketAddrV4,
    },
    /// `bridge link set dev DEV hairpin on`: the bridge may send a frame back out of the
    /// port it came in by.
    SetHairpin {
        dev: String,
    },
    /// A clsact qdisc on `dev`: the hooks TC eBPF programs attach to (ebpf backend).
    AddClsact {
        dev: String,
    },
    /// Load cnet's eBPF object (ebpf backend) and fill its maps: this node's address and
    /// port, which peer owns which pod subnet. Held by this process until attached.
    LoadEbpf {
        local: SocketAddrV4,
        tun: String,
        underlay: String,
        peers: Vec<(SocketAddrV4, Ipv4Net)>,
        /// This node's containers and the node end of each one's veth (its bridge port).
        pods: Vec<(Ipv4Addr, String)>,
        /// Deliver to those containers straight (no NAT on the node: see tunnel.bpf.c).
        direct: bool,
    },
    /// Attach one of the loaded programs to `dev` as a TC filter (direct action), which
    /// then holds it: nothing is pinned. `last`: the script version drops its pins after it.
    AttachBpf {
        dev: String,
        hook: Hook,
        program: String,
        last: bool,
    },
}

/// A route as the plan states it.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub dst: Option<Ipv4Net>,
    pub via: Option<Ipv4Addr>,
    pub dev: String,
    pub onlink: bool,
}

impl RouteSpec {
    pub fn dst_text(&self) -> String {
        self.dst.map_or("default".into(), |d| d.to_string())
    }
}

/// A step and the talk's words for it.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedStep {
    #[serde(flatten)]
    pub step: Step,
    pub why: String,
    pub command: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodePlan {
    pub node: u32,
    pub hostname: String,
    pub steps: Vec<PlannedStep>,
}

/// Why the veth ends on a bridge (stages 2-4) get `addrgenmode none` (no IPv6 link-local
/// address): the talk is IPv4-only, and at link-up each link-local address makes its owner
/// multicast DAD and MLD packets that br0 floods to every port, work quadratic in the number
/// of containers (at 1000 containers it was a third of the build's CPU and doubled `up`'s
/// bridge phase).
const NO_LINK_LOCAL: &str = " (addrgenmode none: no IPv6 link-local address, whose DAD and MLD multicasts the bridge would flood to every port and the overlay would carry; the talk is IPv4-only)";

/// Whether this kernel has IPv6 (not booted with ipv6.disable=1, module present): the
/// sysctl tree exists exactly then. Asked once per process.
fn ipv6_available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::path::Path::new("/proc/sys/net/ipv6").exists())
}

fn ns_prefix(netns: &Netns) -> String {
    match netns {
        Some(n) => format!("-n {n} "),
        None => String::new(),
    }
}

impl Step {
    /// The equivalent iproute2 / sysctl command (what the talk's scripts ran).
    pub fn command(&self) -> String {
        match self {
            Step::AddNetns { name } => format!("ip netns add {name}"),
            Step::AddVeth { name, peer, peer_netns } => {
                format!("ip link add {name} type veth peer name {peer} netns {peer_netns}")
            }
            Step::AddBridge { name } => format!("ip link add {name} type bridge"),
            Step::AddTun { name } => format!("ip tuntap add dev {name} mode tun"),
            Step::AddVxlan { name, vni, local, underlay, port } => {
                format!("ip link add {name} type vxlan id {vni} local {local} dev {underlay} dstport {port} nolearning")
            }
            Step::SetMaster { dev, master, addrgen_none } => {
                format!("ip link set {dev} master {master}{}", if *addrgen_none { " addrgenmode none" } else { "" })
            }
            Step::SetMtu { dev, mtu } => format!("ip link set {dev} mtu {mtu}"),
            Step::AddAddr { netns, dev, addr } => format!("ip {}addr add {addr} dev {dev}", ns_prefix(netns)),
            Step::LinkUp { netns, dev, addrgen_none } => {
                format!("ip {}link set {dev} up{}", ns_prefix(netns), if *addrgen_none { " addrgenmode none" } else { "" })
            }
            Step::AddRoute { netns, dst, via, dev, onlink } => {
                let mut s = format!("ip {}route add ", ns_prefix(netns));
                match dst {
                    Some(d) => write!(s, "{d}").unwrap(),
                    None => s.push_str("default"),
                }
                if let Some(v) = via {
                    write!(s, " via {v}").unwrap();
                }
                write!(s, " dev {dev}").unwrap();
                if *onlink {
                    s.push_str(" onlink");
                }
                s
            }
            Step::AddFdb { dev, dst } => format!("bridge fdb append 00:00:00:00:00:00 dev {dev} dst {dst}"),
            Step::Sysctl { key, value } => format!("sysctl -w {key}={value}"),
            Step::StartTunnel { dev, local, peers, wire } => {
                let mut s = format!("cnet tunnel --dev {dev} --local {local}");
                for (addr, net) in peers {
                    write!(s, " --peer {addr}={net}").unwrap();
                }
                if *wire != WireFormat::Raw {
                    write!(s, " --wire {}", wire.name()).unwrap();
                }
                s.push_str(" &");
                s
            }
            Step::AddNatTable => crate::model::nat::table_command(),
            Step::AddNatChain { chain } => chain.command(),
            Step::AddNatRule { chain, rule } => rule.command(*chain),
            Step::StartServer { netns, name, listen } => {
                let inside = netns.as_ref().map_or(String::new(), |n| format!("ip netns exec {n} "));
                format!("{inside}cnet serve --name {name} --listen {listen} &")
            }
            Step::SetHairpin { dev } => format!("bridge link set dev {dev} hairpin on"),
            Step::AddClsact { dev } => format!("tc qdisc add dev {dev} clsact"),
            Step::LoadEbpf { local, tun, underlay, peers, pods, direct } => {
                ebpf::load_command(*local, tun, underlay, &ebpf_peers(peers), pods, *direct)
            }
            Step::AttachBpf { dev, hook, program, last } => ebpf::attach_command(dev, *hook, program, *last),
        }
    }

    /// What undoing this step takes, where anything does: what dies with a deleted link or
    /// namespace needs nothing (addresses, MTUs, routes through cnet's own links...). The
    /// one list of undo rules, for `down` (executor::teardown) and `explain --format
    /// sh-down` alike; `created_links` are the links the same plan creates.
    pub fn undo<'s>(&'s self, created_links: &[&str]) -> Option<Undo<'s>> {
        match self {
            Step::AddNetns { name } => Some(Undo::DeleteNetns(name)),
            Step::AddVeth { .. } | Step::AddBridge { .. } | Step::AddTun { .. } | Step::AddVxlan { .. } => {
                self.created_link().map(Undo::DeleteLink)
            }
            Step::AddRoute { netns: None, dst, via, dev, onlink } if !created_links.contains(&dev.as_str()) => {
                Some(Undo::DeleteRoute {
                    route: RouteSpec { dst: *dst, via: *via, dev: dev.clone(), onlink: *onlink },
                    added_by: self,
                })
            }
            Step::StartTunnel { dev, local, .. } => Some(Undo::StopTunnel { dev, local: *local }),
            Step::Sysctl { key, value } => Some(Undo::RestoreSysctl { key, set_to: value }),
            // Chains and rules go with the table; a server with its container's namespace (or
            // with its lab member); a port's mode with its link.
            Step::AddNatTable => Some(Undo::DeleteNatTable),
            Step::StartServer { netns: None, listen, .. } => Some(Undo::StopServer { listen: *listen }),
            Step::AddNatChain { .. } | Step::AddNatRule { .. } | Step::StartServer { .. } | Step::SetHairpin { .. } => None,
            // On a device cnet made, qdisc and filter go with the device; on the underlay
            // they must be removed (the qdisc only if cnet added it: see executor). A loaded
            // object that was never attached goes with the process that loaded it.
            Step::AddClsact { dev } if !created_links.contains(&dev.as_str()) => Some(Undo::DeleteClsact(dev)),
            Step::AttachBpf { dev, hook, program, .. } if !created_links.contains(&dev.as_str()) => {
                Some(Undo::DetachBpf { dev, hook: *hook, program })
            }
            Step::AddClsact { .. } | Step::AttachBpf { .. } | Step::LoadEbpf { .. } => None,
            Step::SetMaster { .. }
            | Step::SetMtu { .. }
            | Step::AddAddr { .. }
            | Step::LinkUp { .. }
            | Step::AddRoute { .. }
            | Step::AddFdb { .. } => None,
        }
    }

    /// The iproute2 command that undoes this step, where one is needed (see [`Step::undo`]).
    pub fn undo_command(&self, created_links: &[&str]) -> Option<String> {
        self.undo(created_links).map(|u| u.command())
    }

    /// Steps with the same key that follow one another touch different objects (one per
    /// container) and may run concurrently: their netlink requests are pipelined.
    pub fn batch_key(&self) -> Option<u8> {
        match self {
            Step::AddNetns { .. } => Some(1),
            Step::AddVeth { .. } => Some(2),
            Step::AddAddr { netns: Some(_), .. } => Some(3),
            Step::LinkUp { netns: Some(_), .. } => Some(4),
            Step::SetMaster { .. } => Some(5),
            Step::LinkUp { netns: None, .. } => Some(6),
            Step::AddRoute { netns: Some(_), .. } => Some(7),
            _ => None,
        }
    }

    /// Links this step creates on the node (deleted by `down`).
    pub fn created_link(&self) -> Option<&str> {
        match self {
            Step::AddVeth { name, .. } | Step::AddBridge { name } | Step::AddTun { name } | Step::AddVxlan { name, .. } => {
                Some(name)
            }
            _ => None,
        }
    }
}

/// What undoing a step takes (see [`Step::undo`]).
#[derive(Debug)]
pub enum Undo<'s> {
    DeleteNetns(&'s str),
    DeleteLink(&'s str),
    /// A route on the node through a link cnet did not make (it would outlive `down`).
    DeleteRoute {
        route: RouteSpec,
        added_by: &'s Step,
    },
    StopTunnel {
        dev: &'s str,
        local: SocketAddrV4,
    },
    /// `table ip cnet`, whole (only if its comment says it is cnet's).
    DeleteNatTable,
    /// A demo server started outside any container namespace.
    StopServer {
        listen: SocketAddrV4,
    },
    /// Back to the value read before the step, if it is still the one cnet set.
    RestoreSysctl {
        key: &'s str,
        set_to: &'s str,
    },
    /// The clsact qdisc cnet added to a device it did not make (its filters go with it).
    DeleteClsact(&'s str),
    /// cnet's TC filter on a device it did not make (by its fixed priority and handle).
    DetachBpf {
        dev: &'s str,
        hook: Hook,
        program: &'s str,
    },
}

impl Undo<'_> {
    /// As a shell command (`explain --format sh-down`).
    pub fn command(&self) -> String {
        match self {
            Undo::DeleteNetns(name) => format!("ip netns del {name}"),
            // `ip link del`, not `ip tuntap del` for tun0: the latter attaches to the device
            // and fails (busy) while a tunnel still holds it.
            Undo::DeleteLink(name) => format!("ip link del {name}"),
            Undo::DeleteRoute { added_by, .. } => added_by.command().replacen("route add", "route del", 1),
            // This node's tunnel only (nodes may share a PID namespace), never the shell running
            // the script ("[c]net" does not match its own text), and wait up to 2 s for it to
            // go so that nothing is left running when the script ends.
            Undo::StopTunnel { dev, local } => {
                let pat = format!("[c]net tunnel --dev {dev} --local {local} ");
                format!("pkill -f '{pat}' && for i in $(seq 40); do pgrep -f '{pat}' > /dev/null || break; sleep 0.05; done")
            }
            Undo::RestoreSysctl { key, .. } => format!("# set {key} back to its old value if it matters"),
            Undo::DeleteNatTable => format!("nft delete table ip {}", crate::model::nat::TABLE),
            Undo::StopServer { listen } => format!("pkill -f '[c]net serve .*--listen {listen}'"),
            Undo::DeleteClsact(dev) => format!("tc qdisc del dev {dev} clsact"),
            Undo::DetachBpf { dev, hook, .. } => {
                format!("tc filter del dev {dev} {} prio {} handle {} bpf", hook.name(), ebpf::FILTER_PRIO, ebpf::FILTER_HANDLE)
            }
        }
    }
}

struct Builder {
    steps: Vec<PlannedStep>,
    /// Bring veth ends up with `addrgenmode none` (only where the kernel has IPv6: without
    /// it the kernel refuses the attribute, and there is no link-local address to avoid).
    no_link_local: bool,
    /// The note on `addrgenmode none` has been given once (a note repeated on every veth end
    /// is noise).
    explained_no_ll: bool,
    /// Other notes already given (by key), said once per plan.
    said: Vec<&'static str>,
}

impl Builder {
    /// The suffix for a step's explanation when it sets `addrgenmode none`: the why the
    /// first time, a pointer to it afterwards.
    fn no_ll_why(&mut self) -> &'static str {
        match (self.no_link_local, self.explained_no_ll) {
            (false, _) => "",
            (true, false) => {
                self.explained_no_ll = true;
                NO_LINK_LOCAL
            }
            (true, true) => " (addrgenmode none, as above)",
        }
    }

    /// `note` the first time `key` is asked for, `again` after that.
    fn once(&mut self, key: &'static str, note: &'static str, again: &'static str) -> &'static str {
        if self.said.contains(&key) {
            again
        } else {
            self.said.push(key);
            note
        }
    }

    fn push(&mut self, step: Step, why: impl Into<String>) {
        let command = step.command();
        self.steps.push(PlannedStep { step, why: why.into(), command });
    }
}

/// The steps that build node `node` of `topo`. `underlay` is the node's underlay device
/// (`enp0s8` in the lab); other nodes are reached at their `ip` in `topo`.
pub fn node_plan(topo: &Topology, node: &Node, underlay: &str) -> NodePlan {
    node_plan_with(topo, node, underlay, ipv6_available())
}

/// The same, saying whether to give bridged veth ends `addrgenmode none` (this machine's
/// answer is `node_plan`'s; a script for another machine decides when it runs).
pub fn node_plan_with(topo: &Topology, node: &Node, underlay: &str, no_link_local: bool) -> NodePlan {
    let mut b = Builder { steps: Vec::new(), no_link_local, explained_no_ll: false, said: Vec::new() };
    match topo.stage() {
        Stage::Namespace => namespace_steps(&mut b, node),
        stage => {
            bridge_steps(&mut b, node);
            if stage.is_multi_node() {
                multi_node_steps(&mut b, topo, node, underlay);
            }
            if stage.has_nat() {
                nat_steps(&mut b, topo, node, underlay);
            }
        }
    }
    NodePlan { node: node.index, hostname: node.hostname.clone(), steps: b.steps }
}

/// Stages 5 and 6: the world beyond the nodes (egress NAT, node 1's published port, the
/// demo servers) and, in stage 6, the service on every node. Each rule in cnet's own
/// nftables table, with the `nft` command it equals.
fn nat_steps(b: &mut Builder, topo: &Topology, node: &Node, underlay: &str) {
    let pods = CLUSTER_PODS;
    let con1 = &node.containers[0];
    let con1_at = SocketAddrV4::new(con1.addr.addr, SERVER_PORT);
    let egress = node.egress.as_deref().unwrap_or(underlay);
    b.push(Step::AddNatTable, "Create cnet's own nftables table, `table ip cnet`, marked by its comment: `down` deletes it whole, and no table of yours is touched.");
    b.push(Step::AddNatChain { chain: NatChain::Prerouting }, "Its prerouting chain (type nat, priority dstnat): where the destination of a packet arriving at this node may be rewritten (DNAT), before routing decides where it goes.");
    b.push(
        Step::AddNatChain { chain: NatChain::Output },
        "Its output chain: the same for packets this node itself sends, which never pass prerouting.",
    );
    b.push(Step::AddNatChain { chain: NatChain::Postrouting }, "Its postrouting chain (priority srcnat): where the source of a leaving packet may be rewritten (masquerade), after routing.");
    b.push(
        Step::AddNatRule {
            chain: NatChain::Postrouting,
            rule: NatRule::Masquerade { pods, except: vec![pods, node.ip.trunc()], oif: Some(egress.to_string()) },
        },
        format!("Egress NAT (Docker's and the CNI bridge plugin's ipMasq): pod traffic for anything that is not a pod or a node, leaving by {egress} (the interface of the default route), leaves with {egress}'s address. The gateway, like any upstream router, knows nothing of pod subnets: without this, a container's ping to {} dies there. Pod-to-pod and pod-to-node traffic keeps its source: the overlay carries pod addresses.", OUTSIDE.addr),
    );
    if node.index == 1 {
        b.push(
            Step::AddNatRule { chain: NatChain::Prerouting, rule: NatRule::Publish { port: PUBLISHED_PORT, to: con1_at } },
            format!("A published port (docker run -p {PUBLISHED_PORT}:{SERVER_PORT}, the CNI portmap plugin): a connection to any address of this node on port {PUBLISHED_PORT}, from outside, from another node or from a container, goes to {} {con1_at}.", con1.name),
        );
        b.push(
            Step::AddNatRule { chain: NatChain::Output, rule: NatRule::Publish { port: PUBLISHED_PORT, to: con1_at } },
            format!("... and a connection this node makes itself (curl localhost:{PUBLISHED_PORT}): locally generated packets pass output, not prerouting, so they need their own rule."),
        );
        b.push(
            Step::Sysctl { key: "net.ipv4.conf.br0.route_localnet".into(), value: "1".into() },
            "... localhost: a packet from 127.0.0.1 sent out of br0 is dropped as a martian unless route_localnet is on for br0.",
        );
        b.push(
            Step::AddNatRule {
                chain: NatChain::Postrouting,
                rule: NatRule::MasqueradeFrom { src: Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8) },
            },
            format!("... and its source becomes br0's address: {} could never answer 127.0.0.1, which is its own.", con1.name),
        );
        b.push(
            Step::AddNatRule { chain: NatChain::Postrouting, rule: NatRule::Hairpin { subnet: node.pod_net, backend: con1_at } },
            format!("Hairpin: a container on this bridge reaching {}:{PUBLISHED_PORT} is sent back out on br0 to {}; without masquerade {} would answer it directly from {}, an address it never spoke to, and the reply would be dropped.", node.ip.addr, con1.name, con1.name, con1.addr.addr),
        );
    }
    if topo.stage() == Stage::Services {
        service_steps(b, topo, node, con1_at);
    }
    if node.index == 1 || topo.stage() == Stage::Services {
        b.push(
            Step::SetHairpin { dev: con1.host_veth.clone() },
            format!("{} reaching its own published port (or the service) is sent to itself: back out of the very bridge port it came in by, which a bridge refuses unless the port is in hairpin mode (kubelet's hairpin-veth).", con1.name),
        );
        b.push(
            Step::StartServer { netns: Some(con1.name.clone()), name: con1.name.clone(), listen: con1_at },
            format!("Start cnet's demo HTTP server in {} on {con1_at}: it answers every request with who answers and the address it sees you as, so curl shows NAT and DNAT at work (`down` stops it).", con1.name),
        );
    }
}

/// Stage 6: a ClusterIP-style service on this node, for its containers and itself, as
/// kube-proxy programs every node.
fn service_steps(b: &mut Builder, topo: &Topology, node: &Node, con1_at: SocketAddrV4) {
    let vip = SocketAddrV4::new(SERVICE_VIP, SERVICE_PORT);
    let backends: Vec<SocketAddrV4> =
        topo.nodes.iter().map(|n| SocketAddrV4::new(n.containers[0].addr.addr, SERVER_PORT)).collect();
    let n = backends.len();
    for chain in [NatChain::Prerouting, NatChain::Output] {
        for (pick, to) in backends.iter().enumerate() {
            let why = match (chain, pick) {
                (NatChain::Prerouting, 0) => format!(
                    "The service {vip} (a ClusterIP: no interface holds the address) for this node's containers: a new connection goes to {to} with probability 1/{n} (numgen random); conntrack keeps each connection with the backend it got."
                ),
                (NatChain::Prerouting, k) if k + 1 < n => format!(
                    "... else to {to}, with probability 1/{} of what is left (kube-proxy's cascade: each backend 1/{n} in all).",
                    n - k
                ),
                (NatChain::Prerouting, _) => format!("... else to {to}: the last backend takes the rest."),
                (_, 0) => format!("The same service for connections this node makes itself (output): first {to}, 1/{n}."),
                (_, _) => format!("... else {to}."),
            };
            b.push(Step::AddNatRule { chain, rule: NatRule::ServicePick { vip, backends: backends.clone(), pick } }, why);
        }
    }
    if node.index != 1 {
        b.push(
            Step::AddNatRule { chain: NatChain::Postrouting, rule: NatRule::Hairpin { subnet: node.pod_net, backend: con1_at } },
            "Hairpin for the local backend: a container of this bridge sent to it through the service must see the answer come from the node, as the service did.",
        );
    }
}

/// Stage 1 (TALK.md steps 1-9).
fn namespace_steps(b: &mut Builder, node: &Node) {
    let c = &node.containers[0];
    let con = Some(c.name.clone());
    b.push(
        Step::AddNetns { name: c.name.clone() },
        format!("Create the network namespace '{}': a new, empty instance of the kernel's network stack.", c.name),
    );
    b.push(Step::AddVeth { name: c.host_veth.clone(), peer: c.veth.clone(), peer_netns: c.name.clone() },
        format!("Create the veth pair {}/{} — an Ethernet cable with a NIC at each end — with {} straight inside '{}' (the talk creates it, then moves it: same result, one step).",
            c.host_veth, c.veth, c.veth, c.name));
    b.push(
        Step::AddAddr { netns: con.clone(), dev: c.veth.clone(), addr: c.addr },
        format!("Give {} the address {} (a /32: the talk gives no prefix).", c.veth, c.addr.addr),
    );
    // No `addrgenmode none` in stage 1: there is no bridge to flood anything, and on the
    // node's end it would come too late (its peer is up, so IPv6 starts at once).
    b.push(
        Step::LinkUp { netns: con.clone(), dev: c.veth.clone(), addrgen_none: false },
        format!("Bring {} up inside '{}'.", c.veth, c.name),
    );
    b.push(
        Step::LinkUp { netns: None, dev: c.host_veth.clone(), addrgen_none: false },
        format!("Bring {} up on the node.", c.host_veth),
    );
    b.push(
        Step::LinkUp { netns: con.clone(), dev: "lo".into(), addrgen_none: false },
        format!("Bring lo up inside '{}'.", c.name),
    );
    b.push(
        Step::AddRoute { netns: None, dst: Some(c.addr), via: None, dev: c.host_veth.clone(), onlink: false },
        format!("On the node: a directly connected route to the container, {} dev {}.", c.addr, c.host_veth),
    );
    b.push(
        Step::AddRoute { netns: con, dst: None, via: Some(c.addr.addr), dev: c.veth.clone(), onlink: false },
        format!(
            "In '{}': the default route, via {} dev {}, as the talk has it. {} is the container's own address, so there is no router: every destination is taken as directly reachable on {}, the container ARPs for it, and the node answers for any address it owns (a Linux host answers ARP for its addresses on every interface).",
            c.name, c.addr.addr, c.veth, c.addr.addr, c.veth
        ),
    );
}

/// Stage 2, and the base of every node in stages 3 and 4 (TALK.md steps 1-11).
fn bridge_steps(b: &mut Builder, node: &Node) {
    let bridge = node.bridge.expect("stages 2-4 have a bridge");
    for c in &node.containers {
        b.push(Step::AddNetns { name: c.name.clone() }, format!("Create the network namespace '{}'.", c.name));
    }
    for c in &node.containers {
        let note = b.once("veth", " (the talk creates it, then moves it: same result, one step)", "");
        b.push(
            Step::AddVeth { name: c.host_veth.clone(), peer: c.veth.clone(), peer_netns: c.name.clone() },
            format!("Create the veth pair {}/{} with {} straight inside '{}'{note}.", c.host_veth, c.veth, c.veth, c.name),
        );
    }
    for c in &node.containers {
        b.push(
            Step::AddAddr { netns: Some(c.name.clone()), dev: c.veth.clone(), addr: c.addr },
            format!("Give '{}' the address {} on {}.", c.name, c.addr, c.veth),
        );
    }
    for c in &node.containers {
        // In the same request as "up", and that is early enough only because the peer is
        // still down: IPv6 waits for the carrier, which comes when the node end is raised.
        let (no_ll, why) = (b.no_link_local, b.no_ll_why());
        b.push(
            Step::LinkUp { netns: Some(c.name.clone()), dev: c.veth.clone(), addrgen_none: no_ll },
            format!("Bring {} up inside '{}'{why}.", c.veth, c.name),
        );
    }
    b.push(
        Step::AddBridge { name: "br0".into() },
        "Create the bridge br0: a virtual Ethernet switch in the kernel (Docker's docker0).",
    );
    for c in &node.containers {
        let (no_ll, why) = (b.no_link_local, b.no_ll_why());
        b.push(
            Step::SetMaster { dev: c.host_veth.clone(), master: "br0".into(), addrgen_none: no_ll },
            format!("Plug {} into br0{why}.", c.host_veth),
        );
    }
    b.push(Step::AddAddr { netns: None, dev: "br0".into(), addr: bridge },
        format!("Give br0 the address {bridge}: the node can now reach its containers (this installs the connected route {} dev br0).", bridge.trunc()));
    b.push(Step::LinkUp { netns: None, dev: "br0".into(), addrgen_none: false }, "Bring br0 up.");
    for c in &node.containers {
        b.push(Step::LinkUp { netns: None, dev: c.host_veth.clone(), addrgen_none: false }, format!("Bring {} up.", c.host_veth));
    }
    for c in &node.containers {
        b.push(
            Step::LinkUp { netns: Some(c.name.clone()), dev: "lo".into(), addrgen_none: false },
            format!("Bring lo up inside '{}'.", c.name),
        );
    }
    for c in &node.containers {
        b.push(
            Step::AddRoute { netns: Some(c.name.clone()), dst: None, via: Some(bridge.addr), dev: c.veth.clone(), onlink: false },
            format!("In '{}': default via {} (the bridge), the way out of the container.", c.name, bridge.addr),
        );
    }
}

/// A container a runtime made (CNI ADD), to be attached to the node as stage 2 attaches
/// each of its own: its namespace by path, its interface named by the runtime.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// CNI_NETNS: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub netns: String,
    /// CNI_IFNAME, the interface inside the container (`eth0`).
    pub ifname: String,
    /// The veth end that stays on the node.
    pub host_veth: String,
    pub bridge: String,
    /// The container's address, from cnet's IPAM, with the pod subnet's prefix.
    pub addr: Ipv4Net,
    /// The bridge's address: the container's default gateway.
    pub gateway: Ipv4Addr,
}

/// The stage-2 steps for one container that a runtime made: the same steps, words and undo
/// rules as `cnet up` uses for its own containers, minus the namespace (the runtime's) and
/// its `lo` (the runtime raises it). What cnet's CNI plugin runs for ADD.
pub fn attach_steps(a: &Attachment) -> Vec<PlannedStep> {
    attach_steps_with(a, ipv6_available())
}

/// The same, saying whether the veth ends get `addrgenmode none`.
pub fn attach_steps_with(a: &Attachment, no_link_local: bool) -> Vec<PlannedStep> {
    let mut b = Builder { steps: Vec::new(), no_link_local, explained_no_ll: false, said: Vec::new() };
    let ns = Some(a.netns.clone());
    b.push(
        Step::AddVeth { name: a.host_veth.clone(), peer: a.ifname.clone(), peer_netns: a.netns.clone() },
        format!(
            "Create the veth pair {}/{} with {} straight inside the runtime's namespace {}.",
            a.host_veth, a.ifname, a.ifname, a.netns
        ),
    );
    b.push(
        Step::AddAddr { netns: ns.clone(), dev: a.ifname.clone(), addr: a.addr },
        format!("Give the container the address {} on {} (leased by cnet's IPAM).", a.addr, a.ifname),
    );
    let (no_ll, why) = (b.no_link_local, b.no_ll_why());
    b.push(
        Step::LinkUp { netns: ns.clone(), dev: a.ifname.clone(), addrgen_none: no_ll },
        format!("Bring {} up inside the container{why}.", a.ifname),
    );
    let (no_ll, why) = (b.no_link_local, b.no_ll_why());
    b.push(
        Step::SetMaster { dev: a.host_veth.clone(), master: a.bridge.clone(), addrgen_none: no_ll },
        format!("Plug {} into {}{why}.", a.host_veth, a.bridge),
    );
    b.push(Step::LinkUp { netns: None, dev: a.host_veth.clone(), addrgen_none: false }, format!("Bring {} up.", a.host_veth));
    b.push(
        Step::AddRoute { netns: ns, dst: None, via: Some(a.gateway), dev: a.ifname.clone(), onlink: false },
        format!("In the container: default via {} (the bridge), the way out of the container.", a.gateway),
    );
    b.steps
}

/// Stages 3 and 4: join this node's pod subnet to the others'.
fn multi_node_steps(b: &mut Builder, topo: &Topology, node: &Node, underlay: &str) {
    let peers: Vec<(&Node, Ipv4Addr)> = topo.peers_of(node.index).map(|p| (p, p.ip.addr)).collect();
    match (topo.stage(), topo.options.backend) {
        (Stage::MultiNode, _) => {
            for (p, ip) in &peers {
                // A routed fabric that was taught the pod routes carries them: the node's
                // default route (to the router) is the way, no static route is added.
                if !topo.on_link(node.index, p.index) && topo.options.advertise_pod_routes {
                    continue;
                }
                let why = if topo.on_link(node.index, p.index) {
                    format!(
                        "A static route to node {}'s pod subnet {} through that node ({ip}): it works because the nodes share one L2 network (flannel host-gw).",
                        p.index, p.pod_net
                    )
                } else {
                    format!(
                        "A static route to node {}'s pod subnet {} through that node ({ip}), as the talk has it. Here {ip} is on another subnet, behind a router: the kernel will refuse it (see `cnet up` for why).",
                        p.index, p.pod_net
                    )
                };
                b.push(
                    Step::AddRoute { netns: None, dst: Some(p.pod_net), via: Some(*ip), dev: underlay.into(), onlink: false },
                    why,
                );
            }
            ip_forward(b);
        }
        (s, backend @ (Backend::Udp | Backend::UdpGso | Backend::Ebpf)) if s.has_overlay() => {
            ip_forward(b);
            let tun = node.tun_addr();
            let mtu = topo.tun_mtu();
            if backend == Backend::Ebpf {
                b.push(Step::AddTun { name: "tun0".into() },
                    "Create the TUN device tun0, as for the userspace tunnel: the device the pod routes point at. No process will read it (it shows NO-CARRIER): a TC program on its egress takes every packet routed into it before the device would queue it for a reader.");
            } else {
                b.push(Step::AddTun { name: "tun0".into() },
                    "Create the TUN device tun0: an interface backed by a user-space process, which reads the raw IP packets routed into it.");
            }
            b.push(Step::AddAddr { netns: None, dev: "tun0".into(), addr: tun },
                format!("Give tun0 {tun}: the /16 installs {} dev tun0, which catches every other node's pod subnet (the more specific {} dev br0 keeps ours on the bridge).",
                    tun.trunc(), node.pod_net));
            let wire = backend.wire().unwrap_or_default();
            let why = if wire == WireFormat::Gso {
                format!(
                    "Set tun0's MTU to {mtu} = underlay {} - 42 (20 outer IPv4 + 8 UDP + 14 of the gso wire's framing), so an encapsulated packet fits without fragmenting.",
                    topo.options.underlay_mtu
                )
            } else {
                format!(
                    "Lower tun0's MTU to {mtu} = underlay {} - 28 (20 outer IPv4 + 8 UDP), so an encapsulated packet fits without fragmenting (the talk's 1492 forgot the IPv4 header).",
                    topo.options.underlay_mtu
                )
            };
            b.push(Step::SetMtu { dev: "tun0".into(), mtu }, why);
            // No IPv6 link-local on tun0 either: its router solicitations and MLD reports
            // would be read by the tunnel, which carries only IPv4 (they were its
            // `tun_not_ipv4` drops).
            let (no_ll, why) = (b.no_link_local, b.no_ll_why());
            b.push(Step::LinkUp { netns: None, dev: "tun0".into(), addrgen_none: no_ll }, format!("Bring tun0 up{why}."));
            let local = SocketAddrV4::new(node.ip.addr, TUNNEL_PORT);
            let tunnel_peers = peers.iter().map(|(p, ip)| (SocketAddrV4::new(*ip, TUNNEL_PORT), p.pod_net)).collect();
            let what = if wire == WireFormat::Gso {
                format!(
                    "Start the tunnel: every packet read from tun0, a 64 KB TCP super-packet too, goes whole as one UDP datagram from {local} to the node owning its destination (cnet's gso wire: the other end must be cnet, the underlay must carry 64 KB datagrams), and every datagram received goes back into tun0."
                )
            } else {
                format!(
                    "Start the tunnel: every packet read from tun0 goes as one UDP datagram from {local} to the node owning its destination, and every datagram received goes back into tun0 (the talk's socat)."
                )
            };
            if backend == Backend::Ebpf {
                ebpf_steps(b, node, underlay, local, tunnel_peers, !s.has_nat());
            } else {
                b.push(Step::StartTunnel { dev: "tun0".into(), local, peers: tunnel_peers, wire }, what);
            }
            direct_routes(b, topo, node, underlay);
            rp_filter(b, underlay, "tun0");
        }
        (s, Backend::Vxlan) if s.has_overlay() => {
            ip_forward(b);
            let tun = node.tun_addr();
            b.push(Step::AddVxlan { name: "vxlan0".into(), vni: VXLAN_VNI, local: node.ip.addr, underlay: underlay.into(), port: VXLAN_PORT },
                "Create the kernel's VXLAN device vxlan0 (flannel's vxlan backend): the overlay done in the kernel, Ethernet frames in UDP.");
            for (_, ip) in &peers {
                b.push(
                    Step::AddFdb { dev: "vxlan0".into(), dst: *ip },
                    format!("Send vxlan0's broadcast and unknown frames (ARP) to {ip} too."),
                );
            }
            b.push(
                Step::AddAddr { netns: None, dev: "vxlan0".into(), addr: tun },
                format!("Give vxlan0 {tun}, this node's end of the overlay."),
            );
            let (no_ll, why) = (b.no_link_local, b.no_ll_why());
            b.push(Step::LinkUp { netns: None, dev: "vxlan0".into(), addrgen_none: no_ll }, format!("Bring vxlan0 up{why}."));
            for (p, _) in &peers {
                if topo.options.direct_routing && topo.on_link(node.index, p.index) {
                    continue; // routed directly, below
                }
                let gw = p.tun_addr().addr;
                b.push(
                    Step::AddRoute { netns: None, dst: Some(p.pod_net), via: Some(gw), dev: "vxlan0".into(), onlink: true },
                    format!("Node {}'s pod subnet {} through its overlay address {gw} on vxlan0.", p.index, p.pod_net),
                );
            }
            direct_routes(b, topo, node, underlay);
            rp_filter(b, underlay, "vxlan0");
        }
        (s, _) => unreachable!("stage {s} is not multi-node"),
    }
}

/// The ebpf backend's datapath: the talk's wire, built and taken apart by two TC programs
/// in the kernel instead of a userspace process (what Cilium does with its BPF programs on
/// the host's devices).
fn ebpf_steps(
    b: &mut Builder,
    node: &Node,
    underlay: &str,
    local: SocketAddrV4,
    peers: Vec<(SocketAddrV4, Ipv4Net)>,
    direct: bool,
) {
    let tun = "tun0".to_string();
    b.push(
        Step::AddClsact { dev: tun.clone() },
        "Give tun0 a clsact qdisc: not a queue, the ingress and egress hooks where TC eBPF programs run.",
    );
    b.push(
        Step::AddClsact { dev: underlay.into() },
        format!("... and {underlay} (the underlay) too: `down` removes it again, as cnet added it."),
    );
    let list: Vec<String> = peers.iter().map(|(a, n)| format!("{n} -> {}", a.ip())).collect();
    let pods: Vec<(Ipv4Addr, String)> = node.containers.iter().map(|c| (c.addr.addr, c.host_veth.clone())).collect();
    let delivery = if direct {
        " and its own containers with their bridge ports, to which the decapsulating program delivers their packets itself (TTL - 1, the container's MAC from the neighbour table), as Cilium delivers to its pods: a TCP super-packet that crossed the underlay whole still bears the kernel's tunnel mark, which no BPF helper clears, and br0 would cut it up in software"
    } else {
        " (no direct delivery to containers here: this stage's NAT needs every packet to pass the node's conntrack, so all go through tun0)"
    };
    b.push(
        Step::LoadEbpf { local, tun: tun.clone(), underlay: underlay.into(), peers, pods, direct },
        format!(
            "Load cnet's eBPF object (compiled from src/ebpf/tunnel.bpf.c, checked by the kernel's verifier, JIT-compiled) and fill its maps: this node's address {local}, which peer owns which pod subnet ({}){delivery}; a per-CPU array counts traffic and drops by reason for `cnet status`.",
            list.join(", ")
        ),
    );
    b.push(
        Step::AttachBpf { dev: underlay.into(), hook: Hook::Ingress, program: ebpf::PROG_DECAP.into(), last: false },
        format!("Attach {} to {underlay}'s ingress: a UDP datagram to {local} from a known peer's port has its inner packet checked as the userspace tunnel checks it (well-formed IPv4, source inside that peer's pod subnet), its outer IPv4 and UDP headers stripped, and is redirected into tun0's ingress, as if the tunnel had written it there{}; anything else to that port is dropped and counted, other traffic passes untouched.", ebpf::PROG_DECAP, if direct { " (one for this node's own containers goes straight to its bridge port)" } else { "" }),
    );
    b.push(
        Step::AttachBpf { dev: tun, hook: Hook::Egress, program: ebpf::PROG_ENCAP.into(), last: true },
        format!("Attach {} to tun0's egress: each packet routed into tun0 gets an outer IPv4 header ({} to the node owning its destination) and a UDP header (port {} to port {}), then an Ethernet header for the next hop that bpf_fib_lookup finds, and is redirected out of {underlay}: the talk's wire, with no process in the path. A TCP super-packet (GSO) stays whole, marked as a UDP tunnel, so that it is cut into segments each with its own outer headers only where it must be.", ebpf::PROG_ENCAP, local.ip(), local.port(), local.port()),
    );
}

/// The peers as the eBPF maps hold them.
pub fn ebpf_peers(peers: &[(SocketAddrV4, Ipv4Net)]) -> Vec<ebpf::Peer> {
    peers.iter().map(|(addr, pod_net)| ebpf::Peer { addr: *addr, pod_net: *pod_net }).collect()
}

/// `--direct-routing`: a peer on this node's own subnet is reached by a plain route, more
/// specific than the overlay's, with no encapsulation; the others still go through the
/// overlay (flannel's DirectRouting, Calico's CrossSubnet).
fn direct_routes(b: &mut Builder, topo: &Topology, node: &Node, underlay: &str) {
    if !topo.options.direct_routing {
        return;
    }
    for p in topo.peers_of(node.index).filter(|p| topo.on_link(node.index, p.index)) {
        let ip = p.ip.addr;
        b.push(
            Step::AddRoute { netns: None, dst: Some(p.pod_net), via: Some(ip), dev: underlay.into(), onlink: false },
            format!("Direct routing: node {} ({ip}) is on this node's own subnet, so its pod subnet {} is routed to it plainly, as in stage 3; only peers behind a router go through the overlay.", p.index, p.pod_net),
        );
    }
}

/// What `up` says when the kernel refuses a static route to `via`: what on-link means, why
/// the router in between cannot carry the pod subnet, and the three ways out.
pub fn not_on_link_why(dst: &Ipv4Net, via: Ipv4Addr, dev: &str) -> String {
    format!(
        "the next hop {via} is not on-link: a route's gateway must be reachable directly on {dev}'s own subnet (one ARP away), and {via} is on another subnet, behind a router. Nor could the router carry the packet: it knows only the node subnets and has never heard of {dst}. The ways out: teach the fabric the pod routes (what Calico does with BGP; here --advertise-pod-routes), encapsulate so that the router sees only node addresses (stage 4: cnet up overlay --fabric routed), or both: route directly where the peer is on-link and encapsulate elsewhere (--direct-routing)"
    )
}

/// The lab's members other than the nodes, for this topology, in the order they are built.
pub fn members(topo: &Topology) -> Vec<&'static str> {
    let mut m = Vec::new();
    if !topo.subnets.is_empty() {
        m.push(ROUTER);
    }
    if topo.stage().has_nat() {
        m.extend([GATEWAY_MEMBER, OUTSIDE_MEMBER]);
    }
    m
}

/// A lab member's plan (its cables are the lab's, as a node's enp0s8 is).
pub fn member_plan(topo: &Topology, member: &str) -> NodePlan {
    match member {
        GATEWAY_MEMBER => gateway_plan(),
        OUTSIDE_MEMBER => outside_plan(),
        _ => router_plan(topo),
    }
}

/// Stages 5-6: the lab's `gateway`, the nodes' way to the world (as an upstream router is):
/// 10.0.0.1 on the nodes' network (eth0), 203.0.113.1 towards the outside world (eth1). It
/// knows those two networks and nothing of pod subnets; it does no NAT of its own.
pub fn gateway_plan() -> NodePlan {
    let mut b = Builder { steps: Vec::new(), no_link_local: false, explained_no_ll: false, said: Vec::new() };
    let inside = Ipv4Net::new(GATEWAY, UNDERLAY_PREFIX);
    b.push(
        Step::AddAddr { netns: None, dev: "eth0".into(), addr: inside },
        format!("Give the gateway {inside} on eth0, the nodes' network: their default route points here."),
    );
    b.push(Step::LinkUp { netns: None, dev: "eth0".into(), addrgen_none: false }, "Bring eth0 up.");
    b.push(
        Step::AddAddr { netns: None, dev: "eth1".into(), addr: GATEWAY_OUT },
        format!("Give it {GATEWAY_OUT} on eth1, towards the outside world."),
    );
    b.push(Step::LinkUp { netns: None, dev: "eth1".into(), addrgen_none: false }, "Bring eth1 up.");
    b.push(
        Step::Sysctl { key: "net.ipv4.ip_forward".into(), value: "1".into() },
        "Turn on forwarding between the two. Like any upstream router it knows only the networks it is on: a packet from a pod address could go out, but no answer could find its way back (hence the nodes' masquerade).",
    );
    NodePlan { node: 0, hostname: GATEWAY_MEMBER.into(), steps: b.steps }
}

/// Stages 5-6: a host of the outside world (documentation space, TEST-NET-3), behind the
/// gateway, with cnet's demo server to show whom it sees.
pub fn outside_plan() -> NodePlan {
    let mut b = Builder { steps: Vec::new(), no_link_local: false, explained_no_ll: false, said: Vec::new() };
    b.push(Step::AddAddr { netns: None, dev: "eth0".into(), addr: OUTSIDE }, format!("Give the outside host {OUTSIDE} on eth0."));
    b.push(Step::LinkUp { netns: None, dev: "eth0".into(), addrgen_none: false }, "Bring eth0 up.");
    b.push(
        Step::AddRoute { netns: None, dst: None, via: Some(GATEWAY_OUT.addr), dev: "eth0".into(), onlink: false },
        format!("Its default route, via the gateway {}: it knows the world, not the nodes' private network.", GATEWAY_OUT.addr),
    );
    let listen = SocketAddrV4::new(OUTSIDE.addr, SERVER_PORT);
    b.push(
        Step::StartServer { netns: None, name: OUTSIDE_MEMBER.into(), listen },
        format!("Start cnet's demo HTTP server on {listen}: it says whom it sees (the node's address, when a container's traffic is masqueraded)."),
    );
    NodePlan { node: 0, hostname: OUTSIDE_MEMBER.into(), steps: b.steps }
}

/// Stages 5-6: the lab's gateway and outside host, as members.
pub const GATEWAY_MEMBER: &str = "gateway";
pub const OUTSIDE_MEMBER: &str = "outside";

/// The routed fabric's router (a lab member): its address on each node subnet, forwarding,
/// and with --advertise-pod-routes the routes each node's BGP speaker would announce.
/// Its cables (eth1, eth2, ...) are the lab's, as a node's enp0s8 is.
pub fn router_plan(topo: &Topology) -> NodePlan {
    let mut b = Builder { steps: Vec::new(), no_link_local: false, explained_no_ll: false, said: Vec::new() };
    for (k, s) in topo.subnets.iter().enumerate() {
        let dev = router_port(k);
        let names: Vec<String> = s.nodes.iter().map(|n| format!("node{n}")).collect();
        let addr = Ipv4Net::new(s.router, s.net.prefix);
        b.push(
            Step::AddAddr { netns: None, dev: dev.clone(), addr },
            format!("Give the router {addr} on {dev}, the subnet {} of {}: their gateway.", s.net.trunc(), names.join(" and ")),
        );
        b.push(Step::LinkUp { netns: None, dev: dev.clone(), addrgen_none: false }, format!("Bring {dev} up."));
    }
    b.push(
        Step::Sysctl { key: "net.ipv4.ip_forward".into(), value: "1".into() },
        "Turn on forwarding: the router joins the node subnets, as a cloud network or a data-centre fabric does. It knows those subnets and nothing else.",
    );
    if topo.options.advertise_pod_routes {
        for n in &topo.nodes {
            let k = topo.subnets.iter().position(|s| s.nodes.contains(&n.index)).expect("every node has a subnet");
            b.push(
                Step::AddRoute { netns: None, dst: Some(n.pod_net), via: Some(n.ip.addr), dev: router_port(k), onlink: false },
                format!(
                    "What node {}'s BGP speaker (Calico's BIRD) would announce: its pod subnet {} via {}.",
                    n.index, n.pod_net, n.ip.addr
                ),
            );
        }
    }
    NodePlan { node: 0, hostname: ROUTER.into(), steps: b.steps }
}

/// The routed fabric's router: its name as a lab member and its hostname.
pub const ROUTER: &str = "router";

/// The router's cable to the k-th subnet (0-based): eth1, eth2, ...
pub fn router_port(k: usize) -> String {
    format!("eth{}", k + 1)
}

fn ip_forward(b: &mut Builder) {
    b.push(
        Step::Sysctl { key: "net.ipv4.ip_forward".into(), value: "1".into() },
        "Turn on IP forwarding: the node becomes a router for its containers' packets.",
    );
}

fn rp_filter(b: &mut Builder, underlay: &str, overlay: &str) {
    b.push(Step::Sysctl { key: "net.ipv4.conf.all.rp_filter".into(), value: "0".into() },
        format!("Turn off reverse-path filtering: a container's packet to another node's own address leaves its node on {underlay} (that address is on the underlay), but at the other node the route back to the container points into {overlay}, so a strict check there would drop the request as arriving on the wrong interface."));
    for dev in [underlay, "br0", overlay] {
        let note = b.once(
            "rp_filter",
            ": the kernel applies the higher of 'all' and the interface's own value (2, loose, beats 1, strict; only 0 and 0 is off)",
            "",
        );
        b.push(
            Step::Sysctl { key: format!("net.ipv4.conf.{dev}.rp_filter"), value: "0".into() },
            format!("... and on {dev}{note}."),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::topology::{Options, Stage, UNDERLAY_DEV};

    /// As on a kernel with IPv6, whatever the build machine has.
    fn plan(stage: Stage, node: u32) -> NodePlan {
        let t = Topology::new(Options::new(stage)).unwrap();
        node_plan_with(&t, t.node(node).unwrap(), UNDERLAY_DEV, true)
    }
    fn commands(p: &NodePlan) -> Vec<String> {
        p.steps.iter().map(|s| s.command.clone()).collect()
    }

    #[test]
    fn stage1_plan_is_the_talks_script() {
        let p = plan(Stage::Namespace, 1);
        assert_eq!(
            commands(&p),
            vec![
                "ip netns add con",
                "ip link add veth1 type veth peer name veth2 netns con",
                "ip -n con addr add 172.16.0.1/32 dev veth2",
                "ip -n con link set veth2 up",
                "ip link set veth1 up",
                "ip -n con link set lo up",
                "ip route add 172.16.0.1/32 dev veth1",
                "ip -n con route add default via 172.16.0.1 dev veth2",
            ]
        );
        assert!(p.steps[1].why.contains("Ethernet cable"));
        assert!(p.steps.iter().all(|s| !s.why.is_empty()));
    }

    #[test]
    fn stage2_plan_is_the_talks_script() {
        let p = plan(Stage::SingleNode, 1);
        assert_eq!(
            commands(&p),
            vec![
                "ip netns add con1",
                "ip netns add con2",
                "ip link add veth10 type veth peer name veth11 netns con1",
                "ip link add veth20 type veth peer name veth21 netns con2",
                "ip -n con1 addr add 172.16.0.2/24 dev veth11",
                "ip -n con2 addr add 172.16.0.3/24 dev veth21",
                "ip -n con1 link set veth11 up addrgenmode none",
                "ip -n con2 link set veth21 up addrgenmode none",
                "ip link add br0 type bridge",
                "ip link set veth10 master br0 addrgenmode none",
                "ip link set veth20 master br0 addrgenmode none",
                "ip addr add 172.16.0.1/24 dev br0",
                "ip link set br0 up",
                "ip link set veth10 up",
                "ip link set veth20 up",
                "ip -n con1 link set lo up",
                "ip -n con2 link set lo up",
                "ip -n con1 route add default via 172.16.0.1 dev veth11",
                "ip -n con2 route add default via 172.16.0.1 dev veth21",
            ]
        );
        assert!(p.steps[8].why.contains("switch"));
    }

    #[test]
    fn without_ipv6_no_addrgenmode_is_sent_or_printed() {
        let t = Topology::new(Options::new(Stage::SingleNode)).unwrap();
        let p = node_plan_with(&t, t.node(1).unwrap(), UNDERLAY_DEV, false);
        assert!(p.steps.iter().all(|s| !s.command.contains("addrgenmode") && !s.why.contains("addrgenmode")));
        assert!(
            p.steps
                .iter()
                .all(|s| !matches!(s.step, Step::LinkUp { addrgen_none: true, .. } | Step::SetMaster { addrgen_none: true, .. }))
        );
        assert!(commands(&p).contains(&"ip link set veth10 master br0".to_string()));
    }

    /// `addrgenmode none` rides on "up" and is in time only while the peer is still down:
    /// every container end must be raised before its node end, and every port must get the
    /// mode (with "master") before it is raised.
    #[test]
    fn link_local_is_switched_off_before_any_carrier() {
        use crate::model::topology::Backend;
        for (stage, backend) in [
            (Stage::SingleNode, Backend::Udp),
            (Stage::MultiNode, Backend::Udp),
            (Stage::Overlay, Backend::Udp),
            (Stage::Overlay, Backend::Vxlan),
            (Stage::Overlay, Backend::UdpGso),
        ] {
            let mut o = Options::new(stage);
            o.containers = 5;
            o.backend = backend;
            let t = Topology::new(o).unwrap();
            for node in &t.nodes {
                let steps: Vec<Step> = node_plan_with(&t, node, UNDERLAY_DEV, true).steps.into_iter().map(|s| s.step).collect();
                let up_at = |ns: Option<&str>, dev: &str| {
                    steps
                        .iter()
                        .position(|s| matches!(s, Step::LinkUp { netns, dev: d, .. } if netns.as_deref() == ns && d == dev))
                        .unwrap()
                };
                for c in &node.containers {
                    let con_up = up_at(Some(&c.name), &c.veth);
                    assert!(matches!(steps[con_up], Step::LinkUp { addrgen_none: true, .. }), "{stage:?} {}", c.veth);
                    assert!(con_up < up_at(None, &c.host_veth), "{stage:?}: {} raised after its peer", c.veth);
                    let master = steps
                        .iter()
                        .position(|s| matches!(s, Step::SetMaster { dev, addrgen_none: true, .. } if *dev == c.host_veth))
                        .unwrap();
                    assert!(master < up_at(None, &c.host_veth), "{stage:?}: {} raised before its mode was set", c.host_veth);
                }
            }
        }
    }

    #[test]
    fn stage3_adds_static_route_and_forwarding() {
        let p1 = commands(&plan(Stage::MultiNode, 1));
        assert!(p1.contains(&"ip route add 172.16.1.0/24 via 10.0.0.20 dev enp0s8".to_string()));
        assert_eq!(p1.last().unwrap(), "sysctl -w net.ipv4.ip_forward=1");
        let p2 = commands(&plan(Stage::MultiNode, 2));
        assert!(p2.contains(&"ip route add 172.16.0.0/24 via 10.0.0.10 dev enp0s8".to_string()));
        assert!(p2.contains(&"ip addr add 172.16.1.1/24 dev br0".to_string()));
    }

    #[test]
    fn stage4_tunnel_mtu_and_rp_filter() {
        let p = plan(Stage::Overlay, 1);
        let c = commands(&p);
        assert!(c.contains(&"ip addr add 172.16.0.100/16 dev tun0".to_string()));
        assert!(c.contains(&"ip link set tun0 mtu 1472".to_string()));
        assert!(c.contains(&"cnet tunnel --dev tun0 --local 10.0.0.10:9000 --peer 10.0.0.20:9000=172.16.1.0/24 &".to_string()));
        for dev in ["all", "enp0s8", "br0", "tun0"] {
            assert!(c.contains(&format!("sysctl -w net.ipv4.conf.{dev}.rp_filter=0")), "{dev}");
        }
        let mtu = p.steps.iter().find(|s| s.command.contains("mtu")).unwrap();
        assert!(mtu.why.contains("1492") && mtu.why.contains("28"), "{}", mtu.why);
        assert!(!c.iter().any(|c| c.contains("via 10.0.0.20")), "no static routes in stage 4");
    }

    #[test]
    fn stage4_udp_gso_backend() {
        let t = Topology::new(Options::new(Stage::Overlay).with_backend(Backend::UdpGso)).unwrap();
        let p = node_plan(&t, t.node(1).unwrap(), "enp0s8");
        let c = commands(&p);
        // Same build as udp; tun0's MTU leaves room for the gso framing on a 64 KB underlay.
        assert!(c.contains(&"ip link set tun0 mtu 65493".to_string()), "{c:?}");
        assert!(
            c.contains(
                &"cnet tunnel --dev tun0 --local 10.0.0.10:9000 --peer 10.0.0.20:9000=172.16.1.0/24 --wire gso &".to_string()
            ),
            "{c:?}"
        );
        let udp = commands(&plan(Stage::Overlay, 1));
        assert_eq!(c.len(), udp.len());
        // Undone the same way: the pattern still matches the command with --wire.
        let stop = p
            .steps
            .iter()
            .find_map(|s| if matches!(s.step, Step::StartTunnel { .. }) { s.step.undo_command(&[]) } else { None })
            .unwrap();
        assert!(stop.starts_with("pkill -f '[c]net tunnel --dev tun0 --local 10.0.0.10:9000 '"), "{stop}");
    }

    #[test]
    fn stage4_vxlan_backend() {
        let mut o = Options::new(Stage::Overlay);
        o.backend = Backend::Vxlan;
        let t = Topology::new(o).unwrap();
        let c = commands(&node_plan(&t, t.node(2).unwrap(), "enp0s8"));
        assert!(c.contains(&"ip link add vxlan0 type vxlan id 1 local 10.0.0.20 dev enp0s8 dstport 4789 nolearning".to_string()));
        assert!(c.contains(&"bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst 10.0.0.10".to_string()));
        assert!(c.contains(&"ip route add 172.16.0.0/24 via 172.16.0.100 dev vxlan0 onlink".to_string()));
    }

    #[test]
    fn undo_commands_reverse_the_build() {
        let p = plan(Stage::MultiNode, 1);
        let links: Vec<&str> = p.steps.iter().filter_map(|s| s.step.created_link()).collect();
        let undo: Vec<String> = p.steps.iter().rev().filter_map(|s| s.step.undo_command(&links)).collect();
        assert_eq!(undo[0], "# set net.ipv4.ip_forward back to its old value if it matters");
        assert_eq!(undo[1], "ip route del 172.16.1.0/24 via 10.0.0.20 dev enp0s8");
        assert_eq!(
            &undo[2..],
            ["ip link del br0", "ip link del veth20", "ip link del veth10", "ip netns del con2", "ip netns del con1"]
        );
    }

    #[test]
    fn attach_is_stage_2_for_one_runtime_container() {
        let a = Attachment {
            netns: "/run/netns/netns-1234".into(),
            ifname: "eth0".into(),
            host_veth: "vethac100002".into(),
            bridge: "br0".into(),
            addr: "172.16.0.2/24".parse().unwrap(),
            gateway: Ipv4Addr::new(172, 16, 0, 1),
        };
        let p = attach_steps_with(&a, true);
        let c: Vec<_> = p.iter().map(|s| s.command.clone()).collect();
        assert_eq!(
            c,
            vec![
                "ip link add vethac100002 type veth peer name eth0 netns /run/netns/netns-1234",
                "ip -n /run/netns/netns-1234 addr add 172.16.0.2/24 dev eth0",
                "ip -n /run/netns/netns-1234 link set eth0 up addrgenmode none",
                "ip link set vethac100002 master br0 addrgenmode none",
                "ip link set vethac100002 up",
                "ip -n /run/netns/netns-1234 route add default via 172.16.0.1 dev eth0",
            ]
        );
        // Undone by deleting the node's end alone: nothing of the runtime's namespace.
        let links: Vec<&str> = p.iter().filter_map(|s| s.step.created_link()).collect();
        let undo: Vec<String> = p.iter().rev().filter_map(|s| s.step.undo_command(&links)).collect();
        assert_eq!(undo, vec!["ip link del vethac100002"]);
    }

    #[test]
    fn peer_override() {
        let mut t = Topology::new(Options::new(Stage::MultiNode)).unwrap();
        t.set_node_ip(2, Ipv4Addr::new(192, 168, 56, 11));
        let p = node_plan(&t, t.node(1).unwrap(), "eth1");
        assert!(commands(&p).contains(&"ip route add 172.16.1.0/24 via 192.168.56.11 dev eth1".to_string()));
    }
}
