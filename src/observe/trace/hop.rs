//! One hop of `cnet trace`, evaluated in the network namespace of the calling thread: what
//! its kernel decides for the packet (over netlink) and, when it refuses it, why.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::Handle;

use super::{Arrival, Encap, Hop, HopCheck, HopQuery, NextHop, Out, Outcome};
use crate::apply::netlink::{Netlink, addr_views, dump_addrs, dump_links, errno, link_view};
use crate::model::topology::{Ipv4Net, VXLAN_PORT};
use crate::model::wire::WireFormat;

/// Evaluate one hop in the network namespace of the calling thread (its own runtime: the
/// netlink socket opens in this thread's namespace, and /proc/sys/net shows it).
pub fn evaluate_here(q: &HopQuery) -> Result<Hop> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async {
        let nl = Netlink::here(Path::new(crate::run::node::NETNS_DIR))?;
        let ns = Namespace::read(nl.node_handle()).await?;
        evaluate(&ns, q).await
    })
}

/// One link as the hop needs it.
#[derive(Clone, Debug)]
struct LinkFacts {
    index: u32,
    name: String,
    kind: Option<String>,
    up: bool,
    oper: String,
    master: Option<u32>,
    mtu: Option<u32>,
    mac: Option<String>,
    noarp: bool,
    vxlan: Option<VxlanFacts>,
}

#[derive(Clone, Debug, Default)]
struct VxlanFacts {
    vni: Option<u32>,
    local: Option<Ipv4Addr>,
    port: Option<u16>,
    ttl: Option<u8>,
}

fn mac_text(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

fn link_facts(m: &LinkMessage) -> LinkFacts {
    let v = link_view(m);
    let mut f = LinkFacts {
        index: v.index,
        name: v.name,
        kind: v.kind,
        up: v.up,
        oper: v.oper,
        master: v.master,
        mtu: v.mtu,
        mac: None,
        noarp: m.header.flags.contains(LinkFlags::Noarp),
        vxlan: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(b) if b.len() == 6 => f.mac = Some(mac_text(b)),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(x)) = i {
                        let mut vx = VxlanFacts::default();
                        for o in x {
                            match o {
                                InfoVxlan::Id(id) => vx.vni = Some(*id),
                                InfoVxlan::Local(ip) => vx.local = Some(*ip),
                                InfoVxlan::Port(p) => vx.port = Some(*p),
                                InfoVxlan::Ttl(t) => vx.ttl = Some(*t),
                                _ => {}
                            }
                        }
                        f.vxlan = Some(vx);
                    }
                }
            }
            _ => {}
        }
    }
    f
}

impl LinkFacts {
    /// Why no packet gets through this link, if none does.
    fn down_reason(&self) -> Option<String> {
        if !self.up {
            return Some(format!("{} is down (`ip link set {} up`)", self.name, self.name));
        }
        match self.oper.as_str() {
            "down" | "lowerlayerdown" | "notpresent" => {
                let why = match self.kind.as_deref() {
                    Some("veth") => "its other end is down or gone",
                    Some("tun") => "no program has it open",
                    Some("bridge") => "none of its ports is up",
                    _ => "no carrier",
                };
                Some(format!("{} has no carrier ({why})", self.name))
            }
            _ => None,
        }
    }
}

/// What the hop reads of its namespace once.
struct Namespace {
    h: Handle,
    links: Vec<LinkFacts>,
    addrs: Vec<crate::apply::netlink::AddrView>,
}

impl Namespace {
    async fn read(h: Handle) -> Result<Namespace> {
        let links = dump_links(&h).await?.iter().map(link_facts).collect();
        let addrs = addr_views(&dump_addrs(&h).await?);
        Ok(Namespace { h, links, addrs })
    }
    fn link(&self, name: &str) -> Option<&LinkFacts> {
        self.links.iter().find(|l| l.name == name)
    }
    fn link_by_index(&self, i: u32) -> Option<&LinkFacts> {
        self.links.iter().find(|l| l.index == i)
    }
    fn name_of(&self, i: u32) -> String {
        self.link_by_index(i).map_or_else(|| format!("if{i}"), |l| l.name.clone())
    }
    fn is_local(&self, a: Ipv4Addr) -> bool {
        self.addrs.iter().any(|x| x.addr.addr == a)
    }
}

/// A route the kernel answered, in the parts the hop uses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RouteFacts {
    kind: RouteType,
    dst: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    prefsrc: Option<Ipv4Addr>,
    table: u32,
    protocol: RouteProtocol,
    onlink: bool,
}

fn route_facts(m: &RouteMessage) -> RouteFacts {
    let mut r = RouteFacts {
        kind: m.header.kind,
        dst: None,
        gateway: None,
        oif: None,
        prefsrc: None,
        table: u32::from(m.header.table),
        protocol: m.header.protocol,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                r.dst = Some(Ipv4Net::new(*ip, m.header.destination_prefix_length))
            }
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => r.prefsrc = Some(*ip),
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    r
}

const RT_TABLE_LOCAL: u32 = 255;

/// The kernel's decision as `ip route get` prints it: `DST [from SRC] [via GW] dev DEV [src
/// PREFSRC]`, `local ...` for an address of this namespace.
fn route_text(r: &RouteFacts, dst: Ipv4Addr, from: Option<Ipv4Addr>, dev: &str) -> String {
    let mut s = match r.kind {
        RouteType::Local => format!("local {dst}"),
        RouteType::Unicast => dst.to_string(),
        other => format!("{} {dst}", format!("{other:?}").to_lowercase()),
    };
    if let Some(f) = from {
        s.push_str(&format!(" from {f}"));
    }
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    s.push_str(&format!(" dev {dev}"));
    if from.is_none()
        && let Some(p) = r.prefsrc
    {
        s.push_str(&format!(" src {p}"));
    }
    s
}

