//! Route-netlink operations, one rtnetlink Handle per network namespace.
//!
//! Every link cnet creates on a node is put in link group [`CNET_GROUP`] and given the alias
//! `cnet:<stage>`: the alias marks it as cnet's (visible in `ip link`), and the group lets
//! `down` delete all of them in one request, so the kernel's RCU waits are paid once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow};
use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage, State,
};
use netlink_packet_route::neighbour::{NeighbourFlags, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::model::plan::RouteSpec;
use crate::model::topology::Ipv4Net;
use crate::sys::ns;

/// The link group of every link cnet creates ("cnet" in ASCII).
pub const CNET_GROUP: u32 = 0x636e_6574;
/// The group of a veth's container end that cnet made inside a container runtime's
/// namespace (CNI ADD; "cni" in ASCII): cnet's, but not [`CNET_GROUP`], which on a
/// container end says that its namespace is cnet's to delete (sweep.rs) — this one is not.
pub const RUNTIME_PEER_GROUP: u32 = 0x0063_6e69;
pub const ALIAS_PREFIX: &str = "cnet:";

/// Turn an rtnetlink error into one line with the kernel's reason.
pub fn kernel_error(e: rtnetlink::Error) -> anyhow::Error {
    match errno(&e) {
        // Kept as an io::Error so that callers can tell EPERM or EOPNOTSUPP (the machine)
        // from the rest (the request).
        Some(code) => anyhow::Error::new(std::io::Error::from_raw_os_error(code)),
        None => anyhow!("{e}"),
    }
}

/// A link operation found no link of that name.
#[derive(Debug)]
pub struct NoSuchLink(pub String);

impl std::fmt::Display for NoSuchLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "there is no link named {}", self.0)
    }
}

impl std::error::Error for NoSuchLink {}

/// A link operation's error; "no such device" names the link.
fn link_error(e: rtnetlink::Error, dev: &str) -> anyhow::Error {
    if errno(&e) == Some(libc::ENODEV) { NoSuchLink(dev.to_string()).into() } else { kernel_error(e) }
}

pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// Whether an error chain says the object is already gone (undo treats that as done): no
/// such link, or the kernel's ENODEV, ENXIO, ESRCH (no such route), ENOENT or
/// EADDRNOTAVAIL (no such address), read from the error's code rather than its text, so
/// callers pass typed errors (`kernel_error`, `NoSuchLink`, std::io).
pub fn is_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<NoSuchLink>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                .is_some_and(|code| matches!(code, libc::ENODEV | libc::ENXIO | libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL))
    })
}

/// Start an rtnetlink connection over a socket already opened in some namespace.
fn connect(fd: std::os::fd::OwnedFd) -> Handle {
    let (conn, handle, _) = rtnetlink::from_socket(ns::into_tokio_netlink(fd));
    tokio::spawn(conn);
    handle
}

/// Netlink handles for a node (the namespace this process runs in) and its containers.
pub struct Netlink {
    node: Handle,
    netns_dir: PathBuf,
    /// Behind locks so that independent steps can run concurrently (pipelined requests);
    /// never held across an await.
    containers: Mutex<HashMap<String, Handle>>,
    /// Link indexes by (netns, name), so a step needs no extra lookup round trip.
    index: Mutex<HashMap<(Option<String>, String), u32>>,
}

impl Netlink {
    /// Handles for the namespace this process is in, with containers under `netns_dir`.
    pub fn here(netns_dir: &Path) -> Result<Netlink> {
        let fd = ns::open_netlink()?;
        Ok(Netlink {
            node: connect(fd),
            netns_dir: netns_dir.to_path_buf(),
            containers: Mutex::default(),
            index: Mutex::default(),
        })
    }

    /// Handles for the namespace persisted at `ns_path` (a lab node or the lab's switch), with
    /// the namespaces its veth peers go into found under `netns_dir`.
    pub fn at(ns_path: &Path, netns_dir: &Path) -> Result<Netlink> {
        Ok(Netlink {
            node: Self::handle_at(ns_path)?,
            netns_dir: netns_dir.to_path_buf(),
            containers: Mutex::default(),
            index: Mutex::default(),
        })
    }

    /// Like [`Netlink::at`], for a namespace created here and now (its socket already open).
    pub fn from_socket(fd: std::os::fd::OwnedFd, netns_dir: &Path) -> Netlink {
        Netlink { node: connect(fd), netns_dir: netns_dir.to_path_buf(), containers: Mutex::default(), index: Mutex::default() }
    }

