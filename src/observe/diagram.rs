//! `cnet diagram`: the topology drawn in the terminal (or as Graphviz DOT), like the talk's
//! diagrams — nodes, containers, interfaces, addresses and each node's routes, the L2
//! network that joins the nodes' `enp0s8`, and stage 4's tunnel between their `tun0` (or
//! `vxlan0`) with what carries it — from the live kernel state when a stage is up, from the
//! plan otherwise. Both are read into the same boxes, so for a stage that is up as planned
//! the two drawings are the same but for their title.

use std::fmt::Write as _;

use anyhow::Result;

use crate::model::plan::{Step, node_plan};
use crate::model::topology::{Ipv4Net, Stage, Topology, UNDERLAY_DEV};
use crate::observe::status::{Carrier, NodeStatus};

/// VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) bytes, which
/// the kernel takes off the underlay's MTU for `vxlan0`'s.
const VXLAN_OVERHEAD: u32 = 50;

pub struct Iface {
    pub name: String,
    pub addrs: Vec<Ipv4Net>,
    /// What differs from an Ethernet link that is up: `DOWN`, an MTU other than 1500.
    pub note: String,
}

pub struct ContainerBox {
    pub name: String,
    pub host_veth: String,
    pub veth: Iface,
}

pub struct NodeBox {
    pub short: String,
    pub hostname: String,
    pub underlay: Option<Iface>,
    pub bridge: Option<Iface>,
    pub overlay: Option<Iface>,
    /// What carries the overlay from this node; `None` with an overlay device: nothing does.
    pub carrier: Option<Carrier>,
    /// Stage 1: the container's veth ends sit on the node itself.
    pub containers: Vec<ContainerBox>,
    pub routes: Vec<String>,
}

pub struct Diagram {
    pub title: String,
    pub nodes: Vec<NodeBox>,
    /// A routed fabric in place of the switch: its subnets and the router joining them.
    pub fabric: Option<String>,
}

/// How a routed fabric is labelled: each subnet with its nodes and the router's address on
/// it, and what the router knows.
fn fabric_label(topo: &Topology) -> Option<String> {
    if topo.subnets.is_empty() {
        return None;
    }
    let nets: Vec<String> = topo
        .subnets
        .iter()
        .map(|s| format!("{} ({})", s.net.trunc(), s.nodes.iter().map(|n| format!("node{n}")).collect::<Vec<_>>().join(", ")))
        .collect();
    let knows = if topo.options.advertise_pod_routes { ", pods advertised" } else { "" };
    Some(format!("router between {}{knows}", nets.join(", ")))
}

impl Diagram {
    /// The fabric as the topology has it (the live state does not include the router).
    pub fn with_fabric(mut self, topo: &Topology) -> Diagram {
        self.fabric = fabric_label(topo);
        self
    }
}

fn addrs_text(a: &[Ipv4Net]) -> String {
    a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")
}

/// `│  tun0     172.16.0.100/16    mtu 1472`: name and addresses in columns, then whatever
/// of `more` is not empty.
fn iface_row(i: &Iface, more: &[&str]) -> String {
    let mut row = format!("│  {:<8} {:<18}", i.name, addrs_text(&i.addrs));
    for m in more.iter().filter(|m| !m.is_empty()) {
        row.push(' ');
        row.push_str(m);
    }
    row
}

/// The note for a link: only what a reader would not assume (an Ethernet link, up, MTU 1500).
fn link_note(up: bool, mtu: Option<u32>) -> String {
    let mut parts = Vec::new();
    if !up {
        parts.push("DOWN".to_string());
    }
    if let Some(m) = mtu.filter(|m| *m != 1500) {
        parts.push(format!("mtu {m}"));
    }
    parts.join(", ")
}

/// Routes in the order the kernel lists them (by destination, the longer prefix first), so
/// that the plan's drawing and the live one list them alike.
fn sort_routes(routes: &mut [String]) {
    let key = |r: &String| {
        let dst = r.split_whitespace().next().unwrap_or_default();
        let net = if dst == "default" { Some(Ipv4Net::new(std::net::Ipv4Addr::UNSPECIFIED, 0)) } else { dst.parse().ok() };
        net.map(|n: Ipv4Net| (u32::from(n.addr), std::cmp::Reverse(n.prefix)))
    };
    routes.sort_by_key(key);
}