/// The route that matched, as `ip route` lists it, with its kind in the talk's words
/// ("Routing rules 101": directly connected, static, dynamic, default).
fn matched_text(r: &RouteFacts, dev: &str) -> String {
    let dst = match r.dst {
        Some(d) if d.prefix == 0 => "default".to_string(),
        Some(d) if d.prefix == 32 && r.kind == RouteType::Local => format!("local {}", d.addr),
        Some(d) if d.prefix == 32 => d.addr.to_string(),
        Some(d) => d.to_string(),
        None => "default".to_string(),
    };
    let mut s = dst;
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    s.push_str(&format!(" dev {dev}"));
    if r.onlink {
        s.push_str(" onlink");
    }
    let kind = if r.table == RT_TABLE_LOCAL || r.kind == RouteType::Local {
        "local: an address of this namespace"
    } else if r.dst.is_none_or(|d| d.prefix == 0) {
        "the default route"
    } else if r.gateway.is_none() && r.protocol == RouteProtocol::Kernel {
        "directly connected"
    } else if r.gateway.is_none() {
        // The slide's `10.0.0.0/24 dev eth1`: no gateway, so directly connected, whoever
        // added it (stage 1's route to the container is added by hand).
        "directly connected, added by hand"
    } else if matches!(r.protocol, RouteProtocol::Boot | RouteProtocol::Static) {
        "static: added by hand"
    } else {
        "dynamic: added by a routing daemon"
    };
    format!("{s} ({kind})")
}

/// RTM_GETROUTE for one destination (`ip route get`). With `iif` (and `src`) the kernel
/// routes it as a packet that came in there, applying its input checks; `fib_match` asks
/// for the route that matched instead of the result. Err: the kernel's errno.
async fn route_get(
    h: &Handle,
    dst: Ipv4Addr,
    src: Option<Ipv4Addr>,
    iif: Option<u32>,
    fib_match: bool,
) -> std::result::Result<RouteFacts, i32> {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = 32;
    m.header.table = RouteHeader::RT_TABLE_UNSPEC;
    m.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
    if let Some(s) = src {
        m.header.source_prefix_length = 32;
        m.attributes.push(RouteAttribute::Source(RouteAddress::Inet(s)));
    }
    if let Some(i) = iif {
        m.attributes.push(RouteAttribute::Iif(i));
    }
    if fib_match {
        m.header.flags |= RouteFlags::FibMatch;
    }
    match h.route().get(m).execute().try_next().await {
        Ok(Some(r)) => Ok(route_facts(&r)),
        Ok(None) => Err(libc::ENOENT),
        Err(e) => Err(errno(&e).unwrap_or(libc::EIO)),
    }
}

fn errno_text(code: i32) -> String {
    std::io::Error::from_raw_os_error(code).to_string()
}

/// The neighbour entry for `addr` on link `index` (`ip neigh show ADDR dev DEV`).
async fn neighbour(h: &Handle, index: u32, addr: Ipv4Addr) -> Result<Option<(Option<String>, NeighbourState)>> {
    let all: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(crate::apply::netlink::kernel_error)?;
    Ok(all.iter().find_map(|n| {
        let dst = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        (n.header.ifindex == index && dst == Some(addr)).then(|| {
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => Some(mac_text(b)),
                _ => None,
            });
            (mac, n.header.state)
        })
    }))
}

fn state_text(s: NeighbourState) -> String {
    match s {
        NeighbourState::Other(x) => format!("state {x}"),
        s => format!("{s:?}").to_uppercase(),
    }
}

/// The next hop on link `dev` as the neighbour table has it: its MAC if the entry is usable.
async fn next_hop(ns: &Namespace, dev: &LinkFacts, addr: Ipv4Addr) -> Result<NextHop> {
    if dev.noarp || dev.kind.as_deref() == Some("tun") {
        return Ok(NextHop { addr, dev: dev.name.clone(), mac: None, state: "noarp".into() });
    }
    let entry = neighbour(&ns.h, dev.index, addr).await?;
    Ok(match entry {
        Some((mac, state)) => {
            let usable = !matches!(state, NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None);
            NextHop { addr, dev: dev.name.clone(), mac: if usable { mac } else { None }, state: state_text(state) }
        }
        None => NextHop { addr, dev: dev.name.clone(), mac: None, state: "none".into() },
    })
}

/// The bridge forwarding table (`bridge fdb`): entries as (port index, MAC, remote IP).
async fn fdb(h: &Handle) -> Result<Vec<(u32, String, Option<Ipv4Addr>)>> {
    let all: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(crate::apply::netlink::kernel_error)?;
    Ok(all
        .iter()
        .filter_map(|n| {
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => Some(mac_text(b)),
                _ => None,
            })?;
            // Parsed by the message's family: for AF_BRIDGE the crate leaves the remote's
            // IPv4 address as raw bytes.
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                }
                _ => None,
            });
            Some((n.header.ifindex, mac, dst))
        })
        .collect())
}

/// The port of `bridge` its forwarding table sends `mac` to.
async fn bridge_port(ns: &Namespace, bridge: u32, mac: &str) -> Result<Option<String>> {
    let entries = fdb(&ns.h).await?;
    Ok(entries
        .iter()
        .filter(|(port, m, _)| m == mac && ns.link_by_index(*port).is_some_and(|l| l.master == Some(bridge)))
        .map(|(port, _, _)| ns.name_of(*port))
        .next())
}

fn sysctl_num(key: &str) -> Option<u8> {
    crate::apply::sysctl::read(key).ok()?.parse().ok()
}