    /// A handle for a namespace persisted at an arbitrary path (the lab's switch and nodes).
    pub fn handle_at(path: &Path) -> Result<Handle> {
        let fd = ns::in_netns_here(path, ns::open_netlink)?;
        Ok(connect(fd))
    }

    pub fn netns_path(&self, name: &str) -> PathBuf {
        self.netns_dir.join(name)
    }

    pub fn handle(&self, netns: Option<&str>) -> Result<Handle> {
        let Some(name) = netns else { return Ok(self.node.clone()) };
        if let Some(h) = self.containers.lock().unwrap().get(name) {
            return Ok(h.clone());
        }
        let h = Self::handle_at(&self.netns_path(name))?;
        self.containers.lock().unwrap().insert(name.to_string(), h.clone());
        Ok(h)
    }

    /// `ip netns add NAME`, keeping a netlink handle opened inside it on the way.
    pub fn add_netns(&self, name: &str) -> Result<()> {
        self.add_netns_many(&[name]).pop().expect("one result per name")
    }

    /// Many `ip netns add` at once, on one thread per CPU (the kernel serializes much of the
    /// work; two threads still overlap the rest). One result per name, in order.
    pub fn add_netns_many(&self, names: &[&str]) -> Vec<Result<()>> {
        let paths: Vec<PathBuf> = names.iter().map(|n| self.netns_path(n)).collect();
        let made = ns::create_netns_many(&paths, ns::cpu_count(), ns::open_netlink);
        names
            .iter()
            .zip(made)
            .map(|(name, r)| {
                let taken = |e: &anyhow::Error| {
                    e.chain().any(|c| {
                        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists)
                    })
                };
                let fd =
                    r.map_err(|e| if taken(&e) { anyhow!("a network namespace named '{name}' already exists") } else { e })?;
                self.containers.lock().unwrap().insert(name.to_string(), connect(fd));
                Ok(())
            })
            .collect()
    }

    pub fn del_netns(&self, name: &str) -> Result<()> {
        self.containers.lock().unwrap().remove(name);
        self.index.lock().unwrap().retain(|(ns, _), _| ns.as_deref() != Some(name));
        ns::delete_ns_file(&self.netns_path(name))
    }

    pub async fn link_index(&self, netns: Option<&str>, name: &str) -> Result<u32> {
        let key = (netns.map(str::to_string), name.to_string());
        if let Some(i) = self.index.lock().unwrap().get(&key) {
            return Ok(*i);
        }
        let h = self.handle(netns)?;
        let msg = find_link(&h, name).await?.ok_or_else(|| NoSuchLink(name.to_string()))?;
        self.index.lock().unwrap().insert(key, msg.header.index);
        Ok(msg.header.index)
    }

    /// `ip link add NAME type veth peer name PEER netns NS`: the peer is created straight in
    /// the namespace (23x faster than creating then moving it). The peer joins `peer_group`
    /// at creation: [`CNET_GROUP`] says a named namespace holding it is cnet's (sweep.rs).
    pub async fn add_veth(&self, name: &str, peer: &str, peer_netns: &str, alias: &str, peer_group: Option<u32>) -> Result<()> {
        let target = std::fs::File::open(self.netns_path(peer_netns))
            .with_context(|| format!("cannot open network namespace '{peer_netns}'"))?;
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::default().name(peer.to_string()).setns_by_fd(target.as_raw_fd());
        if let Some(g) = peer_group {
            peer_msg = peer_msg.link_group(g);
        }
        let peer_msg = peer_msg.build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .link_group(CNET_GROUP)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.add_link(msg, name, alias).await
    }

    pub async fn add_bridge(&self, name: &str, alias: &str) -> Result<()> {
        let msg = LinkBridge::new(name).link_group(CNET_GROUP).build();
        self.add_link(msg, name, alias).await
    }

    pub async fn add_vxlan(&self, name: &str, vni: u32, local: Ipv4Addr, underlay: &str, port: u16, alias: &str) -> Result<()> {
        let under = self.link_index(None, underlay).await?;
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Vxlan)
            .name(name.to_string())
            .link_group(CNET_GROUP)
            .set_info_data(InfoData::Vxlan(vec![
                InfoVxlan::Id(vni),
                InfoVxlan::Local(local),
                InfoVxlan::Link(under),
                InfoVxlan::Port(port),
                InfoVxlan::Learning(false),
            ]))
            .build();
        self.add_link(msg, name, alias).await
    }

    async fn add_link(&self, msg: LinkMessage, name: &str, alias: &str) -> Result<()> {
        self.node.link().add(msg).execute().await.map_err(|e| {
            // Kept typed (EEXIST): a CNI ADD waits for a name that a dying pair still holds.
            let err = kernel_error(e);
            if err.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::EEXIST) {
                err.context(format!("a link named {name} already exists"))
            } else {
                err
            }
        })?;
        self.mark(name, alias).await
    }

    /// A RTM_SETLINK for `dev`: by its index when known (lo is always 1), else by name, which
    /// the kernel resolves itself, saving a lookup round trip per link.
    fn set_link(&self, netns: Option<&str>, dev: &str) -> rtnetlink::LinkMessageBuilder<LinkUnspec> {
        const LOOPBACK_IFINDEX: u32 = 1;
        let key = (netns.map(str::to_string), dev.to_string());
        match self.index.lock().unwrap().get(&key) {
            Some(i) => LinkUnspec::new_with_index(*i),
            None if dev == "lo" => LinkUnspec::new_with_index(LOOPBACK_IFINDEX),
            None => LinkUnspec::new_with_name(dev),
        }
    }

    /// Put a link cnet made (a TUN device, say) in cnet's group and give it cnet's alias.
    pub async fn mark(&self, name: &str, alias: &str) -> Result<()> {
        let msg = self
            .set_link(None, name)
            .link_group(CNET_GROUP)
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()))
            .build();
        self.node.link().set(msg).execute().await.map_err(|e| link_error(e, name))
    }

    /// `ip link set DEV master MASTER [addrgenmode none]` (see plan::NO_LINK_LOCAL for why
    /// ports get no IPv6 link-local address).
    pub async fn set_master(&self, dev: &str, master: &str, addrgen_none: bool) -> Result<()> {
        let m = self.link_index(None, master).await?;
        let mut msg = self.set_link(None, dev).controller(m);
        if addrgen_none {
            msg = msg.append_extra_attribute(no_link_local());
        }
        let msg = msg.build();
        self.node.link().set(msg).execute().await.map_err(|e| link_error(e, dev))
    }

    /// `bridge link set dev DEV hairpin on`.
    pub async fn set_hairpin(&self, dev: &str) -> Result<()> {
        let i = self.link_index(None, dev).await?;
        let msg = rtnetlink::LinkBridgePort::new(i).hairpin(true).build();
        self.node.link().set_port(msg).execute().await.map_err(|e| link_error(e, dev))
    }

    pub async fn set_mtu(&self, dev: &str, mtu: u32) -> Result<()> {
        self.node.link().set(self.set_link(None, dev).mtu(mtu).build()).execute().await.map_err(|e| link_error(e, dev))
    }

    /// `ip link set DEV up [addrgenmode none]`, one request. The kernel raises the link
    /// first and applies the mode after: that is early enough only while IPv6 has not
    /// started on the link, i.e. while it has no carrier (a veth whose peer is still down).
    /// Seen here: a veth raised after its peer got its fe80 address anyway.
    pub async fn link_up(&self, netns: Option<&str>, dev: &str, addrgen_none: bool) -> Result<()> {
        let h = self.handle(netns)?;
        let mut msg = self.set_link(netns, dev).up();
        if addrgen_none {
            msg = msg.append_extra_attribute(no_link_local());
        }
        h.link().set(msg.build()).execute().await.map_err(|e| link_error(e, dev))
    }

    pub async fn add_addr(&self, netns: Option<&str>, dev: &str, addr: Ipv4Net) -> Result<()> {
        let i = self.link_index(netns, dev).await?;
        let h = self.handle(netns)?;
        h.address().add(i, IpAddr::V4(addr.addr), addr.prefix).execute().await.map_err(|e| {
            if errno(&e) == Some(libc::EEXIST) { anyhow!("{dev} already has the address {addr}") } else { kernel_error(e) }
        })
    }

    pub async fn add_route(&self, netns: Option<&str>, route: &RouteSpec) -> Result<()> {
        let msg = self.route_message(netns, route).await?;
        let h = self.handle(netns)?;
        h.route().add(msg).execute().await.map_err(|e| {
            if errno(&e) == Some(libc::EEXIST) {
                anyhow!("a route to {} is already in the table", route.dst_text())
            } else {
                kernel_error(e)
            }
        })
    }

    pub async fn del_route(&self, netns: Option<&str>, route: &RouteSpec) -> Result<()> {
        let msg = self.route_message(netns, route).await?;
        let h = self.handle(netns)?;
        h.route().del(msg).execute().await.map_err(kernel_error)
    }

    /// `ip route del DST dev DEV`, whoever added the route (the kernel's connected routes
    /// too): a delete with no protocol matches any, as `ip` sends it.
    pub async fn del_route_any(&self, netns: Option<&str>, route: &RouteSpec) -> Result<()> {
        let mut msg = self.route_message(netns, route).await?;
        msg.header.protocol = netlink_packet_route::route::RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        let h = self.handle(netns)?;
        h.route().del(msg).execute().await.map_err(kernel_error)
    }

    async fn route_message(&self, netns: Option<&str>, r: &RouteSpec) -> Result<RouteMessage> {
        let oif = self.link_index(netns, &r.dev).await?;
        let dst = r.dst.unwrap_or(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0));
        // Protocol "boot", as `ip route add` sets it, so `ip route` prints the talk's lines exactly.
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr, dst.prefix)
            .output_interface(oif)
            .protocol(netlink_packet_route::route::RouteProtocol::Boot);
        match r.via {
            Some(gw) => b = b.gateway(gw),
            // A route with no gateway is directly connected: link scope, as `ip` sets it.
            None => b = b.scope(RouteScope::Link),
        }
        if r.onlink {
            b = b.onlink();
        }
        Ok(b.build())
    }

    /// `bridge fdb append 00:00:00:00:00:00 dev DEV dst IP` (NLM_F_APPEND: one all-zero entry
    /// per peer, so broadcast and unknown frames go to every peer).
    pub async fn add_fdb(&self, dev: &str, dst: Ipv4Addr) -> Result<()> {
        use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
        use netlink_packet_route::RouteNetlinkMessage;
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
        let i = self.link_index(None, dev).await?;
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = i;
        m.header.flags = NeighbourFlags::Own;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(m));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let mut h = self.node.clone();
        let mut resp = h.request(req).map_err(kernel_error)?;
        while let Some(msg) = futures::StreamExt::next(&mut resp).await {
            if let NetlinkPayload::Error(e) = msg.payload
                && e.code.is_some()
            {
                return Err(kernel_error(rtnetlink::Error::NetlinkError(e)));
            }
        }
        Ok(())
    }

    /// Every link in this node's namespace.
    pub async fn links(&self, netns: Option<&str>) -> Result<Vec<LinkMessage>> {
        let h = match netns {
            None => self.node.clone(),
            Some(n) => self.handle(Some(n))?,
        };
        dump_links(&h).await
    }

    /// `ip link set DEV group GROUP` on the node.
    pub async fn set_group(&self, dev: &str, group: u32) -> Result<()> {
        self.node.link().set(self.set_link(None, dev).link_group(group).build()).execute().await.map_err(|e| link_error(e, dev))
    }

    /// `ip link del group CNET_GROUP`: one request, one batch of RCU waits.
    pub async fn del_cnet_group(&self) -> Result<()> {
        self.del_group(CNET_GROUP).await
    }

    /// `ip link del group GROUP` on the node: one request, one batch of RCU waits; an empty
    /// group is nothing to do.
    pub async fn del_group(&self, group: u32) -> Result<()> {
        self.index.lock().unwrap().clear();
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Group(group));
        match self.node.link().del_with_message(msg).execute().await {
            // An empty group: nothing left to delete.
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            r => r.map_err(kernel_error),
        }
    }

    pub async fn del_link(&self, name: &str) -> Result<()> {
        let i = self.link_index(None, name).await?;
        self.index.lock().unwrap().retain(|(ns, n), _| !(ns.is_none() && n == name));
        self.node.link().del(i).execute().await.map_err(kernel_error)
    }

    /// Drop the dynamic ARP entries of a namespace (what `ip neigh flush all` does), so
    /// that the machine-wide ARP table has room again; permanent entries stay.
    pub async fn forget_neighbours(&self, netns: Option<&str>) -> Result<()> {
        use netlink_packet_route::neighbour::NeighbourState;
        let h = self.handle(netns)?;
        let entries: Vec<_> = h.neighbours().get().execute().try_collect().await.map_err(kernel_error)?;
        for n in entries {
            if n.header.state == NeighbourState::Permanent || n.header.state == NeighbourState::Noarp {
                continue;
            }
            if let Err(e) = h.neighbours().del(n).execute().await
                && errno(&e) != Some(libc::ENOENT)
            {
                return Err(kernel_error(e));
            }
        }
        Ok(())
    }

    pub fn node_handle(&self) -> Handle {
        self.node.clone()
    }
}