/// Read off the node plans, so that the drawing shows exactly what `up` would build: the
/// overlay device, its MTU and what carries it, and every route (connected ones from the
/// node's addresses, static ones from its route steps).
pub fn from_plan(topo: &Topology) -> Diagram {
    let stage = topo.stage();
    let underlay_mtu = topo.options.underlay_mtu;
    let mut nodes = Vec::new();
    for n in &topo.nodes {
        // The cable and its address come from the lab (or the machine), not the plan; so does
        // a routed fabric's default route to the router.
        let mut routes = vec![format!("{} dev {UNDERLAY_DEV}", n.ip.trunc())];
        if let Some(gw) = topo.gateway_of(n.index) {
            routes.push(format!("default via {gw} dev {UNDERLAY_DEV}"));
        }
        let mut overlay: Option<Iface> = None;
        let mut carrier = None;
        for st in node_plan(topo, n, UNDERLAY_DEV).steps {
            match st.step {
                Step::AddTun { name } => overlay = Some(Iface { name, addrs: Vec::new(), note: String::new() }),
                Step::AddVxlan { name, vni, port, .. } => {
                    // No MTU step: the kernel sizes vxlan0 itself, from the underlay's.
                    let note = link_note(true, Some(underlay_mtu - VXLAN_OVERHEAD));
                    overlay = Some(Iface { name, addrs: Vec::new(), note });
                    carrier = Some(Carrier::Vxlan { port, vni });
                }
                Step::StartTunnel { local, wire, .. } => carrier = Some(Carrier::Udp { port: local.port(), wire }),
                Step::LoadEbpf { local, .. } => carrier = Some(Carrier::Ebpf { port: local.port() }),
                Step::AddAddr { netns: None, dev, addr } => {
                    if addr.prefix < 32 {
                        routes.push(format!("{} dev {dev}", addr.trunc()));
                    }
                    if let Some(o) = overlay.as_mut().filter(|o| o.name == dev) {
                        o.addrs.push(addr);
                    }
                }
                Step::SetMtu { dev, mtu } => {
                    if let Some(o) = overlay.as_mut().filter(|o| o.name == dev) {
                        o.note = link_note(true, Some(mtu));
                    }
                }
                Step::AddRoute { netns: None, .. } => routes.push(st.command.trim_start_matches("ip route add ").to_string()),
                _ => {}
            }
        }
        sort_routes(&mut routes);
        let plain = |name: &str, addrs: Vec<Ipv4Net>| Iface { name: name.into(), addrs, note: String::new() };
        nodes.push(NodeBox {
            short: n.short_name(),
            hostname: n.hostname.clone(),
            underlay: Some(Iface { name: UNDERLAY_DEV.into(), addrs: vec![n.ip], note: link_note(true, Some(underlay_mtu)) }),
            bridge: n.bridge.map(|b| plain("br0", vec![b])),
            overlay,
            carrier,
            containers: n
                .containers
                .iter()
                .map(|c| ContainerBox {
                    name: c.name.clone(),
                    host_veth: c.host_veth.clone(),
                    veth: plain(&c.veth, vec![c.addr]),
                })
                .collect(),
            routes,
        });
    }
    Diagram { title: format!("Stage {} ({}), from the plan", stage.number(), stage.name()), nodes, fabric: fabric_label(topo) }
}

pub fn from_status(statuses: &[NodeStatus]) -> Result<Diagram> {
    let stage: Stage = statuses[0].stage.parse()?;
    let mut nodes = Vec::new();
    for st in statuses {
        let iface = |name: &str| {
            st.links.iter().find(|l| l.name == name).map(|l| Iface {
                name: l.name.clone(),
                addrs: l.addrs.clone(),
                note: link_note(l.up, l.mtu),
            })
        };
        let underlay = st
            .links
            .iter()
            .find(|l| l.name == UNDERLAY_DEV || (l.kind.is_some() && !l.addrs.is_empty() && l.alias.is_none() && l.name != "lo"))
            .and_then(|l| iface(&l.name));
        let mut containers = Vec::new();
        for (name, snap) in &st.containers {
            let Some(v) = snap.links.iter().find(|l| l.name != "lo") else { continue };
            // The host end is the cnet link on the node whose name the plan pairs with it
            // (veth1 with veth2; veth10 with veth11): the same name minus its last digit.
            let host_veth = format!("{}{}", &v.name[..v.name.len() - 1], if stage == Stage::Namespace { "1" } else { "0" });
            containers.push(ContainerBox {
                name: name.clone(),
                host_veth,
                veth: Iface { name: v.name.clone(), addrs: v.addrs.clone(), note: link_note(v.up, v.mtu) },
            });
        }
        let mut routes: Vec<String> = st.routes.iter().map(|r| r.to_string()).collect();
        sort_routes(&mut routes);
        nodes.push(NodeBox {
            short: format!("node{}", st.node),
            hostname: st.hostname.clone(),
            underlay,
            bridge: iface("br0"),
            overlay: iface("tun0").or_else(|| iface("vxlan0")),
            carrier: st.overlay,
            containers,
            routes,
        });
    }
    Ok(Diagram { title: format!("Stage {} ({}), live from the kernel", stage.number(), stage.name()), nodes, fabric: None })
}