/// Forwarding for what comes in by `iif`: the kernel reads conf.<iif>.forwarding, which
/// net.ipv4.ip_forward sets on every interface.
fn forwarding_check(ip_forward: Option<u8>, dev_forwarding: Option<u8>, iif: &str) -> HopCheck {
    let name = "forwarding".to_string();
    match (ip_forward, dev_forwarding) {
        (_, Some(1..)) => HopCheck { name, ok: true, detail: format!("on (net.ipv4.conf.{iif}.forwarding = 1)") },
        (Some(0), _) => HopCheck { name, ok: false, detail: "net.ipv4.ip_forward is 0 (the node does not route)".into() },
        (_, Some(0)) => HopCheck {
            name,
            ok: false,
            detail: format!("net.ipv4.conf.{iif}.forwarding is 0 (what comes in by {iif} is not routed, though ip_forward is 1)"),
        },
        _ => HopCheck { name, ok: true, detail: "unknown (cannot read the sysctls)".into() },
    }
}

/// Reverse-path filtering, as the kernel does it: mode max(conf.all.rp_filter,
/// conf.<iif>.rp_filter); strict (1) wants the route back to the source to leave by the
/// interface the packet came in on, loose (2) any route back. `back`: the interface the
/// route back leaves by, or None if there is no route back.
fn rp_filter_check(all: u8, dev: u8, iif: &str, src: Ipv4Addr, back: Option<&str>) -> HopCheck {
    let name = "rp_filter".to_string();
    let mode = all.max(dev);
    let why = format!("max(conf.all.rp_filter {all}, conf.{iif}.rp_filter {dev}) = {mode}");
    match (mode, back) {
        (0, _) => HopCheck { name, ok: true, detail: format!("off ({why})") },
        (1, Some(b)) if b == iif => {
            HopCheck { name, ok: true, detail: format!("strict, passes: the route back to {src} leaves by {iif} ({why})") }
        }
        (1, Some(b)) => HopCheck {
            name,
            ok: false,
            detail: format!(
                "rp_filter: strict reverse-path check fails: the route back to {src} leaves by {b}, not {iif} where it came in ({why})"
            ),
        },
        (_, None) => HopCheck {
            name,
            ok: false,
            detail: format!("rp_filter: reverse-path check fails: there is no route back to {src} ({why})"),
        },
        (_, Some(b)) => {
            HopCheck { name, ok: true, detail: format!("loose, passes: there is a route back to {src} (by {b}) ({why})") }
        }
    }
}

/// The rp_filter check for a packet from `src` arriving on `iif`, read from this namespace.
async fn rp_filter_here(ns: &Namespace, iif: &str, src: Ipv4Addr) -> HopCheck {
    let all = sysctl_num("net.ipv4.conf.all.rp_filter").unwrap_or(0);
    let dev = sysctl_num(&format!("net.ipv4.conf.{iif}.rp_filter")).unwrap_or(0);
    let back = match route_get(&ns.h, src, None, None, false).await {
        Ok(r) if r.kind == RouteType::Unicast || r.kind == RouteType::Local => {
            Some(r.oif.map(|i| ns.name_of(i)).unwrap_or_default())
        }
        _ => None,
    };
    rp_filter_check(all, dev, iif, src, back.as_deref())
}

/// A `cnet tunnel` process as its command line says it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TunnelConf {
    /// 0 for the eBPF datapath (no process).
    pid: u32,
    dev: String,
    local: SocketAddrV4,
    peers: Vec<(SocketAddrV4, Vec<Ipv4Net>)>,
    wire: WireFormat,
}

impl TunnelConf {
    /// Who carries the packet, as the hop says it.
    fn who(&self) -> String {
        if self.pid == 0 { "cnet's eBPF programs".into() } else { format!("the tunnel (pid {})", self.pid) }
    }
}

/// `host[:port]`, the port defaulting to the talk's 9000 (as `cnet tunnel` reads it).
fn endpoint(s: &str) -> Option<SocketAddrV4> {
    s.parse().ok().or_else(|| s.parse::<Ipv4Addr>().ok().map(|ip| SocketAddrV4::new(ip, crate::model::topology::TUNNEL_PORT)))
}

/// The settings of `cnet tunnel ARGS` from its arguments (after the program name).
fn tunnel_conf(pid: u32, args: &[String]) -> Option<TunnelConf> {
    if !args.iter().any(|a| a == "tunnel") {
        return None;
    }
    let mut c = TunnelConf { pid, dev: "tun0".into(), local: endpoint("0.0.0.0")?, peers: Vec::new(), wire: WireFormat::Raw };
    let mut local = None;
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (args[i].as_str(), None),
        };
        let takes = matches!(flag, "--dev" | "--local" | "--peer" | "--wire" | "--stats");
        let value = if !takes {
            None
        } else if inline.is_some() {
            inline
        } else {
            i += 1;
            args.get(i).cloned()
        };
        match (flag, value) {
            ("--dev", Some(v)) => c.dev = v,
            ("--local", Some(v)) => local = endpoint(&v),
            ("--peer", Some(v)) => {
                let (addr, nets) = v.split_once('=')?;
                let nets = nets.split(',').filter_map(|n| n.parse::<Ipv4Net>().ok()).map(|n| n.trunc()).collect();
                c.peers.push((endpoint(addr)?, nets));
            }
            ("--wire", Some(v)) => c.wire = v.parse().ok()?,
            _ => {}
        }
        i += 1;
    }
    c.local = local?;
    Some(c)
}

/// The `cnet tunnel` processes running in the calling thread's network namespace.
fn tunnels_here() -> Vec<TunnelConf> {
    let here = crate::sys::ns::ns_id(Path::new("/proc/thread-self/ns/net"));
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| here.is_some() && crate::sys::ns::ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == here)
        .filter(|pid| crate::apply::process::is_cnet_process(*pid, &["tunnel"]))
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = raw.split(|b| *b == 0).skip(1).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            tunnel_conf(pid, &args)
        })
        .chain(ebpf_here())
        .collect()
}