pub async fn find_link(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(kernel_error(e)),
    }
}

pub async fn dump_links(h: &Handle) -> Result<Vec<LinkMessage>> {
    h.link().get().execute().try_collect().await.map_err(kernel_error)
}

pub async fn dump_addrs(h: &Handle) -> Result<Vec<AddressMessage>> {
    h.address().get().execute().try_collect().await.map_err(kernel_error)
}

pub async fn dump_routes(h: &Handle) -> Result<Vec<RouteMessage>> {
    let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
    h.route().get(req).execute().try_collect().await.map_err(kernel_error)
}

/// What `ip -br link` shows of a link, read back from the kernel.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LinkView {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub up: bool,
    pub oper: String,
    pub master: Option<u32>,
    /// For a veth: the peer's index (in another namespace for a container's pair).
    pub peer: Option<u32>,
    pub mtu: Option<u32>,
    pub alias: Option<String>,
    pub group: u32,
    /// For a VXLAN device: its VNI and the UDP port it sends to.
    pub vxlan: Option<(u32, u16)>,
}

pub fn link_view(m: &LinkMessage) -> LinkView {
    let mut v = LinkView {
        index: m.header.index,
        name: String::new(),
        kind: None,
        up: m.header.flags.contains(LinkFlags::Up),
        oper: "unknown".into(),
        master: None,
        peer: None,
        mtu: None,
        alias: None,
        group: 0,
        vxlan: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => v.name = n.clone(),
            LinkAttribute::Controller(c) => v.master = Some(*c),
            LinkAttribute::Link(l) => v.peer = Some(*l),
            LinkAttribute::Mtu(x) => v.mtu = Some(*x),
            LinkAttribute::IfAlias(s) => v.alias = Some(s.clone()),
            LinkAttribute::Group(g) => v.group = *g,
            LinkAttribute::OperState(s) => {
                v.oper = match s {
                    State::Up => "up",
                    State::Down => "down",
                    State::LowerLayerDown => "lowerlayerdown",
                    State::Dormant => "dormant",
                    State::NotPresent => "notpresent",
                    _ => "unknown",
                }
                .into()
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => v.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            let vni = data.iter().find_map(|d| if let InfoVxlan::Id(x) = d { Some(*x) } else { None });
                            let port = data.iter().find_map(|d| if let InfoVxlan::Port(x) = d { Some(*x) } else { None });
                            v.vxlan = vni.zip(port);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    v
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AddrView {
    pub dev: u32,
    pub addr: Ipv4Net,
}

pub fn addr_views(msgs: &[AddressMessage]) -> Vec<AddrView> {
    msgs.iter()
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => {
                    Some(AddrView { dev: m.header.index, addr: Ipv4Net::new(*ip, m.header.prefix_len) })
                }
                _ => None,
            })
        })
        .collect()
}