/// What joins the nodes, drawn as a vertical line left of their boxes (a rail), from its
/// label at the top down to the last node it reaches, with a branch into each node's device.
struct Rail {
    label: String,
    /// Drawn in double lines: the tunnel, a cable that exists only in software.
    double: bool,
    /// Which of a node's devices it reaches.
    joins: Joins,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Joins {
    Underlay,
    Overlay,
}

impl Rail {
    fn vertical(&self) -> char {
        if self.double { '║' } else { '│' }
    }
    fn horizontal(&self) -> char {
        if self.double { '═' } else { '─' }
    }
    fn tee(&self) -> char {
        if self.double { '╠' } else { '├' }
    }
    fn corner(&self) -> char {
        if self.double { '╚' } else { '└' }
    }
    /// Where the branch meets the node's box.
    fn box_joint(&self) -> char {
        if self.double { '╡' } else { '┤' }
    }
}

/// A branch of `across` passing over the rail `down` without joining it.
fn crossing(across: &Rail, down: &Rail) -> char {
    match (across.double, down.double) {
        (false, false) => '┼',
        (false, true) => '╫',
        (true, false) => '╪',
        (true, true) => '╬',
    }
}

impl Diagram {
    /// The lines that join the nodes: the L2 network between their underlay devices, and
    /// the tunnel between their overlay devices, labelled with what carries it.
    fn rails(&self) -> Vec<Rail> {
        let mut rails = Vec::new();
        if self.nodes.iter().filter(|n| n.underlay.is_some()).count() > 1 {
            let label = match &self.fabric {
                Some(f) => f.clone(),
                None => format!("L2 network {}(a switch)", self.underlay_nets().map(|n| n + " ").unwrap_or_default()),
            };
            rails.push(Rail { label, double: false, joins: Joins::Underlay });
        }
        let overlays: Vec<&NodeBox> = self.nodes.iter().filter(|n| n.overlay.is_some()).collect();
        if overlays.len() > 1 {
            rails.push(Rail { label: self.tunnel_label(&overlays), double: true, joins: Joins::Overlay });
        }
        rails
    }