/// The ebpf backend's datapath on this node, as its plan loaded it, while its programs are
/// loaded (their counters can be read).
fn ebpf_here() -> Option<TunnelConf> {
    let rec = crate::apply::state::NodeJournal::read().ok()??;
    let (local, tun, peers) = rec.header.steps.iter().find_map(|s| match s {
        crate::model::plan::Step::LoadEbpf { local, tun, peers, .. } => Some((*local, tun.clone(), peers.clone())),
        _ => None,
    })?;
    crate::apply::ebpf::counters()?;
    Some(TunnelConf {
        pid: 0,
        dev: tun,
        local,
        peers: peers.into_iter().map(|(a, n)| (a, vec![n])).collect(),
        wire: WireFormat::Raw,
    })
}

/// The peer a tunnel sends `dst` to: the longest prefix that holds it (as the tunnel's
/// own table decides).
fn tunnel_peer(conf: &TunnelConf, dst: Ipv4Addr) -> Option<(SocketAddrV4, Ipv4Net)> {
    let d = Ipv4Net::new(dst, 32);
    conf.peers
        .iter()
        .flat_map(|(a, nets)| nets.iter().map(move |n| (*a, *n)))
        .filter(|(_, n)| n.contains_net(&d))
        .max_by_key(|(_, n)| n.prefix)
}

/// Whether the tunnel takes inner packets from `src` from `peer`: the peer's subnets, or
/// the peer node's own address (the tunnel's anti-spoofing rule).
fn peer_owns(conf: &TunnelConf, peer: SocketAddrV4, src: Ipv4Addr) -> bool {
    conf.peers
        .iter()
        .any(|(a, nets)| *a == peer && (*a.ip() == src || nets.iter().any(|n| n.contains_net(&Ipv4Net::new(src, 32)))))
}

fn default_ttl() -> u8 {
    sysctl_num("net.ipv4.ip_default_ttl").unwrap_or(64)
}

/// The outer packet's route from this namespace to `remote`: (route text, out link, next hop).
async fn outer_route(ns: &Namespace, remote: Ipv4Addr) -> Result<(String, LinkFacts, NextHop), String> {
    let r = route_get(&ns.h, remote, None, None, false)
        .await
        .map_err(|e| format!("the outer packet to {remote} has no route here ({})", errno_text(e)))?;
    let dev =
        r.oif.and_then(|i| ns.link_by_index(i)).cloned().ok_or_else(|| format!("the route to {remote} leaves by no link"))?;
    let nh = next_hop(ns, &dev, r.gateway.unwrap_or(remote)).await.map_err(|e| format!("{e:#}"))?;
    Ok((route_text(&r, remote, None, &dev.name), dev, nh))
}

/// Take the packet out of cnet's tunnel here: a tunnel must listen on `to`, take datagrams
/// from `from`, and accept the inner source from that peer. Returns the device it writes
/// the packet into, and what to say.
async fn decap_tunnel(
    ns: &Namespace,
    hop: &mut Hop,
    from: SocketAddrV4,
    to: SocketAddrV4,
    underlay: &str,
    src: Option<Ipv4Addr>,
) -> std::result::Result<String, String> {
    outer_delivered(ns, hop, *to.ip(), *from.ip(), underlay).await?;
    let tunnels = tunnels_here();
    let Some(t) =
        tunnels.iter().find(|t| t.local.port() == to.port() && (t.local.ip() == to.ip() || t.local.ip().is_unspecified()))
    else {
        return Err(format!(
            "no tunnel listens on {to} here: the datagram is refused (port unreachable); `cnet status` shows whether the tunnel runs"
        ));
    };
    if !t.peers.iter().any(|(a, _)| *a == from) {
        let peers: Vec<String> = t.peers.iter().map(|(a, _)| a.to_string()).collect();
        return Err(format!(
            "{} take datagrams only from the peers ({}), not from {from}: counted as unknown_peer",
            t.who(),
            peers.join(", ")
        ));
    }
    if let Some(s) = src
        && !peer_owns(t, from, s)
    {
        return Err(format!(
            "{} refuse an inner packet from {s} sent by {from}: that is not the peer's subnet (spoofed_source)",
            t.who()
        ));
    }
    hop.decap = Some(format!("decapsulated by {} on {}, from its peer {from}", t.who(), t.local));
    Ok(t.dev.clone())
}

/// Take the packet out of VXLAN here: a VXLAN device with that VNI and port.
async fn decap_vxlan(
    ns: &Namespace,
    hop: &mut Hop,
    (from, to, port, vni): (Ipv4Addr, Ipv4Addr, u16, Option<u32>),
    underlay: &str,
) -> std::result::Result<String, String> {
    outer_delivered(ns, hop, to, from, underlay).await?;
    let dev = ns
        .links
        .iter()
        .find(|l| l.vxlan.as_ref().is_some_and(|v| v.port.unwrap_or(VXLAN_PORT) == port && (vni.is_none() || v.vni == vni)));
    let Some(dev) = dev else {
        let vni = vni.map(|v| format!(" with VNI {v}")).unwrap_or_default();
        return Err(format!("no VXLAN device{vni} on port {port} here: the datagram is refused"));
    };
    hop.decap = Some(format!(
        "decapsulated by {} (VXLAN, VNI {}) from {from} on UDP port {port}",
        dev.name,
        dev.vxlan.as_ref().and_then(|v| v.vni).map_or("?".into(), |v| v.to_string())
    ));
    Ok(dev.name.clone())
}

