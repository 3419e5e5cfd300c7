//! `cnet diagram`: the topology drawn in the terminal (or as Graphviz DOT), like the talk's
//! diagrams — nodes, containers, interfaces, addresses and each node's routes — from the
//! live kernel state when a stage is up, from the plan otherwise.

use std::fmt::Write as _;

use anyhow::Result;

use crate::model::plan::{Step, node_plan};
use crate::model::topology::{Ipv4Net, Stage, Topology, UNDERLAY_DEV};
use crate::observe::status::NodeStatus;

pub struct Iface {
    pub name: String,
    pub addrs: Vec<Ipv4Net>,
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
    /// Stage 1: the container's veth ends sit on the node itself.
    pub containers: Vec<ContainerBox>,
    pub routes: Vec<String>,
}

pub struct Diagram {
    pub title: String,
    pub nodes: Vec<NodeBox>,
}

fn addrs_text(a: &[Ipv4Net]) -> String {
    a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")
}

/// Read off the node plans, so that the drawing shows exactly what `up` would build: the
/// overlay device and its MTU, and every route (connected ones from the node's addresses,
/// static ones from its route steps).
pub fn from_plan(topo: &Topology) -> Diagram {
    let stage = topo.stage();
    let mut nodes = Vec::new();
    for n in &topo.nodes {
        // The cable and its address come from the lab (or the machine), not the plan.
        let mut routes = vec![format!("{} dev {UNDERLAY_DEV}", n.ip.trunc())];
        let mut overlay: Option<Iface> = None;
        for st in node_plan(topo, n, UNDERLAY_DEV).steps {
            match st.step {
                Step::AddTun { name } | Step::AddVxlan { name, .. } => {
                    overlay = Some(Iface { name, addrs: Vec::new(), note: String::new() });
                }
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
                        o.note = format!("mtu {mtu}");
                    }
                }
                Step::AddRoute { netns: None, .. } => routes.push(st.command.trim_start_matches("ip route add ").to_string()),
                _ => {}
            }
        }
        nodes.push(NodeBox {
            short: n.short_name(),
            hostname: n.hostname.clone(),
            underlay: Some(Iface { name: UNDERLAY_DEV.into(), addrs: vec![n.ip], note: String::new() }),
            bridge: n.bridge.map(|b| Iface { name: "br0".into(), addrs: vec![b], note: String::new() }),
            overlay,
            containers: n
                .containers
                .iter()
                .map(|c| ContainerBox {
                    name: c.name.clone(),
                    host_veth: c.host_veth.clone(),
                    veth: Iface { name: c.veth.clone(), addrs: vec![c.addr], note: String::new() },
                })
                .collect(),
            routes,
        });
    }
    Diagram { title: format!("Stage {} ({}), from the plan", stage.number(), stage.name()), nodes }
}

pub fn from_status(statuses: &[NodeStatus]) -> Result<Diagram> {
    let stage: Stage = statuses[0].stage.parse()?;
    let mut nodes = Vec::new();
    for st in statuses {
        let iface = |name: &str| {
            st.links.iter().find(|l| l.name == name).map(|l| Iface {
                name: l.name.clone(),
                addrs: l.addrs.clone(),
                note: format!(
                    "{}{}",
                    if l.up { "up" } else { "DOWN" },
                    l.mtu.filter(|m| *m != 1500).map(|m| format!(", mtu {m}")).unwrap_or_default()
                ),
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
                veth: Iface {
                    name: v.name.clone(),
                    addrs: v.addrs.clone(),
                    note: if v.up { "up".into() } else { "DOWN".into() },
                },
            });
        }
        nodes.push(NodeBox {
            short: format!("node{}", st.node),
            hostname: st.hostname.clone(),
            underlay,
            bridge: iface("br0"),
            overlay: iface("tun0").or_else(|| iface("vxlan0")),
            containers,
            routes: st.routes.iter().map(|r| r.to_string()).collect(),
        });
    }
    Ok(Diagram { title: format!("Stage {} ({}), live from the kernel", stage.number(), stage.name()), nodes })
}