#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct RouteView {
    pub dst: Option<Ipv4Net>,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<u32>,
    /// The gateway is taken as on the link whatever the addresses say (`onlink`).
    pub onlink: bool,
    /// Added as `ip route add` adds routes (protocol "boot"), not by the kernel or a daemon.
    #[serde(skip)]
    pub by_hand: bool,
}

/// Main-table unicast IPv4 routes, as `ip route` lists them (not the cached path-MTU
/// exceptions a dump also returns).
pub fn route_views(msgs: &[RouteMessage]) -> Vec<RouteView> {
    msgs.iter()
        .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN && m.header.kind == RouteType::Unicast)
        .filter(|m| !m.header.flags.contains(netlink_packet_route::route::RouteFlags::Cloned))
        .map(|m| {
            let by_hand = m.header.protocol == netlink_packet_route::route::RouteProtocol::Boot;
            let onlink = m.header.flags.contains(netlink_packet_route::route::RouteFlags::Onlink);
            let mut r = RouteView { dst: None, via: None, dev: None, onlink, by_hand };
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                        r.dst = Some(Ipv4Net::new(*ip, m.header.destination_prefix_length))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.via = Some(*ip),
                    RouteAttribute::Oif(i) => r.dev = Some(*i),
                    _ => {}
                }
            }
            r
        })
        .collect()
}

/// IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE: NONE } }, what `addrgenmode none` sends.
fn no_link_local() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)])])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_is_read_from_the_error_not_its_text() {
        let no_route = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ESRCH)).context("cannot delete the route");
        assert!(is_gone(&no_route));
        assert!(is_gone(&anyhow::Error::new(NoSuchLink("veth10".into())).context("cannot delete veth10")));
        assert!(!is_gone(&anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EPERM))));
        // Text alone no longer counts: a message that merely mentions it is not the kernel saying so.
        assert!(!is_gone(&anyhow!("No such device: a message, not an errno")));
    }
}