/// The outer packet must be delivered here (to `to`, from `from`, in by `underlay`): the
/// kernel's input route for it is local, or the reason it is not.
async fn outer_delivered(
    ns: &Namespace,
    hop: &mut Hop,
    to: Ipv4Addr,
    from: Ipv4Addr,
    underlay: &str,
) -> std::result::Result<(), String> {
    let Some(u) = ns.link(underlay) else { return Err(format!("there is no {underlay} here for the outer packet to arrive on")) };
    if let Some(r) = u.down_reason() {
        return Err(format!("the outer packet cannot arrive: {r}"));
    }
    match route_get(&ns.h, to, Some(from), Some(u.index), false).await {
        Ok(r) if r.kind == RouteType::Local => Ok(()),
        Ok(r) => Err(format!(
            "the outer packet to {to} is not for this node (the kernel routes it on: {})",
            route_text(&r, to, Some(from), &r.oif.map(|i| ns.name_of(i)).unwrap_or_default())
        )),
        Err(e) => {
            let rp = rp_filter_here(ns, underlay, from).await;
            if !rp.ok {
                hop.checks.push(rp.clone());
                return Err(format!("the outer packet: {}", rp.detail));
            }
            Err(format!("the kernel refuses the outer packet from {from} on {underlay}: {}", errno_text(e)))
        }
    }
}

/// Evaluate one hop.
async fn evaluate(ns: &Namespace, q: &HopQuery) -> Result<Hop> {
    let mut hop = Hop::new();
    let ttl = q.ttl.unwrap_or_else(default_ttl);
    let mut iif: Option<LinkFacts> = None;
    if let Some(arrival) = &q.arrival {
        hop.ttl_in = Some(ttl);
        let dev = match arrival {
            Arrival::Link { dev, .. } => dev.clone(),
            Arrival::Tunnel { from, to, underlay } => match decap_tunnel(ns, &mut hop, *from, *to, underlay, q.src).await {
                Ok(d) => d,
                Err(reason) => return Ok(hop.dropped(reason)),
            },
            Arrival::Vxlan { from, to, port, vni, underlay } => {
                match decap_vxlan(ns, &mut hop, (*from, *to, *port, *vni), underlay).await {
                    Ok(d) => d,
                    Err(reason) => return Ok(hop.dropped(reason)),
                }
            }
        };
        let Some(link) = ns.link(&dev).cloned() else {
            return Ok(hop.dropped(format!("there is no interface {dev} here for it to arrive on")));
        };
        // The eBPF datapath redirects into tun0's ingress itself: no reader, no carrier needed.
        let by_ebpf = link.kind.as_deref() == Some("tun") && hop.decap.as_deref().is_some_and(|d| d.contains("eBPF"));
        if let Some(r) = link.down_reason().filter(|_| !by_ebpf) {
            hop.arrived_on = Some(dev);
            return Ok(hop.dropped(format!("it cannot arrive: {r}")));
        }
        // A bridge port: the bridge takes the frame. For the node itself (the address the
        // sender resolved is the node's own) the IP layer sees it arrive on the bridge;
        // for anyone else the bridge passes it on to the port that leads there.
        let bridge = link.master.and_then(|m| ns.link_by_index(m)).filter(|b| b.kind.as_deref() == Some("bridge")).cloned();
        if let Some(br) = bridge {
            hop.port = Some(link.name.clone());
            hop.arrived_on = Some(br.name.clone());
            hop.src = q.src;
            if let Some(r) = br.down_reason() {
                return Ok(hop.dropped(format!("the bridge {r}")));
            }
            let (next_hop, mac) = match arrival {
                Arrival::Link { next_hop, mac, .. } => (*next_hop, mac.clone()),
                _ => (None, None),
            };
            if next_hop.is_some_and(|a| !ns.is_local(a)) {
                return switched(ns, hop, &br, next_hop, mac, ttl, q.size).await;
            }
            iif = Some(br);
        } else {
            hop.arrived_on = Some(link.name.clone());
            iif = Some(link);
        }
    }
    let Some(iif) = iif else { return source_hop(ns, hop, q, ttl).await };
    hop.src = q.src;
    let src = q.src.unwrap_or(Ipv4Addr::UNSPECIFIED);
    // The kernel decides, as for a packet that came in by `iif`.
    let kernel = route_get(&ns.h, q.dst, Some(src), Some(iif.index), false).await;
    let local = ns.is_local(q.dst) || matches!(&kernel, Ok(r) if r.kind == RouteType::Local);
    if let Ok(m) = route_get(&ns.h, q.dst, Some(src), Some(iif.index), true).await {
        hop.matched = Some(matched_text(&m, &m.oif.map(|i| ns.name_of(i)).unwrap_or_else(|| "lo".into())));
    }
    // The checks in the kernel's order: a route, then forwarding, then the reverse path.
    if !local {
        hop.checks.push(forwarding_check(
            sysctl_num("net.ipv4.ip_forward"),
            sysctl_num(&format!("net.ipv4.conf.{}.forwarding", iif.name)),
            &iif.name,
        ));
    }
    hop.checks.push(rp_filter_here(ns, &iif.name, src).await);
    let r = match kernel {
        Ok(r) => r,
        Err(code) => {
            let reason = if code == libc::ENETUNREACH && !local {
                format!("no route to {} here: no route in the table matches it", q.dst)
            } else if let Some(c) = hop.checks.iter().find(|c| !c.ok) {
                c.detail.clone()
            } else {
                format!("the kernel refuses to route it ({})", errno_text(code))
            };
            return Ok(hop.dropped(reason));
        }
    };
    let dev_name = r.oif.map(|i| ns.name_of(i)).unwrap_or_else(|| "lo".into());
    hop.route = Some(route_text(&r, q.dst, Some(src), &dev_name));
    if r.kind == RouteType::Local {
        hop.outcome = Outcome::Delivered;
        return Ok(hop);
    }
    if r.kind != RouteType::Unicast {
        return Ok(hop.dropped(format!("the route that matches is of type {:?}: the kernel drops it", r.kind)));
    }
    if ttl <= 1 {
        return Ok(hop.dropped(format!("its TTL runs out here (it arrives with {ttl}): the node answers 'time exceeded'")));
    }
    hop.outcome = Outcome::Forwarded;
    leave(ns, hop, q, &r, ttl - 1, true).await
}