    /// The subnets of the nodes' underlay addresses: what the switch joins.
    fn underlay_nets(&self) -> Option<String> {
        let mut nets: Vec<String> = Vec::new();
        for net in self.nodes.iter().flat_map(|n| n.underlay.iter().flat_map(|u| u.addrs.iter().map(|a| a.trunc().to_string()))) {
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        (!nets.is_empty()).then(|| nets.join(", "))
    }

    /// `tunnel tun0 ↔ tun0: UDP 9000, one IP packet per datagram`, and which nodes run none.
    fn tunnel_label(&self, overlays: &[&NodeBox]) -> String {
        let dev = overlays.iter().filter_map(|n| n.overlay.as_ref()).map(|o| o.name.as_str()).next().unwrap_or("tun0");
        let mut carriers: Vec<String> = Vec::new();
        for c in overlays.iter().filter_map(|n| n.carrier) {
            if !carriers.contains(&c.to_string()) {
                carriers.push(c.to_string());
            }
        }
        let idle: Vec<&str> = overlays.iter().filter(|n| n.carrier.is_none()).map(|n| n.short.as_str()).collect();
        let mut label = format!("tunnel {dev} ↔ {dev}");
        if !carriers.is_empty() {
            write!(label, ": {}", carriers.join(" / ")).unwrap();
        }
        if !idle.is_empty() {
            write!(label, "{}NOT RUNNING on {}", if carriers.is_empty() { ": " } else { "; " }, idle.join(", ")).unwrap();
        }
        label
    }

    /// One node's box: each line, and the rail it joins (if any).
    fn node_rows(n: &NodeBox, rails: &[Rail]) -> Vec<(String, Option<Joins>)> {
        let has = |j: Joins| rails.iter().any(|r| r.joins == j);
        let mut rows = vec![(format!("┌─ {} ({})", n.short, n.hostname), None)];
        let mut row = |text: String, joins: Option<Joins>| rows.push((text.trim_end().to_string(), joins));
        if let Some(u) = &n.underlay {
            // Alone, the node says where its cable goes; with others, the rail shows it.
            let to = if has(Joins::Underlay) { "" } else { "── to the L2 network" };
            row(iface_row(u, &[&u.note, to]), Some(Joins::Underlay));
        }
        if let Some(o) = &n.overlay {
            let carried = match (&n.carrier, has(Joins::Overlay)) {
                (Some(c), false) => format!("(tunnel: {c})"),
                (None, false) => "(no tunnel running)".into(),
                (_, true) => String::new(),
            };
            row(iface_row(o, &[&o.note, &carried]), Some(Joins::Overlay));
        }
        match &n.bridge {
            Some(b) => {
                let note = if b.note.is_empty() { String::new() } else { format!(", {}", b.note) };
                row(iface_row(b, &[&format!("(bridge{note})")]), None);
                let k = n.containers.len();
                for (i, c) in n.containers.iter().enumerate() {
                    let branch = if i + 1 == k { "└" } else { "├" };
                    row(
                        format!(
                            "│    {branch}─ {:<8} ═══ {:<8} [{} {}] {}",
                            c.host_veth,
                            c.veth.name,
                            c.name,
                            addrs_text(&c.veth.addrs),
                            c.veth.note
                        ),
                        None,
                    );
                }
            }
            None => {
                for c in &n.containers {
                    row(
                        format!(
                            "│  {:<8} ═══ {:<8} [{} {}] {}",
                            c.host_veth,
                            c.veth.name,
                            c.name,
                            addrs_text(&c.veth.addrs),
                            c.veth.note
                        ),
                        None,
                    );
                }
            }
        }
        row("│  routes:".into(), None);
        for r in &n.routes {
            row(format!("│    {r}"), None);
        }
        row("└─".into(), None);
        rows.into_iter().map(|(t, j)| (t, j.filter(|j| has(*j)))).collect()
    }

    pub fn text(&self) -> String {
        let rails = self.rails();
        let rows: Vec<(String, Option<Joins>)> = self.nodes.iter().flat_map(|n| Self::node_rows(n, &rails)).collect();
        // Each rail runs down to the last row that joins it.
        let last: Vec<usize> = rails.iter().map(|r| rows.iter().rposition(|(_, j)| *j == Some(r.joins)).unwrap_or(0)).collect();
        let col = |i: usize| 1 + 4 * i;
        let width = if rails.is_empty() { 0 } else { col(rails.len()) };

        let mut s = String::new();
        writeln!(s, "{}\n", self.title).unwrap();
        // The labels, each at the top of its rail, then a line of rails alone.
        for (i, r) in rails.iter().enumerate() {
            let mut line: String = (0..i).map(|j| format!("{}   ", rails[j].vertical())).collect();
            line.push_str(&r.label);
            writeln!(s, " {line}").unwrap();
        }
        if !rails.is_empty() {
            let line: String = rails.iter().map(|r| format!("{}   ", r.vertical())).collect();
            writeln!(s, " {}", line.trim_end()).unwrap();
        }
        for (at, (text, joins)) in rows.iter().enumerate() {
            let mut p = vec![' '; width];
            let branch = joins.and_then(|j| rails.iter().position(|r| r.joins == j));
            for (j, r) in rails.iter().enumerate() {
                let running = at <= last[j];
                p[col(j)] = match branch {
                    Some(b) if b == j => {
                        if at == last[j] {
                            r.corner()
                        } else {
                            r.tee()
                        }
                    }
                    Some(b) if j > b && running => crossing(&rails[b], r),
                    Some(b) if j > b => rails[b].horizontal(),
                    _ if running => r.vertical(),
                    _ => ' ',
                };
            }
            let mut text = text.clone();
            if let Some(b) = branch {
                for c in p.iter_mut().skip(col(b) + 1) {
                    if *c == ' ' {
                        *c = rails[b].horizontal();
                    }
                }
                // The branch meets the box's left edge.
                text.replace_range(..'│'.len_utf8(), &rails[b].box_joint().to_string());
            }
            let p: String = p.into_iter().collect();
            writeln!(s, "{}", format!("{p}{text}").trim_end()).unwrap();
        }
        s
    }

    pub fn dot(&self) -> String {
        let id = |a: &str, b: &str| format!("\"{a}:{b}\"");
        let label = |i: &Iface| {
            let mut l = format!("{}\\n{}", i.name, addrs_text(&i.addrs));
            if !i.note.is_empty() {
                write!(l, "\\n{}", i.note).unwrap();
            }
            l
        };
        let mut s = String::new();
        writeln!(s, "graph cnet {{\n  label=\"{}\";\n  node [shape=box, fontname=monospace];", self.title).unwrap();
        let nets = self.underlay_nets().map(|n| n + "\\n").unwrap_or_default();
        match &self.fabric {
            Some(f) => writeln!(s, "  switch [label=\"{}\", shape=ellipse];", f.replacen(": ", "\\n", 1)).unwrap(),
            None => writeln!(s, "  switch [label=\"L2 network\\n{nets}(a switch)\", shape=ellipse];").unwrap(),
        }
        for n in &self.nodes {
            writeln!(s, "  subgraph \"cluster_{}\" {{\n    label=\"{} ({})\";", n.short, n.short, n.hostname).unwrap();
            for i in [&n.underlay, &n.bridge, &n.overlay].into_iter().flatten() {
                writeln!(s, "    {} [label=\"{}\"];", id(&n.short, &i.name), label(i)).unwrap();
            }
            for c in &n.containers {
                writeln!(s, "    {} [label=\"{}\"];", id(&n.short, &c.host_veth), c.host_veth).unwrap();
                writeln!(
                    s,
                    "    subgraph \"cluster_{}_{}\" {{ label=\"{}\"; {} [label=\"{}\"]; }}",
                    n.short,
                    c.name,
                    c.name,
                    id(&n.short, &c.veth.name),
                    label(&c.veth)
                )
                .unwrap();
                writeln!(s, "    {} -- {} [style=bold];", id(&n.short, &c.host_veth), id(&n.short, &c.veth.name)).unwrap();
                if n.bridge.is_some() {
                    writeln!(s, "    {} -- {};", id(&n.short, "br0"), id(&n.short, &c.host_veth)).unwrap();
                }
            }
            writeln!(s, "    \"{}:routes\" [shape=note, label=\"{}\\l\"];", n.short, n.routes.join("\\l")).unwrap();
            writeln!(s, "  }}").unwrap();
            if let Some(u) = &n.underlay {
                writeln!(s, "  {} -- switch;", id(&n.short, &u.name)).unwrap();
            }
        }
        // The tunnel: every node's overlay device to every other's (each tunnel sends
        // straight to the node owning the destination), labelled with what carries it.
        let overlays: Vec<(&NodeBox, &Iface)> = self.nodes.iter().filter_map(|n| n.overlay.as_ref().map(|o| (n, o))).collect();
        for (i, (a, ao)) in overlays.iter().enumerate() {
            for (b, bo) in &overlays[i + 1..] {
                let what = match (a.carrier, b.carrier) {
                    (Some(x), Some(y)) if x == y => x.to_string().replacen(", ", "\\n", 1),
                    (Some(x), Some(y)) => format!("{x}\\n{y}"),
                    _ => "NOT RUNNING".to_string(),
                };
                writeln!(
                    s,
                    "  {} -- {} [style=dashed, penwidth=2, color=blue, label=\"{what}\"];",
                    id(&a.short, &ao.name),
                    id(&b.short, &bo.name)
                )
                .unwrap();
            }
        }
        writeln!(s, "}}").unwrap();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::topology::Options;

    #[test]
    fn plan_diagram_shows_the_talks_names_and_routes() {
        let t = Topology::new(Options::new(Stage::MultiNode)).unwrap();
        let text = from_plan(&t).text();
        for want in [
            "3-multi-node-1",
            "enp0s8   10.0.0.10/24",
            "br0      172.16.1.1/24",
            "veth10   ═══ veth11   [con1 172.16.0.2/24]",
            "172.16.1.0/24 via 10.0.0.20 dev enp0s8",
            "172.16.0.0/24 via 10.0.0.10 dev enp0s8",
            "L2 network",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let dot = from_plan(&Topology::new(Options::new(Stage::Overlay)).unwrap()).dot();
        assert!(dot.starts_with("graph cnet {") && dot.contains("tun0\\n172.16.0.100/16") && dot.trim_end().ends_with('}'));
    }

    #[test]
    fn overlay_device_and_routes_follow_the_backend() {
        use crate::model::topology::Backend;
        let text = |b| from_plan(&Topology::new(Options::new(Stage::Overlay).with_backend(b)).unwrap()).text();
        let vxlan = text(Backend::Vxlan);
        for want in ["vxlan0   172.16.0.100/16", "172.16.1.0/24 via 172.16.1.100 dev vxlan0 onlink", "172.16.0.0/16 dev vxlan0"] {
            assert!(vxlan.contains(want), "missing {want:?} in\n{vxlan}");
        }
        // The kernel sizes vxlan0 itself (no MTU step): drawn as it will: underlay - 50.
        assert!(vxlan.contains("vxlan0   172.16.0.100/16    mtu 1450"), "{vxlan}");
        assert!(text(Backend::Udp).contains("tun0     172.16.0.100/16    mtu 1472"));
        assert!(text(Backend::UdpGso).contains("tun0     172.16.0.100/16    mtu 65493"));
    }

    fn plan(stage: Stage, backend: crate::model::topology::Backend, nodes: u32) -> Diagram {
        let mut o = Options::new(stage).with_backend(backend);
        o.nodes = nodes;
        from_plan(&Topology::new(o).unwrap())
    }

    #[test]
    fn the_switch_joins_the_nodes_enp0s8() {
        use crate::model::topology::Backend;
        let text = plan(Stage::MultiNode, Backend::Udp, 2).text();
        let lines: Vec<&str> = text.lines().collect();
        // The label on top of its line, which branches into each node's enp0s8 and ends at
        // the last one.
        assert_eq!(lines[2], " L2 network 10.0.0.0/24 (a switch)", "{text}");
        assert!(lines.contains(&" ├───┤  enp0s8   10.0.0.10/24"), "{text}");
        assert!(lines.contains(&" └───┤  enp0s8   10.0.0.20/24"), "{text}");
        assert!(lines.contains(&"     │  br0      172.16.1.1/24      (bridge)"), "{text}");
        assert!(!text.contains("to the L2 network"), "the line says it: {text}");
        // Three nodes: one more branch, the line ends at node 3.
        let three = plan(Stage::MultiNode, Backend::Udp, 3).text();
        assert!(
            three.contains(" ├───┤  enp0s8   10.0.0.20/24\n") && three.contains(" └───┤  enp0s8   10.0.0.30/24\n"),
            "{three}"
        );
        // One node: nothing to join, the node says where its cable goes.
        let one = from_plan(&Topology::new(Options::new(Stage::SingleNode)).unwrap()).text();
        assert!(one.contains("\n│  enp0s8   10.0.0.10/24       ── to the L2 network\n") && !one.contains("(a switch)"), "{one}");
    }

    #[test]
    fn the_tunnel_joins_the_overlay_devices_with_what_carries_it() {
        use crate::model::topology::Backend;
        let udp = plan(Stage::Overlay, Backend::Udp, 2).text();
        for want in [
            " │   tunnel tun0 ↔ tun0: UDP 9000, one IP packet per datagram\n",
            " ├───╫───┤  enp0s8   10.0.0.10/24\n",
            " │   ╠═══╡  tun0     172.16.0.100/16    mtu 1472\n",
            " └───╫───┤  enp0s8   10.0.0.20/24\n",
            "     ╚═══╡  tun0     172.16.1.100/16    mtu 1472\n",
        ] {
            assert!(udp.contains(want), "missing {want:?} in\n{udp}");
        }
        let vxlan = plan(Stage::Overlay, Backend::Vxlan, 2).text();
        assert!(vxlan.contains("tunnel vxlan0 ↔ vxlan0: VXLAN 4789, VNI 1, one Ethernet frame per datagram"), "{vxlan}");
        assert!(vxlan.contains(" │   ╠═══╡  vxlan0   172.16.0.100/16    mtu 1450\n"), "{vxlan}");
        let gso = plan(Stage::Overlay, Backend::UdpGso, 2).text();
        assert!(gso.contains("tunnel tun0 ↔ tun0: UDP 9000, whole TCP super-packets (gso frames)"), "{gso}");
        assert!(gso.contains("enp0s8   10.0.0.10/24       mtu 65535"), "{gso}");
        // Three nodes: the tunnel reaches each.
        let three = plan(Stage::Overlay, Backend::Udp, 3).text();
        assert_eq!(three.matches("═══╡  tun0").count(), 3, "{three}");
        assert_eq!(three.matches("╠═══╡").count(), 2, "{three}");
        // Readable in 80 columns with two nodes, whatever the stage and backend.
        for (stage, backend) in [
            (Stage::Namespace, Backend::Udp),
            (Stage::SingleNode, Backend::Udp),
            (Stage::MultiNode, Backend::Udp),
            (Stage::Overlay, Backend::Udp),
            (Stage::Overlay, Backend::Vxlan),
            (Stage::Overlay, Backend::UdpGso),
        ] {
            let text = plan(stage, backend, 2).text();
            for l in text.lines() {
                assert!(l.chars().count() <= 80, "{} columns: {l}", l.chars().count());
            }
        }
    }

    #[test]
    fn a_node_without_its_tunnel_says_so() {
        use crate::model::topology::Backend;
        let mut d = plan(Stage::Overlay, Backend::Udp, 2);
        d.nodes[1].carrier = None;
        let text = d.text();
        assert!(text.contains("tunnel tun0 ↔ tun0: UDP 9000, one IP packet per datagram; NOT RUNNING on node2"), "{text}");
        assert!(d.dot().contains("label=\"NOT RUNNING\""));
    }

    #[test]
    fn dot_draws_the_switch_and_the_tunnel() {
        use crate::model::topology::Backend;
        let dot = plan(Stage::Overlay, Backend::Udp, 2).dot();
        for want in [
            "switch [label=\"L2 network\\n10.0.0.0/24\\n(a switch)\", shape=ellipse];",
            "\"node1:enp0s8\" [label=\"enp0s8\\n10.0.0.10/24\"];",
            "\"node1:enp0s8\" -- switch;",
            "\"node2:enp0s8\" -- switch;",
            "\"node1:tun0\" [label=\"tun0\\n172.16.0.100/16\\nmtu 1472\"];",
            "\"node1:tun0\" -- \"node2:tun0\" [style=dashed, penwidth=2, color=blue, label=\"UDP 9000\\none IP packet per datagram\"];",
        ] {
            assert!(dot.contains(want), "missing {want:?} in\n{dot}");
        }
        let vxlan = plan(Stage::Overlay, Backend::Vxlan, 2).dot();
        assert!(vxlan.contains("\"node1:vxlan0\" -- \"node2:vxlan0\" [style=dashed, penwidth=2, color=blue, label=\"VXLAN 4789\\nVNI 1, one Ethernet frame per datagram\"];"), "{vxlan}");
        // Each node's tunnel sends straight to every other: three nodes, three links.
        let three = plan(Stage::Overlay, Backend::Udp, 3).dot();
        assert_eq!(three.matches("style=dashed").count(), 3, "{three}");
        assert!(three.contains("\"node2:tun0\" -- \"node3:tun0\""), "{three}");
        // Stage 3: the switch, no tunnel.
        let multi = plan(Stage::MultiNode, Backend::Udp, 2).dot();
        assert!(multi.contains("\"node2:enp0s8\" -- switch;") && !multi.contains("dashed"), "{multi}");
    }

    #[test]
    fn routes_are_listed_as_the_kernel_lists_them() {
        let mut r = vec![
            "172.16.1.0/24 dev br0".to_string(),
            "172.16.0.0/16 dev tun0".to_string(),
            "10.0.0.0/24 dev enp0s8".to_string(),
            "172.16.0.0/24 via 10.0.0.10 dev enp0s8".to_string(),
            "default via 10.0.0.1 dev enp0s8".to_string(),
        ];
        sort_routes(&mut r);
        assert_eq!(
            r,
            [
                "default via 10.0.0.1 dev enp0s8",
                "10.0.0.0/24 dev enp0s8",
                "172.16.0.0/24 via 10.0.0.10 dev enp0s8",
                "172.16.0.0/16 dev tun0",
                "172.16.1.0/24 dev br0"
            ]
        );
    }

    #[test]
    fn stage1_has_no_bridge() {
        let text = from_plan(&Topology::new(Options::new(Stage::Namespace)).unwrap()).text();
        assert!(text.contains("veth1    ═══ veth2    [con 172.16.0.1/32]") && !text.contains("bridge"), "{text}");
    }
}