impl Diagram {
    pub fn text(&self) -> String {
        let mut s = String::new();
        writeln!(s, "{}\n", self.title).unwrap();
        for n in &self.nodes {
            writeln!(s, "┌─ {} ({})", n.short, n.hostname).unwrap();
            if let Some(u) = &n.underlay {
                writeln!(s, "│  {:<8} {:<18} ── to the L2 network", u.name, addrs_text(&u.addrs)).unwrap();
            }
            if let Some(o) = &n.overlay {
                writeln!(s, "│  {:<8} {:<18} {}", o.name, addrs_text(&o.addrs), o.note).unwrap();
            }
            match &n.bridge {
                Some(b) => {
                    writeln!(s, "│  {:<8} {:<18} (bridge)", b.name, addrs_text(&b.addrs)).unwrap();
                    let k = n.containers.len();
                    for (i, c) in n.containers.iter().enumerate() {
                        let branch = if i + 1 == k { "└" } else { "├" };
                        writeln!(
                            s,
                            "│    {branch}─ {:<8} ═══ {:<8} [{} {}]",
                            c.host_veth,
                            c.veth.name,
                            c.name,
                            addrs_text(&c.veth.addrs)
                        )
                        .unwrap();
                    }
                }
                None => {
                    for c in &n.containers {
                        writeln!(s, "│  {:<8} ═══ {:<8} [{} {}]", c.host_veth, c.veth.name, c.name, addrs_text(&c.veth.addrs))
                            .unwrap();
                    }
                }
            }
            writeln!(s, "│  routes:").unwrap();
            for r in &n.routes {
                writeln!(s, "│    {r}").unwrap();
            }
            writeln!(s, "└─").unwrap();
        }
        if self.nodes.len() > 1 {
            let ends: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|n| n.underlay.as_ref().map(|u| format!("{} {}", n.short, addrs_text(&u.addrs))))
                .collect();
            writeln!(s, "L2 network (switch): {}", ends.join(" ── ")).unwrap();
        }
        s
    }

    pub fn dot(&self) -> String {
        let id = |a: &str, b: &str| format!("\"{a}:{b}\"");
        let mut s = String::new();
        writeln!(s, "graph cnet {{\n  label=\"{}\";\n  node [shape=box, fontname=monospace];", self.title).unwrap();
        writeln!(s, "  switch [label=\"L2 network\", shape=ellipse];").unwrap();
        for n in &self.nodes {
            writeln!(s, "  subgraph \"cluster_{}\" {{\n    label=\"{} ({})\";", n.short, n.short, n.hostname).unwrap();
            for i in [&n.underlay, &n.bridge, &n.overlay].into_iter().flatten() {
                writeln!(s, "    {} [label=\"{}\\n{}\"];", id(&n.short, &i.name), i.name, addrs_text(&i.addrs)).unwrap();
            }
            for c in &n.containers {
                writeln!(s, "    {} [label=\"{}\"];", id(&n.short, &c.host_veth), c.host_veth).unwrap();
                writeln!(
                    s,
                    "    subgraph \"cluster_{}_{}\" {{ label=\"{}\"; {} [label=\"{}\\n{}\"]; }}",
                    n.short,
                    c.name,
                    c.name,
                    id(&n.short, &c.veth.name),
                    c.veth.name,
                    addrs_text(&c.veth.addrs)
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
        // The kernel sizes vxlan0 itself: no MTU step, so none is drawn.
        assert!(!vxlan.contains("mtu"), "{vxlan}");
        assert!(text(Backend::Udp).contains("tun0     172.16.0.100/16    mtu 1472"));
        assert!(text(Backend::UdpGso).contains("tun0     172.16.0.100/16    mtu 65493"));
    }

    #[test]
    fn stage1_has_no_bridge() {
        let text = from_plan(&Topology::new(Options::new(Stage::Namespace)).unwrap()).text();
        assert!(text.contains("veth1    ═══ veth2    [con 172.16.0.1/32]") && !text.contains("bridge"), "{text}");
    }
}