/// The source: a program here sends it; the route chooses the source address.
async fn source_hop(ns: &Namespace, mut hop: Hop, q: &HopQuery, ttl: u8) -> Result<Hop> {
    let r = match route_get(&ns.h, q.dst, q.src, None, false).await {
        Ok(r) => r,
        Err(code) if code == libc::ENETUNREACH => {
            return Ok(hop.dropped(format!(
                "no route to {} here: no route in the table matches it (no directly connected, static or default route)",
                q.dst
            )));
        }
        Err(code) => return Ok(hop.dropped(format!("the kernel has no way to send it ({})", errno_text(code)))),
    };
    if let Ok(m) = route_get(&ns.h, q.dst, q.src, None, true).await {
        hop.matched = Some(matched_text(&m, &m.oif.map(|i| ns.name_of(i)).unwrap_or_else(|| "lo".into())));
    }
    let dev_name = r.oif.map(|i| ns.name_of(i)).unwrap_or_else(|| "lo".into());
    hop.route = Some(route_text(&r, q.dst, None, &dev_name));
    hop.src = q.src.or(r.prefsrc).or_else(|| {
        let oif = r.oif?;
        ns.addrs.iter().find(|a| a.dev == oif).map(|a| a.addr.addr)
    });
    if r.kind == RouteType::Local {
        hop.outcome = Outcome::Delivered;
        hop.out = Some(Out { dev: dev_name, kind: None, port: None, mtu: None, ttl, size: q.size });
        return Ok(hop);
    }
    if r.kind != RouteType::Unicast {
        return Ok(hop.dropped(format!("the route that matches is of type {:?}: the kernel refuses to send it", r.kind)));
    }
    hop.outcome = Outcome::Sent;
    leave(ns, hop, q, &r, ttl, false).await
}

/// Passed on by a bridge, port to port: nothing routed, the TTL as it was.
async fn switched(
    ns: &Namespace,
    mut hop: Hop,
    br: &LinkFacts,
    next_hop: Option<Ipv4Addr>,
    mac: Option<String>,
    ttl: u8,
    size: u16,
) -> Result<Hop> {
    hop.outcome = Outcome::Switched;
    let port = match &mac {
        Some(m) => bridge_port(ns, br.index, m).await?,
        None => None,
    };
    if mac.is_none() {
        hop.notes.push(format!(
            "the sender has no MAC for {} yet: its ARP request floods every port of {}, and the owner answers",
            next_hop.map(|a| a.to_string()).unwrap_or_default(),
            br.name
        ));
    }
    if let Some(p) = &port
        && let Some(r) = ns.link(p).and_then(LinkFacts::down_reason)
    {
        return Ok(hop.dropped(format!("{} would pass it to {p}, but {r}", br.name)));
    }
    hop.next_hop = next_hop.map(|a| NextHop { addr: a, dev: br.name.clone(), mac: mac.clone(), state: "switched".into() });
    hop.out = Some(Out {
        dev: port.clone().unwrap_or_else(|| br.name.clone()),
        // Without a forwarding entry, the port is whichever answers the ARP: the walk
        // finds it by the address.
        kind: Some(if port.is_some() { "veth" } else { "bridge" }.into()),
        port,
        mtu: br.mtu,
        ttl,
        size,
    });
    Ok(hop)
}

/// The way out: the link, the next hop and its MAC, the MTU, and the overlay if any.
async fn leave(ns: &Namespace, mut hop: Hop, q: &HopQuery, r: &RouteFacts, ttl: u8, forwarded: bool) -> Result<Hop> {
    let Some(dev) = r.oif.and_then(|i| ns.link_by_index(i)).cloned() else {
        return Ok(hop.dropped("the route names no interface to leave by"));
    };
    let nh_addr = r.gateway.unwrap_or(q.dst);
    let mut size = q.size;
    // MTU: a forwarded packet too big for the link is dropped (DF set, as ping and TCP
    // send it); the source cuts its own packet into fragments.
    if let Some(mtu) = dev.mtu
        && u32::from(size) > mtu
    {
        if forwarded {
            return Ok(hop.dropped(format!(
                "{size} bytes do not fit {}'s MTU {mtu} (DF set, as TCP and ping send it): the node answers 'fragmentation needed'",
                dev.name
            )));
        }
        hop.notes.push(format!("{size} bytes do not fit {}'s MTU {mtu}: the source sends it in fragments", dev.name));
        size = mtu as u16;
    }
    // A gateway must be on a link of ours, unless the route says `onlink`.
    if let Some(gw) = r.gateway
        && !r.onlink
        && !ns.addrs.iter().any(|a| a.dev == dev.index && a.addr.trunc().contains_net(&Ipv4Net::new(gw, 32)))
    {
        return Ok(hop.dropped(format!(
            "the next hop {gw} is not on-link: no address of {} covers it, and the route is not `onlink`",
            dev.name
        )));
    }
    let tunnel = dev.kind.as_deref() == Some("tun");
    if !tunnel && let Some(reason) = dev.down_reason() {
        return Ok(hop.dropped(format!("it would leave by {}, but {reason}", dev.name)));
    }
    let nh = next_hop(ns, &dev, nh_addr).await?;
    if nh.state == "FAILED" {
        hop.notes.push(format!("the last ARP for {nh_addr} on {} went unanswered (FAILED): the kernel asks again", dev.name));
    }
    let port = match (&dev.kind, &nh.mac) {
        (Some(k), Some(mac)) if k == "bridge" => bridge_port(ns, dev.index, mac).await?,
        _ => None,
    };
    hop.next_hop = Some(nh.clone());
    let port_down = port.as_deref().and_then(|p| ns.link(p)).and_then(LinkFacts::down_reason);
    hop.out = Some(Out { dev: dev.name.clone(), kind: dev.kind.clone(), port, mtu: dev.mtu, ttl, size });
    if let Some(reason) = port_down {
        return Ok(hop.dropped(format!("{} would pass it to its port, but {reason}", dev.name)));
    }
    if tunnel {
        return encap_tunnel(ns, hop, &dev, q.dst, size).await;
    }
    if dev.vxlan.is_some() {
        return encap_vxlan(ns, hop, &dev, &nh, size).await;
    }
    Ok(hop)
}

