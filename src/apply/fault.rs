//! `cnet break`: put one named fault into a node that is up (model::fault says what each
//! teaches). It runs inside the node, from that node's record; `down` still removes
//! everything (the lab's nodes go whole; what a fault removed is treated as already gone).

use anyhow::{Result, bail};

use crate::apply::netlink::Netlink;
use crate::apply::process::{cnet_tunnels_here, stop_process};
use crate::apply::state::NodeJournal;
use crate::apply::sysctl;
use crate::model::fault::Fault;
use crate::model::plan::{RouteSpec, Step};
use crate::model::topology::Stage;

/// Break `fault` here; returns the command it equals.
pub async fn apply(fault: Fault) -> Result<String> {
    let Some(r) = NodeJournal::read()? else { bail!("nothing is up on this node") };
    let h = &r.header;
    if let Err(why) = fault.applies_to(h.options.stage, h.options.backend) {
        bail!("{why}");
    }
    let nl = Netlink::here(&h.netns_dir)?;
    let steps = &h.steps;
    match fault {
        Fault::NoForwarding => {
            sysctl::write("net.ipv4.ip_forward", "0")?;
            Ok("sysctl -w net.ipv4.ip_forward=0".into())
        }
        Fault::StrictRpFilter => {
            // The kernel uses the higher of 'all' and the interface's own value: 'all' = 1
            // makes every interface strict.
            sysctl::write("net.ipv4.conf.all.rp_filter", "1")?;
            Ok("sysctl -w net.ipv4.conf.all.rp_filter=1".into())
        }
        Fault::NoRoute => {
            let (netns, route) = route_to_break(h.options.stage, steps, &h.topology()?)?;
            nl.del_route_any(netns.as_deref(), &route).await?;
            let ns = netns.map_or(String::new(), |n| format!("-n {n} "));
            Ok(format!("ip {ns}route del {} dev {}", route.dst_text(), route.dev))
        }
        Fault::Mtu => {
            // 100 bytes below what tun0 (or vxlan0) needs: full-size overlay packets no longer fit.
            let mtu = h.options.underlay_mtu - 100;
            nl.set_mtu(&h.underlay, mtu).await?;
            Ok(format!("ip link set {} mtu {mtu}", h.underlay))
        }
        Fault::StopTunnel => {
            let pids = cnet_tunnels_here();
            if pids.is_empty() {
                bail!("no tunnel is running on this node");
            }
            for pid in pids {
                stop_process(pid)?;
            }
            Ok("pkill -f 'cnet tunnel --dev tun0'".into())
        }
    }
}

/// The route whose loss teaches the most: in stages 3-4 the one to the other node's pods,
/// in stages 1-2 the (first) container's default route.
fn route_to_break(stage: Stage, steps: &[Step], topo: &crate::model::topology::Topology) -> Result<(Option<String>, RouteSpec)> {
    let spec = |dst, via, dev: &String, onlink| RouteSpec { dst, via, dev: dev.clone(), onlink };
    if !stage.is_multi_node() {
        return steps
            .iter()
            .find_map(|s| match s {
                Step::AddRoute { netns: Some(n), dst: None, via, dev, onlink } => {
                    Some((Some(n.clone()), spec(None, *via, dev, *onlink)))
                }
                _ => None,
            })
            .ok_or_else(|| anyhow::anyhow!("this node's plan has no container route"));
    }
    // Stage 3 and VXLAN: a static route per peer; cnet's tunnel: the /16 that tun0's address installs.
    if let Some(r) = steps.iter().find_map(|s| match s {
        Step::AddRoute { netns: None, dst: Some(d), via, dev, onlink } => Some((None, spec(Some(*d), *via, dev, *onlink))),
        _ => None,
    }) {
        return Ok(r);
    }
    let tun = topo.nodes.first().map(|n| n.tun_addr().trunc()).ok_or_else(|| anyhow::anyhow!("no node"))?;
    Ok((None, spec(Some(tun), None, &"tun0".to_string(), false)))
}
