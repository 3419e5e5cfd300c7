//! The command line: clap's derive, and the value parsers that turn its words into the
//! model's types (no other logic here).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::topology::{Backend, Fabric, Ipv4Net, Stage, TUNNEL_PORT};
use crate::model::wire::WireFormat;
use crate::observe::capture::PROTOCOLS;
use crate::tunnel::Peer;

#[derive(Parser, Debug)]
#[command(
    name = "cnet",
    version,
    about = "Build the topologies of \"Container Networking From Scratch\" (KubeCon 2018), step by step",
    long_about = "Build the topologies of the talk \"Container Networking From Scratch\" step by step, in a lab of \
VM-like nodes made of namespaces (default) or on the machine itself (--host).\n\nStages: namespace (1), single-node (2), multi-node (3), overlay (4); beyond the talk: outside (5), services (6)."
)]
pub struct Cli {
    /// More detail on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
    /// (internal) Wrap text at this many columns (the terminal of the cnet that started us).
    #[arg(long, hide = true, global = true)]
    pub width: Option<usize>,
    /// (internal) Report a failure as JSON on this descriptor, for the cnet that started us.
    #[arg(long, hide = true, global = true)]
    pub report_fd: Option<i32>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a stage: namespace (1), single-node (2), multi-node (3), overlay (4), outside (5), services (6).
    Up(UpArgs),
    /// Remove everything `up` built (nothing up: says so, exits 0).
    Down(DownArgs),
    /// What is up, read back from the kernel, and whether it matches the plan.
    Status(StatusArgs),
    /// Run the talk's connectivity checks (ICMP echo, expected TTLs) for the stage that is up.
    Test(TestArgs),
    /// Run a command inside a lab node, or inside one of its containers (node1/con1).
    Exec(ExecArgs),
    /// An interactive shell inside a lab node.
    Shell(ShellArgs),
    /// Print a stage's plan without building it (text, a runnable iproute2 script, or JSON).
    Explain(ExplainArgs),
    /// Run the TUN <-> UDP tunnel (the talk's socat) in the foreground.
    Tunnel(TunnelArgs),
    /// Capture packets on a node's interface: source, destination and protocol stack per packet.
    Capture(CaptureArgs),
    /// Draw a stage's topology: live state when it is up, the plan otherwise.
    Diagram(DiagramArgs),
    /// Put one fault into a lab node (no-forwarding node2, ...) to see `cnet test` and
    /// `cnet trace` find it; `--list` says what each teaches; `cnet down` removes it all.
    Break(BreakArgs),
    /// (internal) Put a fault into the node this runs in.
    #[command(name = "__break", hide = true)]
    BreakHere(BreakHereArgs),
    /// Follow a packet hop by hop through what is up: each hop's route, next hop and MAC,
    /// encapsulation, TTL, and where and why it would be dropped.
    Trace(TraceArgs),
    /// The demo HTTP server of stages 5-6: every request gets one line saying who answers
    /// and the client address it sees (NAT and DNAT at work).
    Serve(ServeArgs),
    /// Print a shell completion script: `cnet completions bash > /etc/bash_completion.d/cnet`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff): `cnet man | man -l -`.
    Man,
    /// Write the ebpf backend's compiled TC programs (the ELF object clang built from
    /// src/ebpf/tunnel.bpf.c) to stdout, for `explain --format sh`'s script:
    /// `cnet bpf-object > cnet-tunnel.bpf.o`.
    BpfObject,
    /// (internal) Hold new namespaces until stdin closes.
    #[command(name = "__hold", hide = true)]
    Hold,
    /// (internal) Evaluate one hop of `cnet trace` in this namespace; answer JSON.
    #[command(name = "__trace-hop", hide = true)]
    TraceHop(TraceHopArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TopologyArgs {
    /// The stage: namespace|1, single-node|2, multi-node|3, overlay|4, outside|5, services|6 (or the talk's directory name).
    pub stage: Stage,
    /// Containers per node (stages 2-6): con1..conN; 0 builds only the node's part (bridge,
    /// routes, tunnel) for containers a runtime attaches through cnet's CNI plugin.
    #[arg(long, default_value_t = 2)]
    pub containers: u32,
    /// Nodes (stages 3-6): node i has 10.0.0.(10*i) and pods 172.16.(i-1).0/24.
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    /// Stage 2's pod subnet (default 172.16.0.0/24), to hold more containers.
    #[arg(long)]
    pub pod_cidr: Option<Ipv4Net>,
    /// Stage 4's overlay: cnet's userspace tunnel (udp), the kernel's VXLAN, or cnet's tunnel
    /// passing whole 64 KB super-packets (udp-gso: cnet to cnet, over the lab's cables).
    #[arg(long, value_enum, default_value_t = Backend::Udp)]
    pub backend: Backend,
    /// Stages 3-4 in the lab: the nodes share one L2 network (l2, the talk's), or each sits
    /// on its own subnet behind a router (routed: stage 3 fails there, stage 4 works).
    #[arg(long, value_enum, default_value_t = Fabric::L2)]
    pub fabric: Fabric,
    /// With --fabric routed: install on the router the pod routes each node's BGP speaker
    /// would announce (Calico), so that stage 3 works through it.
    #[arg(long)]
    pub advertise_pod_routes: bool,
    /// Stage 4: a direct route to peers on the node's own subnet, the overlay only to the
    /// others (flannel's DirectRouting).
    #[arg(long)]
    pub direct_routing: bool,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub topo: TopologyArgs,
    /// Build on this machine itself (the talk's VM) instead of in a lab of namespaces.
    #[arg(long)]
    pub host: bool,
    /// With --host, stages 3-6: which node this machine is.
    #[arg(long, default_value_t = 1)]
    pub node: u32,
    /// With --host: the underlay interface (default: the one holding the node's IP, else enp0s8).
    #[arg(long)]
    pub underlay: Option<String>,
    /// With --host, stages 3-6: the other node's address (repeat for more nodes, in order).
    #[arg(long = "peer")]
    pub peers: Vec<Ipv4Addr>,
    /// Show each step and wait for Enter before running it.
    #[arg(long, conflicts_with = "quiet")]
    pub step: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print no steps.
    #[arg(long, short)]
    pub quiet: bool,
    /// (internal) Run by the lab inside one of its nodes.
    #[arg(long, hide = true)]
    pub in_lab: bool,
    /// (internal) Run by the lab inside one of its other members (router, gateway, outside):
    /// build that member's part.
    #[arg(long, hide = true, requires = "in_lab")]
    pub member: Option<String>,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// Only what `up --host` built on this machine.
    #[arg(long)]
    pub host: bool,
    /// Print nothing when all goes well.
    #[arg(long, short)]
    pub quiet: bool,
    /// (internal) Run by the lab inside one of its nodes, which goes as a whole afterwards.
    #[arg(long, hide = true)]
    pub in_lab: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The same as JSON: per node, its links, routes, containers, verified steps, tunnel counters.
    #[arg(long)]
    pub json: bool,
    /// Only what `up --host` built on this machine.
    #[arg(long)]
    pub host: bool,
}

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Every check as JSON (node, source, target, expected and seen TTL, round trip).
    #[arg(long)]
    pub json: bool,
    /// Print every check, not only the failed ones, however many there are.
    #[arg(long)]
    pub all: bool,
    /// Check this machine (host mode). Without a state record, give the stage.
    #[arg(long)]
    pub host: bool,
    /// With --host: the stage to check when cnet did not build it (e.g. built by `explain --format sh`).
    #[arg(requires = "host")]
    pub stage: Option<Stage>,
    /// With --host and a stage: which node this machine is.
    #[arg(long, default_value_t = 1)]
    pub node: u32,
    /// With --host and a stage: its overlay (the checks are the same for each).
    #[arg(long, value_enum, default_value_t = Backend::Udp)]
    pub backend: Backend,
    /// Milliseconds to wait for each reply.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// (internal) Do not trace failed checks (the lab traces them across its nodes).
    #[arg(long, hide = true)]
    pub no_trace: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// node1, 2-single-node, node2/con1, ...
    pub target: String,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ShellArgs {
    /// The lab node to enter: node1, 2, or its hostname (3-multi-node-1).
    pub node: String,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ExplainFormat {
    /// Each step with the talk's words and the command it equals.
    Text,
    /// A runnable iproute2 script that builds the stage.
    Sh,
    /// The script that removes what `sh` built.
    ShDown,
    /// The topology and every node's plan as data.
    Json,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub topo: TopologyArgs,
    /// How to print the plan.
    #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
    pub format: ExplainFormat,
}

#[derive(Args, Debug)]
pub struct TunnelArgs {
    /// The TUN device to attach to (created if absent).
    #[arg(long, default_value = "tun0")]
    pub dev: String,
    /// Local UDP address to bind, e.g. 10.0.0.10:9000 (the port defaults to 9000).
    #[arg(long, value_parser = parse_endpoint)]
    pub local: SocketAddrV4,
    /// A peer and the pod subnet(s) it owns: 10.0.0.20:9000=172.16.1.0/24 (repeat; the
    /// port defaults to 9000).
    #[arg(long = "peer", required = true, value_parser = parse_peer)]
    pub peers: Vec<Peer>,
    /// Write counters (JSON) here about once a second.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Use the plain one-packet-per-syscall path even where offloads are available.
    #[arg(long)]
    pub no_offload: bool,
    /// Datagram framing: `raw` (the bare IP packet, the default) or `pi` (4-byte TUN
    /// packet-info header first, as the talk's socat sends without `iff-no-pi`); both are
    /// accepted on receive. `gso` (cnet to cnet, over an underlay that carries 64 KB
    /// datagrams): TCP super-packets cross whole, not cut into MTU-sized packets.
    #[arg(long, default_value = "raw", value_parser = parse_wire)]
    pub wire: WireFormat,
    /// (internal, for `cnet up`) Stdin is a socket to the starter: wait for its go-ahead
    /// there before touching anything (so the starter has recorded our pid first), say
    /// "ready" there once attached and bound, and attach only to an existing device.
    #[arg(long, hide = true)]
    pub handshake: bool,
}

#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// A lab node (node2, 4-overlay-network-2), or `host` for this machine.
    pub node: String,
    /// The interface: enp0s8, tun0, br0, ...
    pub iface: String,
    /// Stop after this many packets.
    #[arg(short = 'c', long)]
    pub count: Option<u64>,
    /// Also write the packets to this pcap file (Wireshark, tcpdump -r).
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Only packets carrying this protocol, outer or inner: icmp, udp, tcp, arp, vxlan, ...
    #[arg(long, value_name = "PROTOCOL", value_parser = ProtocolParser)]
    pub only: Option<String>,
    /// Show each Ethernet frame's MAC addresses first (outer and inner), as tcpdump -e.
    #[arg(short = 'e', long = "link-addrs")]
    pub link_addrs: bool,
}

/// `--only`: one of the protocol names the capture's decoder puts in a stack. Its own
/// parser rather than a ValueEnum, so that the list stays the decoder's; it offers the names
/// to completions and help, and refuses others in one line that names them all.
#[derive(Clone)]
struct ProtocolParser;

impl clap::builder::TypedValueParser for ProtocolParser {
    type Value = String;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<String, clap::Error> {
        let v = value.to_string_lossy();
        if PROTOCOLS.contains(&v.as_ref()) {
            return Ok(v.into_owned());
        }
        let arg = arg.map_or_else(|| "--only".to_string(), |a| a.to_string());
        let msg = format!("invalid value '{v}' for '{arg}': the capture knows {}\n", PROTOCOLS.join(", "));
        Err(clap::Error::raw(clap::error::ErrorKind::InvalidValue, msg).with_cmd(cmd))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(PROTOCOLS.iter().map(clap::builder::PossibleValue::new)))
    }
}

#[derive(Args, Debug)]
pub struct BreakArgs {
    /// List the faults and what each teaches.
    #[arg(long, conflicts_with_all = ["fault", "node"])]
    pub list: bool,
    /// The fault.
    #[arg(value_enum, required_unless_present = "list")]
    pub fault: Option<crate::model::fault::Fault>,
    /// The lab node to break: node1, 2, or its hostname.
    #[arg(required_unless_present = "list")]
    pub node: Option<String>,
}

#[derive(Args, Debug)]
pub struct BreakHereArgs {
    #[arg(value_enum)]
    pub fault: crate::model::fault::Fault,
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Where the packet starts: node1, node1/con1, 2-single-node/con2 (lab); with --host,
    /// `node` or a container's name.
    pub from: String,
    /// Its destination: an address (172.16.1.2), or a place (node2/con1).
    pub to: String,
    /// Every hop as JSON: namespace, route, next hop, encapsulation, TTL, verdict.
    #[arg(long)]
    pub json: bool,
    /// Trace on this machine (what `up --host` built); the trace ends where the packet
    /// leaves it.
    #[arg(long)]
    pub host: bool,
    /// The IP packet's size in bytes (ping's default is 84).
    #[arg(long, default_value_t = crate::observe::trace::DEFAULT_SIZE, value_parser = clap::value_parser!(u16).range(28..))]
    pub size: u16,
    /// With --host: the packet arrives on this interface (follow a packet that left another
    /// machine; its trace there prints this command).
    #[arg(long = "in", requires = "host")]
    pub arrive_on: Option<String>,
    /// With --in: the packet's source address.
    #[arg(long, requires = "arrive_on")]
    pub src: Option<Ipv4Addr>,
    /// With --in: the TTL it arrives with.
    #[arg(long, requires = "arrive_on")]
    pub ttl: Option<u8>,
}

#[derive(Args, Debug)]
pub struct TraceHopArgs {
    /// The hop's query, as JSON.
    #[arg(long)]
    pub query: String,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The name it answers with (con1).
    #[arg(long)]
    pub name: String,
    /// The address and port to listen on.
    #[arg(long, value_parser = parse_endpoint)]
    pub listen: SocketAddrV4,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DiagramFormat {
    /// Boxes and lines for a terminal.
    Text,
    /// Graphviz (`cnet diagram --format dot | dot -Tsvg > lab.svg`).
    Dot,
}

#[derive(Args, Debug)]
pub struct DiagramArgs {
    /// The stage (default: the one that is up).
    pub stage: Option<Stage>,
    /// How to draw it.
    #[arg(long, value_enum, default_value_t = DiagramFormat::Text)]
    pub format: DiagramFormat,
    /// Containers per node to draw (default: as up, else 2).
    #[arg(long)]
    pub containers: Option<u32>,
    /// Nodes to draw, stages 3-4 (default: as up, else 2).
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Stage 4's overlay to draw (default: as up, else udp).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// The nodes' network to draw, stages 3-4 (default: as up, else l2).
    #[arg(long, value_enum)]
    pub fabric: Option<Fabric>,
}

/// `10.0.0.20:9000` or `10.0.0.20` (the talk's port 9000).
fn parse_endpoint(s: &str) -> Result<SocketAddrV4, String> {
    s.parse()
        .or_else(|_| s.parse().map(|ip| SocketAddrV4::new(ip, TUNNEL_PORT)))
        .map_err(|_| format!("'{s}' is not an IPv4 address with an optional :port, such as 10.0.0.10:9000"))
}

/// `10.0.0.20:9000=172.16.1.0/24[,172.16.9.0/24]`
fn parse_peer(s: &str) -> Result<Peer, String> {
    let (addr, nets) =
        s.split_once('=').ok_or_else(|| format!("'{s}': give ADDR:PORT=SUBNET/LEN, such as 10.0.0.20:9000=172.16.1.0/24"))?;
    let addr = parse_endpoint(addr)?;
    let subnets = nets
        .split(',')
        .map(|n| n.parse::<Ipv4Net>().map(|n| (n.trunc().addr, n.prefix)).map_err(|e| format!("{e:#}")))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Peer { addr, subnets })
}

fn parse_wire(s: &str) -> Result<WireFormat, String> {
    s.parse().map_err(|e: anyhow::Error| format!("{e:#}"))
}