/// Into cnet's tunnel: the process reading tun0 sends it, whole, in one UDP datagram to the
/// peer whose subnet holds the destination.
async fn encap_tunnel(ns: &Namespace, hop: Hop, dev: &LinkFacts, dst: Ipv4Addr, size: u16) -> Result<Hop> {
    let tunnels = tunnels_here();
    let Some(t) = tunnels.iter().find(|t| t.dev == dev.name) else {
        return Ok(hop.dropped(format!(
            "nothing runs the tunnel on {}: what is routed into it is lost (`cnet status` shows the tunnel; `cnet down` and `cnet up` start it again)",
            dev.name
        )));
    };
    let Some((peer, subnet)) = tunnel_peer(t, dst) else {
        return Ok(hop.dropped(format!("{} have no peer whose subnet holds {dst}: counted as no_route", t.who())));
    };
    let outer_size = size.saturating_add(t.wire.overhead() as u16);
    let mut hop = hop;
    let outer = outer_route(ns, *peer.ip()).await;
    let (outer_route, outer_dev, outer_nh) = match &outer {
        Ok((text, l, nh)) => (Some(text.clone()), Some(l.clone()), Some(nh.clone())),
        Err(_) => (None, None, None),
    };
    hop.encap = Some(Encap {
        kind: if t.pid == 0 { "ebpf".into() } else { "udp".into() },
        local: t.local.to_string(),
        remote: peer.to_string(),
        remote_ip: *peer.ip(),
        port: peer.port(),
        pid: (t.pid != 0).then_some(t.pid),
        wire: Some(t.wire.name().into()),
        subnet: Some(subnet.to_string()),
        vni: None,
        flooded: Vec::new(),
        outer_ttl: default_ttl(),
        outer_size,
        outer_route,
        outer_dev: outer_dev.as_ref().map(|l| l.name.clone()),
        outer_next_hop: outer_nh,
    });
    if let Err(reason) = outer {
        return Ok(hop.dropped(reason));
    }
    let outer_dev = outer_dev.expect("a route");
    if let Some(r) = outer_dev.down_reason() {
        return Ok(hop.dropped(format!("the tunnel's datagram would leave by {}, but {r}", outer_dev.name)));
    }
    if let Some(mtu) = outer_dev.mtu
        && u32::from(outer_size) > mtu
    {
        return Ok(hop.dropped(format!(
            "the tunnel's datagram of {outer_size} bytes does not fit {}'s MTU {mtu} (the tunnel sets DF): it counts a send_error",
            outer_dev.name
        )));
    }
    Ok(hop)
}

/// Into the kernel's VXLAN: the frame for the next hop's MAC goes in UDP to the remote its
/// forwarding table names, or to every default remote when none names that MAC.
async fn encap_vxlan(ns: &Namespace, hop: Hop, dev: &LinkFacts, nh: &NextHop, size: u16) -> Result<Hop> {
    let vx = dev.vxlan.clone().unwrap_or_default();
    let entries: Vec<(String, Option<Ipv4Addr>)> =
        fdb(&ns.h).await?.into_iter().filter(|(port, _, _)| *port == dev.index).map(|(_, m, d)| (m, d)).collect();
    let named: Vec<Ipv4Addr> =
        nh.mac.as_ref().map(|mac| entries.iter().filter(|(m, _)| m == mac).filter_map(|(_, d)| *d).collect()).unwrap_or_default();
    let (remotes, flooded) = if named.is_empty() {
        let all: Vec<Ipv4Addr> = entries.iter().filter(|(m, _)| m == "00:00:00:00:00:00").filter_map(|(_, d)| *d).collect();
        (all.clone(), all)
    } else {
        (named, Vec::new())
    };
    let port = vx.port.unwrap_or(VXLAN_PORT);
    let local = vx.local.map(|l| l.to_string()).unwrap_or_else(|| "?".into());
    let Some(first) = remotes.first().copied() else {
        return Ok(hop.dropped(format!(
            "{} has no forwarding entry for the next hop's MAC and no default one: the frame goes nowhere",
            dev.name
        )));
    };
    let mut hop = hop;
    let outer = outer_route(ns, first).await;
    let (outer_route, outer_dev, outer_nh) = match &outer {
        Ok((text, l, nh)) => (Some(text.clone()), Some(l.clone()), Some(nh.clone())),
        Err(_) => (None, None, None),
    };
    // 14 (inner Ethernet) + 8 (VXLAN) + 8 (UDP) + 20 (outer IPv4).
    let outer_size = size.saturating_add(50);
    hop.encap = Some(Encap {
        kind: "vxlan".into(),
        local,
        remote: remotes.iter().map(|r| format!("{r}:{port}")).collect::<Vec<_>>().join(", "),
        remote_ip: first,
        port,
        pid: None,
        wire: None,
        subnet: None,
        vni: vx.vni,
        flooded,
        outer_ttl: vx.ttl.filter(|t| *t != 0).unwrap_or_else(default_ttl),
        outer_size,
        outer_route,
        outer_dev: outer_dev.as_ref().map(|l| l.name.clone()),
        outer_next_hop: outer_nh,
    });
    if let Err(reason) = outer {
        return Ok(hop.dropped(reason));
    }
    if let Some(r) = outer_dev.and_then(|l| l.down_reason()) {
        return Ok(hop.dropped(format!("the VXLAN datagram would leave, but {r}")));
    }
    Ok(hop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_names_the_sysctl_that_is_off() {
        assert!(forwarding_check(Some(1), Some(1), "br0").ok);
        let c = forwarding_check(Some(0), Some(0), "enp0s8");
        assert!(!c.ok && c.detail == "net.ipv4.ip_forward is 0 (the node does not route)", "{}", c.detail);
        let c = forwarding_check(Some(1), Some(0), "tun0");
        assert!(!c.ok && c.detail.contains("net.ipv4.conf.tun0.forwarding is 0"), "{}", c.detail);
    }

    #[test]
    fn rp_filter_takes_the_larger_value() {
        let src = Ipv4Addr::new(172, 16, 0, 2);
        assert!(rp_filter_check(0, 0, "enp0s8", src, Some("tun0")).ok);
        let c = rp_filter_check(1, 0, "enp0s8", src, Some("tun0"));
        assert!(!c.ok, "{}", c.detail);
        assert!(c.detail.contains("leaves by tun0, not enp0s8") && c.detail.contains("= 1"), "{}", c.detail);
        assert!(!rp_filter_check(0, 1, "enp0s8", src, Some("tun0")).ok);
        assert!(rp_filter_check(1, 0, "enp0s8", src, Some("enp0s8")).ok);
        // Loose: any route back will do; none will not.
        assert!(rp_filter_check(2, 1, "enp0s8", src, Some("tun0")).ok);
        assert!(!rp_filter_check(2, 0, "enp0s8", src, None).ok);
    }

    #[test]
    fn tunnel_settings_from_its_command_line() {
        let args: Vec<String> = "--color never tunnel --dev tun0 --local 10.0.0.10:9000 --peer 10.0.0.20:9000=172.16.1.0/24 --peer=10.0.0.30=172.16.2.0/24,172.16.9.0/24 --stats /run/cnet/tunnel.json --handshake --wire gso"
            .split(' ')
            .map(str::to_string)
            .collect();
        let t = tunnel_conf(7, &args).unwrap();
        assert_eq!(t.dev, "tun0");
        assert_eq!(t.local, "10.0.0.10:9000".parse().unwrap());
        assert_eq!(t.wire, WireFormat::Gso);
        assert_eq!(t.peers.len(), 2);
        assert_eq!(t.peers[1].0, "10.0.0.30:9000".parse().unwrap());
        assert_eq!(tunnel_peer(&t, "172.16.9.4".parse().unwrap()).unwrap().0, "10.0.0.30:9000".parse().unwrap());
        assert_eq!(tunnel_peer(&t, "172.16.1.2".parse().unwrap()).unwrap().1.to_string(), "172.16.1.0/24");
        assert!(tunnel_peer(&t, "172.16.5.2".parse().unwrap()).is_none());
        let from: SocketAddrV4 = "10.0.0.20:9000".parse().unwrap();
        assert!(peer_owns(&t, from, "172.16.1.7".parse().unwrap()));
        assert!(peer_owns(&t, from, "10.0.0.20".parse().unwrap()), "the peer node's own address");
        assert!(!peer_owns(&t, from, "172.16.2.7".parse().unwrap()), "another peer's subnet");
        assert!(tunnel_conf(1, &["up".into()]).is_none());
    }

    #[test]
    fn routes_print_as_iproute2_does() {
        let r = RouteFacts {
            kind: RouteType::Unicast,
            dst: Some("172.16.1.0/24".parse().unwrap()),
            gateway: Some("10.0.0.20".parse().unwrap()),
            oif: Some(2),
            prefsrc: Some("10.0.0.10".parse().unwrap()),
            table: 254,
            protocol: RouteProtocol::Boot,
            onlink: false,
        };
        let dst: Ipv4Addr = "172.16.1.2".parse().unwrap();
        assert_eq!(route_text(&r, dst, None, "enp0s8"), "172.16.1.2 via 10.0.0.20 dev enp0s8 src 10.0.0.10");
        assert_eq!(
            route_text(&r, dst, Some("172.16.0.2".parse().unwrap()), "enp0s8"),
            "172.16.1.2 from 172.16.0.2 via 10.0.0.20 dev enp0s8"
        );
        assert_eq!(matched_text(&r, "enp0s8"), "172.16.1.0/24 via 10.0.0.20 dev enp0s8 (static: added by hand)");
        let connected = RouteFacts { gateway: None, protocol: RouteProtocol::Kernel, ..r.clone() };
        assert!(matched_text(&connected, "br0").ends_with("(directly connected)"));
        let default = RouteFacts { dst: Some("0.0.0.0/0".parse().unwrap()), ..r.clone() };
        assert!(matched_text(&default, "veth11").starts_with("default via 10.0.0.20 dev veth11 (the default route)"));
        let local =
            RouteFacts { kind: RouteType::Local, dst: Some("10.0.0.20/32".parse().unwrap()), gateway: None, table: 255, ..r };
        assert_eq!(
            route_text(&local, "10.0.0.20".parse().unwrap(), Some("10.0.0.10".parse().unwrap()), "lo"),
            "local 10.0.0.20 from 10.0.0.10 dev lo"
        );
        assert!(matched_text(&local, "enp0s8").starts_with("local 10.0.0.20 dev enp0s8"));
    }
}
